"""A job's output as it is generated: ``GET /v1/jobs/{job_id}/stream`` as Server-Sent
Events (DESIGN.md section 9).

The miner sends the text it generates with its progress reports; the coordinator
stores it in pieces (``storage.stream_queries``), and each reader gets the whole of
it, from the database, so any number of readers, on any coordinator process sharing
the database, after any reconnect, see the same text. Events:

- ``token``: ``{"text", "offset"}``, the next characters of the output; its id is
  ``<attempt>:<characters sent so far>``. A reader that reconnects with that id in
  ``Last-Event-ID`` gets exactly the characters after it.
- ``reset``: ``{"attempt"}``, the text sent so far is void: the job was requeued and
  another attempt generates afresh (or, once, when the stored stream is not what the
  miner delivered as the result, the result follows as tokens from offset 0).
- ``end``: ``{"job_id", "status", "usage", "receipt_id", "price", "error",
  "error_code"}`` once the job is completed, failed or cancelled, after the last
  token; its id is ``end``. Billing is the receipt's ``price``, never the stream's.

A completed job's output is its result: whatever the miner streamed is topped up
from the result at the end, so a job whose miner streams nothing still streams its
whole answer, in one token.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from aitbc.domain.jobs import JobStatus, is_terminal
from aitbc.errors import InvalidRequest
from aitbc.services._job_steps import load_visible_job
from aitbc.services.auth import require_role
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import receipt_queries, stream_queries
from aitbc.storage.db import read
from aitbc.storage.stream_queries import StreamChunk

# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_SECONDS = 15.0
END_EVENT_ID = "end"
_CHUNKS_PER_READ = 500


@dataclass(frozen=True, slots=True)
class StreamCursor:
    """Where a reader is: ``offset`` characters of attempt ``attempt`` sent (attempt 0:
    nothing sent yet); ``ended``: the ``end`` event was sent."""

    attempt: int = 0
    offset: int = 0
    ended: bool = False

    @classmethod
    def parse(cls, last_event_id: str | None) -> StreamCursor:
        """The cursor a ``Last-Event-ID`` header names (none: the start); 400
        ``invalid_last_event_id`` for anything this stream never sent."""
        if last_event_id is None or not last_event_id.strip():
            return cls()
        value = last_event_id.strip()
        if value == END_EVENT_ID:
            return cls(ended=True)
        attempt, colon, offset = value.partition(":")
        if colon and attempt.isdigit() and offset.isdigit() and len(value) <= 24:
            return cls(int(attempt), int(offset))
        raise InvalidRequest(
            f"Last-Event-ID {value[:40]!r} is not an event id of this stream "
            "(they look like '1:120' or 'end')",
            error_code="invalid_last_event_id",
        )


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one read of the stream found."""

    status: JobStatus
    attempt: int
    chunks: list[StreamChunk]
    # Set once the job is terminal:
    result: str | None = None
    whole_stream: str | None = None
    end: dict[str, Any] | None = None


def _end_event(row: Any, receipt: Any) -> dict[str, Any]:
    usage = None
    if row.prompt_tokens is not None or row.completion_tokens is not None:
        prompt, completion = int(row.prompt_tokens or 0), int(row.completion_tokens or 0)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    receipt_id = price = None
    if receipt is not None:
        document = json.loads(receipt.document)
        receipt_id, price = document.get("receipt_id"), document.get("price")
    return {
        "job_id": row.id,
        "status": row.status,
        "usage": usage,
        "receipt_id": receipt_id,
        "price": price,
        "error": row.error,
        "error_code": row.error_code,
    }


