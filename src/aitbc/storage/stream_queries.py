"""Job stream statements: the pieces of generated text a miner reports while it runs
a job (SQLAlchemy Core over a sync ``Connection``; helpers never commit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Table, bindparam, insert, select

from aitbc.storage.models import JobStreamChunk

CHUNKS = cast(Table, JobStreamChunk.__table__)
S = CHUNKS.c


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """Characters ``start`` to ``stop`` of one attempt's output."""

    start: int
    stop: int
    text: str


_LAST_STOP = (
    select(S.stop)
    .where(S.job_id == bindparam("job_id"), S.attempt == bindparam("attempt"))
    .order_by(S.start.desc())
    .limit(1)
)


def streamed_length(connection: Connection, job_id: str, attempt: int) -> int:
    """How many characters of ``attempt``'s output have been stored (0 before any)."""
    value = connection.execute(_LAST_STOP, {"job_id": job_id, "attempt": attempt}).scalar()
    return 0 if value is None else int(value)


_INSERT_CHUNK = insert(CHUNKS)


def append_chunk(connection: Connection, job_id: str, attempt: int, start: int, text: str) -> int:
    """Store ``text`` as characters ``start``.. of ``attempt``'s output; returns where
    it ends. The caller has checked that ``start`` is the stored length."""
    stop = start + len(text)
    connection.execute(
        _INSERT_CHUNK,
        {"job_id": job_id, "attempt": attempt, "start": start, "stop": stop, "text": text},
    )
    return stop


_CHUNKS_AFTER = (
    select(S.start, S.stop, S.text)
    .where(
        S.job_id == bindparam("job_id"),
        S.attempt == bindparam("attempt"),
        S.stop > bindparam("after"),
    )
    .order_by(S.start)
    .limit(bindparam("limit"))
)


def chunks_after(
    connection: Connection, job_id: str, attempt: int, after: int, limit: int = 1000
) -> list[StreamChunk]:
    """The stored pieces of ``attempt``'s output that end after character ``after``,
    in order (the first may begin before it: the caller cuts it)."""
    rows = connection.execute(
        _CHUNKS_AFTER, {"job_id": job_id, "attempt": attempt, "after": after, "limit": limit}
    )
    return [StreamChunk(int(row.start), int(row.stop), str(row.text)) for row in rows]
