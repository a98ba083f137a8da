"""Miner liveness statements in SQLAlchemy Core, run inside a service's unit of work
(``aitbc.storage.db.transaction``). They never commit."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, select, update

from aitbc.domain.jobs import MinerTerms
from aitbc.storage.models import Miner

MINERS = cast(Table, Miner.__table__)
OFFLINE = "offline"


_TERMS_FOR_CLAIM = (
    select(MINERS.c.price_micro, MINERS.c.concurrency, MINERS.c.template_tokens)
    .where(MINERS.c.id == bindparam("miner_id"))
    .with_for_update()
)


def lock_terms(connection: Connection, miner_id: str) -> MinerTerms | None:
    """The miner's current price, concurrency and template tokens, its row locked
    until the transaction ends (PostgreSQL; SQLite has one writer at a time anyway):
    two claims by one miner are decided one after the other, so neither can pass
    its concurrency on a count the other has not committed yet."""
    row = connection.execute(_TERMS_FOR_CLAIM, {"miner_id": miner_id}).first()
    if row is None:
        return None
    return MinerTerms.from_columns(row.price_micro, row.concurrency, row.template_tokens)


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
