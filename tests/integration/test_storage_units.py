"""Units of work (``storage.db.transaction`` / ``read``) on both backends: a unit that
raises leaves nothing behind, one that returns is committed, and concurrent units
each see a consistent database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import OperationalError

from aitbc.errors import ServiceUnavailable
from aitbc.storage import db
from aitbc.storage.models import Client
from tests.conftest import Coordinator

CLIENTS = Client.__table__
CREATED_AT = datetime(2026, 2, 13, tzinfo=UTC)


def _add_client(connection: Connection, client_id: str, *, fail: bool = False) -> str:
    connection.execute(insert(CLIENTS).values(id=client_id, name=None, created_at=CREATED_AT))
    if fail:
        raise RuntimeError("the unit fails after writing")
    return client_id


def _count(connection: Connection, prefix: str) -> int:
    query = select(func.count()).select_from(CLIENTS).where(CLIENTS.c.id.like(f"{prefix}%"))
    return int(connection.execute(query).scalar_one())


async def test_a_failing_unit_leaves_nothing(coordinator: Coordinator) -> None:
    engine = coordinator.runtime.engine
    with pytest.raises(RuntimeError):
        await db.transaction(engine, _add_client, "unit-a", fail=True)
    assert await db.read(engine, _count, "unit-a") == 0
    assert await db.transaction(engine, _add_client, "unit-a") == "unit-a"
    assert await db.read(engine, _count, "unit-a") == 1


async def test_concurrent_units_all_commit(coordinator: Coordinator) -> None:
    engine = coordinator.runtime.engine
    ids = [f"unit-b-{index}" for index in range(50)]
    results = await asyncio.gather(
        *(
            db.transaction(engine, _add_client, client_id, fail=index % 5 == 0)
            for index, client_id in enumerate(ids)
        ),
        return_exceptions=True,
    )
    failed = [result for result in results if isinstance(result, RuntimeError)]
    assert len(failed) == 10
    assert await db.read(engine, _count, "unit-b-") == 40


def _database_gone(connection: Connection) -> None:
    raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))


async def test_an_unavailable_database_is_a_service_unavailable_error(
    coordinator: Coordinator,
) -> None:
    with pytest.raises(ServiceUnavailable):
        await db.transaction(coordinator.runtime.engine, _database_gone)
    with pytest.raises(ServiceUnavailable):
        await db.read(coordinator.runtime.engine, _database_gone)
