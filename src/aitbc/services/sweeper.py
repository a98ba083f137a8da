"""The background sweeper: lapsed leases, timeouts, silent miners and expired files,
on a fixed beat."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Connection

from aitbc.domain.jobs import JobStatus, status_after_lost_attempt
from aitbc.domain.timestamps import unix_seconds
from aitbc.services import files, marketplace, miners
from aitbc.services._job_steps import (
    LEASE_LAPSED_ERROR_CODE,
    lost_attempt_values,
    offer_of,
    refund_if_ended,
    timeout_values,
)
from aitbc.services.events import job_event, publish
from aitbc.services.runtime import Runtime
from aitbc.storage import event_queries, job_queries
from aitbc.storage.db import transaction
from aitbc.storage.event_queries import NewEvent
from aitbc.storage.job_queries import JobRecord

log = logging.getLogger(__name__)
# Jobs one sweep changes at most: a sweep is one transaction, and on SQLite it runs
# on the event loop, so a huge backlog is worked off over several sweeps instead.
SWEEP_BATCH = 500
# Events one sweep prunes at most (the oldest first).
EVENT_PRUNE_BATCH = 5000


async def sweep_jobs(runtime: Runtime) -> dict[str, int]:
    """Fail timed-out jobs and requeue (or fail) jobs whose lease lapsed.

    Runs in the background every ``sweep_interval_seconds``; each change is a
    conditional update, so a miner completing at the same moment cannot be overwritten.
    """
    now = runtime.clock()
    max_attempts = runtime.settings.max_attempts

    def work(connection: Connection) -> tuple[list[str], list[JobRecord], int, list[NewEvent]]:
        timed_out: list[str] = []
        requeued: list[JobRecord] = []
        failed = 0
        events: list[NewEvent] = []
        for row in job_queries.overdue(connection, now, SWEEP_BATCH):
            values = timeout_values(row, now)
            ended = job_queries.transition(connection, row.id, JobStatus(row.status), values)
            if ended is not None:
                refund_if_ended(connection, ended)
                timed_out.append(row.id)
                events.append(job_event(ended, now, miner_id=row.miner_id))
        for row in job_queries.lapsed(connection, now, SWEEP_BATCH):
            target = status_after_lost_attempt(row.attempts, max_attempts)
            error = (
                f"miner {row.miner_id} stopped renewing its lease"
                if target is JobStatus.PENDING
                else f"lease lapsed on all {row.attempts} attempts"
            )
            values = lost_attempt_values(target, now, error, LEASE_LAPSED_ERROR_CODE)
            # Only if the lease is still lapsed and held by the same attempt: a
            # heartbeat or progress report may have renewed it since it was read.
            updated = job_queries.transition(
                connection,
                row.id,
                JobStatus.RUNNING,
                values,
                attempt=(row.miner_id, row.attempts),
                lease_lapsed_by=now,
            )
            if updated is None:
                continue
            refund_if_ended(connection, updated)
            events.append(job_event(updated, now, miner_id=row.miner_id))
            if target is JobStatus.PENDING:
                requeued.append(updated)
            else:
                failed += 1
        event_queries.append(connection, events)
        return timed_out, requeued, failed, events

    timed_out, requeued, failed, events = await transaction(runtime.engine, work)
    if events:
        publish(runtime, events)
    for job_id in timed_out:
        runtime.dispatcher.release(job_id)
        runtime.streams.notify(job_id)
    for row in requeued:
        runtime.dispatcher.publish(offer_of(row))
        runtime.streams.notify(row.id)
    return {"timed_out": len(timed_out), "requeued": len(requeued), "failed": failed}


async def sweep_once(runtime: Runtime) -> dict[str, int]:
    """One pass: what changed, by kind."""
    counts = await sweep_jobs(runtime)
    counts["miners_offline"] = await miners.mark_offline(runtime)
    counts["files_expired"] = await files.delete_expired(runtime)
    counts["events_pruned"] = await prune_events(runtime)
    counts["trades_expired"] = await transaction(
        runtime.engine, marketplace.expire_trades, runtime.clock()
    )
    return counts


async def prune_events(runtime: Runtime) -> int:
    """Forget events older than ``event_retention_seconds`` (a batch per pass). On
    PostgreSQL, first give offsets to committed events nobody's stream numbered yet
    (no subscriber anywhere): every event gets its offset within a sweep."""
    await transaction(runtime.engine, event_queries.number_pending, EVENT_PRUNE_BATCH)
    cutoff = unix_seconds(runtime.clock()) - runtime.settings.event_retention_seconds
    return await transaction(runtime.engine, event_queries.prune, cutoff, EVENT_PRUNE_BATCH)


async def run_forever(runtime: Runtime) -> None:
    """Sweep every ``sweep_interval_seconds`` until cancelled; errors are logged, not fatal."""
    interval = runtime.settings.sweep_interval_seconds
    while True:
        try:
            counts = await sweep_once(runtime)
            if any(counts.values()):
                log.info("sweep: %s", counts)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweeper must outlive a database hiccup
            log.exception("sweep failed; retrying in %.1f s", interval)
        await asyncio.sleep(interval)
