"""Miner liveness statements in SQLAlchemy Core, run inside a service's unit of work
(``aitbc.storage.db.transaction``). They never commit."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, select, update

from aitbc.domain.jobs import MinerHardware, MinerTerms
from aitbc.storage.models import Miner

MINERS = cast(Table, Miner.__table__)
OFFLINE = "offline"


_TERMS = select(MINERS.c.price_micro, MINERS.c.concurrency, MINERS.c.template_tokens).where(
    MINERS.c.id == bindparam("miner_id")
)


def terms(connection: Connection, miner_id: str) -> MinerTerms | None:
    """The miner's current price, concurrency and template tokens."""
    row = connection.execute(_TERMS, {"miner_id": miner_id}).first()
    if row is None:
        return None
    return MinerTerms.from_columns(row.price_micro, row.concurrency, row.template_tokens)


_PROFILE = select(
    MINERS.c.capabilities,
    MINERS.c.gpu_name,
    MINERS.c.gpu_memory_gb,
    MINERS.c.gpu_count,
    MINERS.c.price_micro,
    MINERS.c.concurrency,
    MINERS.c.template_tokens,
).where(MINERS.c.id == bindparam("miner_id"))


def profile(connection: Connection, miner_id: str) -> tuple[MinerHardware, MinerTerms] | None:
    """What the miner serves and has, and its terms; None if it does not exist."""
    row = connection.execute(_PROFILE, {"miner_id": miner_id}).first()
    if row is None:
        return None
    hardware = MinerHardware(
        models=frozenset(row.capabilities),
        gpu_name=row.gpu_name,
        gpu_memory_gb=row.gpu_memory_gb,
        gpu_count=row.gpu_count,
    )
    return hardware, MinerTerms.from_columns(row.price_micro, row.concurrency, row.template_tokens)


def record_heartbeat(
    connection: Connection,
    miner_id: str,
    now: datetime,
    status: str,
    utilisation: float | None,
    running_jobs: int,
) -> bool:
    """Store a heartbeat; False if the miner does not exist."""
    result = connection.execute(
        update(MINERS)
        .where(MINERS.c.id == miner_id)
        .values(
            last_heartbeat_at=now,
            status=status,
            utilisation=utilisation,
            running_jobs=running_jobs,
        )
    )
    return result.rowcount == 1


def mark_silent_offline(connection: Connection, cutoff: datetime) -> int:
    """Mark miners whose last heartbeat is older than ``cutoff`` offline; how many."""
    result = connection.execute(
        update(MINERS)
        .where(MINERS.c.status != OFFLINE, MINERS.c.last_heartbeat_at < cutoff)
        .values(status=OFFLINE)
    )
    return int(result.rowcount)