def _snapshot(
    connection: Connection, principal: Principal, job_id: str, cursor: StreamCursor
) -> _Snapshot:
    row = load_visible_job(connection, principal, job_id)
    status = JobStatus(row.status)
    attempt = int(row.attempts)
    after = cursor.offset if cursor.attempt == attempt else 0
    if not is_terminal(status):
        chunks = stream_queries.chunks_after(connection, job_id, attempt, after, _CHUNKS_PER_READ)
        return _Snapshot(status, attempt, chunks)
    # The end: the whole stored stream of the last attempt (to check it against the
    # result), the receipt of a completed job.
    chunks = stream_queries.chunks_after(connection, job_id, attempt, 0, 2**31 - 1)
    receipt = (
        receipt_queries.receipt_for_job(connection, job_id)
        if status is JobStatus.COMPLETED
        else None
    )
    return _Snapshot(
        status,
        attempt,
        [chunk for chunk in chunks if chunk.stop > after],
        result=row.result if status is JobStatus.COMPLETED else None,
        whole_stream="".join(chunk.text for chunk in chunks),
        end=_end_event(row, receipt),
    )


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a job's stream: ``name`` is ``token``, ``reset`` or ``end``, or
    None for a keep-alive (no event, just a sign of life)."""

    name: str | None
    event_id: str = ""
    data: dict[str, Any] | None = None

    def encode(self) -> bytes:
        """The event as Server-Sent Events bytes."""
        if self.name is None:
            return b": keep-alive\n\n"
        payload = json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {self.name}\nid: {self.event_id}\ndata: {payload}\n\n".encode()


_KEEPALIVE = StreamEvent(None)


def _event(name: str, event_id: str, data: dict[str, Any]) -> StreamEvent:
    return StreamEvent(name, event_id, data)


async def job_events(
    runtime: Runtime, principal: Principal, job_id: str, last_event_id: str | None = None
) -> AsyncIterator[StreamEvent]:
    """The job's events from the cursor ``last_event_id`` names, until its ``end``.
    Raises (before returning the iterator) 404 for a job the caller may not see, 400
    for a bad id."""
    require_role(principal, "client", "admin")
    cursor = StreamCursor.parse(last_event_id)
    first = await read(runtime.engine, _snapshot, principal, job_id, cursor)
    return _events(runtime, principal, job_id, cursor, first)


async def open_stream(
    runtime: Runtime, principal: Principal, job_id: str, last_event_id: str | None
) -> AsyncIterator[bytes]:
    """:func:`job_events` as SSE bytes."""
    events = await job_events(runtime, principal, job_id, last_event_id)

    async def encoded() -> AsyncIterator[bytes]:
        async for event in events:
            yield event.encode()

    return encoded()


async def _events(
    runtime: Runtime,
    principal: Principal,
    job_id: str,
    cursor: StreamCursor,
    snapshot: _Snapshot,
) -> AsyncIterator[StreamEvent]:
    if cursor.ended and snapshot.end is not None:
        # Reconnected after the end (an EventSource does): the end again, to close on.
        yield _event("end", END_EVENT_ID, snapshot.end)
        return
    attempt, offset = cursor.attempt, cursor.offset
    last_sent = time.monotonic()
    with runtime.streams.watch(job_id) as watch:
        # Registered after the first read: a change between the two costs one poll.
        seen = watch.version
        while True:
            if snapshot.attempt != attempt:
                if offset:  # text of an earlier attempt was sent: void it
                    yield _event("reset", f"{snapshot.attempt}:0", {"attempt": snapshot.attempt})
                attempt, offset = snapshot.attempt, 0
            for chunk in snapshot.chunks:
                if chunk.stop <= offset or chunk.start > offset:
                    continue  # already sent / a gap the next read fills
                text = chunk.text[offset - chunk.start :]
                yield _event("token", f"{attempt}:{chunk.stop}", {"text": text, "offset": offset})
                offset = chunk.stop
                last_sent = time.monotonic()
            if snapshot.end is not None:
                async for event in _finish(snapshot, attempt, offset):
                    yield event
                return
            if len(snapshot.chunks) < _CHUNKS_PER_READ:  # else more is stored: read on
                await watch.wait_past(seen)
                if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                    yield _KEEPALIVE
                    last_sent = time.monotonic()
            seen = watch.version
            snapshot = await read(
                runtime.engine, _snapshot, principal, job_id, StreamCursor(attempt, offset)
            )


async def _finish(snapshot: _Snapshot, attempt: int, offset: int) -> AsyncIterator[StreamEvent]:
    """The result's characters not streamed yet, then the ``end`` event."""
    end = snapshot.end or {}
    result = snapshot.result
    if result is not None:
        streamed = snapshot.whole_stream or ""
        if not result.startswith(streamed[:offset]):
            # What was streamed is not the result: void it, send the result.
            yield _event("reset", f"{attempt}:0", {"attempt": attempt})
            offset = 0
        if len(result) > offset:
            yield _event(
                "token",
                f"{attempt}:{len(result)}",
                {"text": result[offset:], "offset": offset},
            )
    yield _event("end", END_EVENT_ID, end)
