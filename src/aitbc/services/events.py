"""The events each change writes, built inside the change's own transaction
(DESIGN.md section 8).

A use case builds its events here (dated when they are built, just before they are
appended: the time of the transition, not of the request) and appends them
(``storage.event_queries``) as the last statement of its unit of work, then calls
:func:`publish` once the transaction committed: an event is stored exactly when its
change is, and published (and logged: one line per job transition) only after.
Event data is small and public where the channel is public: a job event never
carries the prompt, the result or an error text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from aitbc.domain.events import (
    BLOCK_TYPE,
    HEARTBEAT_TYPE,
    JOB_PROGRESS_TYPE,
    RECEIPT_TYPE,
    Channel,
    job_event_type,
)
from aitbc.domain.jobs import JobStatus
from aitbc.domain.timestamps import unix_seconds
from aitbc.services.explorer import block_text, public_receipt
from aitbc.storage.event_queries import NewEvent
from aitbc.storage.job_queries import JobRecord
from aitbc.storage.ledger_queries import StoredBlock

if TYPE_CHECKING:
    from aitbc.services.runtime import Runtime

log = logging.getLogger("aitbc.jobs")


# orjson writes aware datetimes itself (RFC 3339, "Z" for UTC): events are written on
# every job step, and isoformat() + replace() cost more than the rest of the event.
_ORJSON_OPTIONS = orjson.OPT_UTC_Z
_JOB_TYPES = {status.value: job_event_type(status.value) for status in JobStatus}


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not UTC else moment


def _json(data: dict[str, Any]) -> str:
    return orjson.dumps(data, option=_ORJSON_OPTIONS).decode("utf-8")


def job_event(
    row: JobRecord,
    now: datetime,
    *,
    receipt_id: str | None = None,
    miner_id: str | None = None,
) -> NewEvent:
    """The ``job_updates`` event of a job entering its status. ``miner_id``: the
    miner that also sees it when the row names none any more (a job it gave up or
    lost, back in the queue)."""
    data: dict[str, Any] = {
        "job_id": row.id,
        "status": row.status,
        "model": row.model,
        "client_id": row.client_id,
        "miner_id": row.miner_id,
        "progress": row.progress,
        "attempts": row.attempts,
        "error_code": row.error_code,
        "at": _utc(now),
    }
    if receipt_id is not None:
        data["receipt_id"] = receipt_id
        data["usage"] = {
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
        }
    return NewEvent(
        Channel.JOB_UPDATES.value,
        _JOB_TYPES[row.status],
        row.client_id,
        row.miner_id or miner_id,
        unix_seconds(now),
        _json(data),
    )


def progress_event(
    job_id: str,
    client_id: str,
    miner_id: str,
    progress: int,
    streamed: int | None,
    now: datetime,
) -> NewEvent:
    """The ``job.progress`` event of a progress report (``streamed``: characters of
    output the coordinator holds, when the miner streams its text)."""
    data: dict[str, Any] = {
        "job_id": job_id,
        "status": "running",
        "client_id": client_id,
        "miner_id": miner_id,
        "progress": progress,
        "at": _utc(now),
    }
    if streamed is not None:
        data["streamed"] = streamed
    return NewEvent(
        Channel.JOB_UPDATES.value,
        JOB_PROGRESS_TYPE,
        client_id,
        miner_id,
        unix_seconds(now),
        _json(data),
    )


def heartbeat_event(
    miner_id: str, status: str, utilisation: float | None, running: int, now: datetime
) -> NewEvent:
    """The ``miner_heartbeats`` event of a heartbeat: public fields only (no address,
    no job ids)."""
    data = {
        "miner_id": miner_id,
        "status": status,
        "utilisation": utilisation,
        "running_jobs": running,
        "at": _utc(now),
    }
    return NewEvent(
        Channel.MINER_HEARTBEATS.value, HEARTBEAT_TYPE, None, None, unix_seconds(now), _json(data)
    )


def block_event(block: StoredBlock, created_at: int) -> NewEvent:
    """The ``blocks`` event of a sealed block: the ``Block`` the explorer serves."""
    return NewEvent(Channel.BLOCKS.value, BLOCK_TYPE, None, None, created_at, block_text(block))


def receipt_event(
    document: dict[str, Any], receipt_hash: str, tx_id: str, created_at: int
) -> NewEvent:
    """The ``receipts`` event of an issued receipt: its public summary (its anchor is
    not sealed yet, so ``block_height`` is null; the ``blocks`` channel says when)."""
    return NewEvent(
        Channel.RECEIPTS.value,
        RECEIPT_TYPE,
        None,
        None,
        created_at,
        _json(public_receipt(document, receipt_hash, tx_id, None)),
    )


def publish(runtime: Runtime, events: Sequence[NewEvent]) -> None:
    """After the commit: wake the event stream and log each job transition (INFO;
    progress reports and heartbeats at DEBUG) with its ids."""
    runtime.events.committed()
    if not events or not log.isEnabledFor(logging.DEBUG):
        return
    for event in events:
        if event.channel != Channel.JOB_UPDATES.value:
            continue
        level = logging.DEBUG if event.type == JOB_PROGRESS_TYPE else logging.INFO
        if not log.isEnabledFor(level):
            continue
        data = orjson.loads(event.data)
        status = data.get("status")
        words = [f"job {data.get('job_id')} {event.type.removeprefix('job.')}"]
        if data.get("miner_id"):
            words.append(f"on miner {data['miner_id']}")
        if event.type == JOB_PROGRESS_TYPE:
            words.append(f"{data.get('progress')}%")
        if data.get("error_code"):
            words.append(f"({data['error_code']})")
        if data.get("receipt_id"):
            words.append(f"receipt {data['receipt_id']}")
        log.log(
            level,
            " ".join(words),
            extra={
                "event": event.type,
                "job_id": data.get("job_id"),
                "client_id": event.client_id,
                "miner_id": data.get("miner_id") or event.miner_id,
                "status": status,
            },
        )
