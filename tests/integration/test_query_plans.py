"""The lifecycle's queries use the partial indexes made for them (SQLite's planner).

A query that spells its state condition differently from an index's condition (a
bound parameter instead of the literal, say) silently falls back to scanning and
sorting every job ever run; these checks catch that.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, text

from aitbc.domain.jobs import MinerHardware
from aitbc.storage import db, job_queries
from aitbc.storage.job_queries import JOBS
from tests.conftest import Coordinator

C = JOBS.c
NOW = datetime(2026, 2, 13, tzinfo=UTC)
HARDWARE = MinerHardware(
    models=frozenset({"a", "b"}), gpu_name="NVIDIA A100", gpu_memory_gb=80, gpu_count=1
)
QUERIES: dict[str, tuple[Any, str]] = {
    "dispatch": (
        job_queries.next_jobs_statement(HARDWARE).params(price=10),
        "ix_jobs_dispatch",
    ),
    "running jobs of a miner": (
        job_queries.running_count_statement().params(miner="m"),
        "ix_jobs_miner_running",
    ),
    "timeouts": (job_queries.overdue_statement(NOW, 500), "ix_jobs_deadline"),
    "lapsed leases": (job_queries.lapsed_statement(NOW, 500), "ix_jobs_lease"),
    # The listed jobs are looked up by id (the primary key), never by scanning.
    "lease renewal": (
        job_queries.renew_leases_statement("m", NOW, ["j1", "j2"]),
        "sqlite_autoindex_jobs_1",
    ),
}


def _plan(connection: Connection, statement: Any) -> str:
    sql = str(statement.compile(connection, compile_kwargs={"literal_binds": True}))
    rows = connection.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_query_uses_its_partial_index(coordinator: Coordinator, name: str) -> None:
    statement, index = QUERIES[name]
    plan = await db.read(coordinator.runtime.engine, _plan, statement)
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan, plan
