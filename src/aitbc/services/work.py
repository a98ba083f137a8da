"""Miner job use cases: polling for an offer, claiming, progress and failure.

Of two concurrent claims exactly one conditional statement matches; only when a step
does not match does the service read the job again to say why.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import Connection

from aitbc.domain.jobs import (
    JobStatus,
    MinerHardware,
    MinerTerms,
    can_run,
    status_after_lost_attempt,
    within_price,
)
from aitbc.errors import AITBCError, Conflict, NotFound, PermissionDenied
from aitbc.schemas import FailureReport, ProgressAck, ProgressReport
from aitbc.services import miners as miner_service
from aitbc.services._job_steps import (
    HANDED_BACK_ERROR_CODE,
    held_job,
    lost_attempt_values,
    offer_of,
    requirements_of,
    transition,
)
from aitbc.services.auth import require_miner
from aitbc.services.dispatch import RECHECK_SECONDS, Dispatcher, Taker
from aitbc.services.events import job_event, progress_event, publish
from aitbc.services.runtime import Principal, Runtime
from aitbc.services.views import JobDocument, job_document
from aitbc.storage import event_queries, job_queries, miner_queries, stream_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.event_queries import NewEvent
from aitbc.storage.job_queries import JobRecord


async def next_for_miner(
    runtime: Runtime, principal: Principal, miner_id: str, wait_seconds: float
) -> JobDocument | None:
    """The job this miner should take next, waiting up to ``wait_seconds`` for one.

    Polling again means the miner did not claim what it was offered before: that is
    handed back first (see ``services.dispatch``). A miner with no free slot (as many
    running jobs as its concurrency) is offered nothing.
    """
    require_miner(principal, miner_id)
    hardware, terms = await miner_service.profile(runtime, miner_id)
    dispatcher = runtime.dispatcher
    dispatcher.hand_back(miner_id)
    wait_seconds = min(max(wait_seconds, 0.0), runtime.settings.max_long_poll_seconds)
    # The event loop's monotonic clock: a wall-clock change must not stretch a poll.
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait_seconds
    while True:
        generation = dispatcher.generation
        taker, row = await read(
            runtime.engine, _take_next_pending, dispatcher, miner_id, hardware, terms
        )
        if row is not None:
            return job_document(row)
        remaining = give_up_at - loop.time()
        if remaining <= 0:
            return None
        if not dispatcher.may_receive(taker):
            # Busy: wait for a slot to free (re-checked), never for an offer.
            await asyncio.sleep(min(remaining, RECHECK_SECONDS))
            continue
        offer = await dispatcher.wait(taker, generation, min(remaining, RECHECK_SECONDS))
        if offer is not None:
            return offer.payload


async def take_next(
    runtime: Runtime, principal: Principal, miner_id: str, wait_seconds: float
) -> JobDocument | None:
    """Poll and claim in one request (``GET /v1/jobs/available?claim=true``): the next
    job this miner may run, already claimed by it, or None after ``wait_seconds``.

    A miner that claims what it is offered saves a round trip per job this way (the
    time to a job's first token, above all). A job another request took first is
    passed over and the wait goes on.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + min(max(wait_seconds, 0.0), runtime.settings.max_long_poll_seconds)
    while True:
        offered = await next_for_miner(
            runtime, principal, miner_id, max(give_up_at - loop.time(), 0.0)
        )
        if offered is None:
            return None
        claiming = asyncio.ensure_future(claim(runtime, principal, offered["job_id"], miner_id))
        try:
            return await asyncio.shield(claiming)
        except (Conflict, PermissionDenied) as exc:
            if exc.error_code == "miner_busy" or loop.time() >= give_up_at:
                return None
        except asyncio.CancelledError:
            # The miner hung up while its claim was being made: a job it will never
            # hear of goes back to the queue at once, its attempt given back.
            await _hand_back_unheard(runtime, principal, claiming, miner_id)
            raise


async def _hand_back_unheard(
    runtime: Runtime, principal: Principal, claiming: asyncio.Future[JobDocument], miner_id: str
) -> None:
    try:
        job = await claiming
    except Exception:  # the claim did not happen: nothing to give back
        return
    report = FailureReport(
        miner_id=miner_id, error="the poll that claimed it was abandoned", handed_back=True
    )
    with contextlib.suppress(AITBCError):
        await report_failure(runtime, principal, job["job_id"], report)


def _take_next_pending(
    connection: Connection,
    dispatcher: Dispatcher[JobDocument],
    miner_id: str,
    hardware: MinerHardware,
    terms: MinerTerms,
) -> tuple[Taker, JobRecord | None]:
    """The miner as the dispatcher sees it now, and the first pending job it may run
    that no other poll was just offered (marked as offered to it), if it may take one."""
    while True:
        # Enough jobs that one is not on offer elsewhere, unless the queue has no more.
        limit = len(dispatcher.offered_ids()) + 1
        rows = job_queries.next_jobs(connection, hardware, miner_id, terms.price_micro, limit)
        running = (
            rows[0].poller_running if rows else job_queries.running_count(connection, miner_id)
        )
        taker = Taker(miner_id, hardware, terms.price_micro, terms.concurrency - running)
        if not dispatcher.may_receive(taker):
            return taker, None
        # Nothing is awaited between reading the offers and marking one: atomic.
        offered = dispatcher.offered_ids()
        chosen = next(
            (
                row
                for row in rows
                if row.id not in offered and not dispatcher.recently_claimed(row.id)
            ),
            None,
        )
        if chosen is not None:
            dispatcher.mark_offered(offer_of(chosen), miner_id)
            return taker, chosen
        if len(rows) < limit:
            return taker, None


async def claim(runtime: Runtime, principal: Principal, job_id: str, miner_id: str) -> JobDocument:
    """Give a pending job to this miner with a lease; exactly one concurrent claim wins."""
    require_miner(principal, miner_id)
    # The price and concurrency are read by the claim itself, as they are now; the
    # (cached) profile gives what the miner serves and its template allowances.
    hardware, declared = await miner_service.profile(runtime, miner_id)
    now = runtime.clock()
    lease_until = now + timedelta(seconds=runtime.settings.lease_seconds)

    built: list[NewEvent] = []

    def work(connection: Connection) -> JobRecord:
        row = job_queries.claim(connection, hardware, declared, job_id, miner_id, now, lease_until)
        if row is None:
            _explain_refused_claim(connection, job_id, miner_id, hardware, now)
        built[:] = [job_event(row, runtime.clock())]
        event_queries.append(connection, built)
        return row

    row = await transaction(runtime.engine, work)
    runtime.dispatcher.claimed(job_id, miner_id)
    runtime.streams.notify(job_id)
    if row.attempts == 1:
        runtime.metrics.dispatch_seconds.observe(max((now - row.created_at).total_seconds(), 0))
    publish(runtime, built)
    return job_document(row)


def _explain_refused_claim(
    connection: Connection, job_id: str, miner_id: str, hardware: MinerHardware, now: datetime
) -> NoReturn:
    """Raise the reason a claim did not match: missing, taken, ineligible, too dear,
    the miner busy, timed out."""
    terms = miner_queries.terms(connection, miner_id)
    if terms is None:
        raise NotFound(f"miner {miner_id} not found", error_code="miner_not_found")
    row = job_queries.get_job(connection, job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found", error_code="job_not_found")
    if row.status != JobStatus.PENDING.value:
        raise Conflict(f"job is {row.status}, not pending", error_code="already_claimed")
    if not can_run(row.model, requirements_of(row), hardware):
        raise PermissionDenied(
            "this miner does not serve the job's model or lacks the hardware it needs",
            error_code="miner_not_eligible",
        )
    if not within_price(row.max_price_micro, terms.price_micro):
        raise PermissionDenied(
            "this miner's price is above the most the job's client accepts (max_price)",
            error_code="price_above_max_price",
        )
    if now >= row.deadline_at:
        raise Conflict("job has timed out", error_code="job_timed_out")
    running = job_queries.running_count(connection, miner_id)
    if running >= terms.concurrency:
        raise Conflict(
            f"this miner already runs {running} jobs, its declared concurrency",
            error_code="miner_busy",
        )
    raise Conflict("job was claimed by another miner", error_code="already_claimed")


async def report_progress(
    runtime: Runtime, principal: Principal, job_id: str, report: ProgressReport
) -> ProgressAck:
    """Record progress and renew the lease, and store the text generated since the
    last report; tell the miner to stop if the job ended."""
    require_miner(principal, report.miner_id)
    now = runtime.clock()
    lease_until = now + timedelta(seconds=runtime.settings.lease_seconds)
    built: list[NewEvent] = []

    def work(connection: Connection) -> ProgressAck:
        recorded = job_queries.record_progress(
            connection, job_id, report.miner_id, report.progress, lease_until
        )
        if recorded is None:
            row = held_job(connection, job_id, report.miner_id)
            return ProgressAck(
                job_id=job_id,
                status=JobStatus(row.status),
                progress=row.progress,
                should_stop=True,
            )
        progress, attempt, client_id = recorded
        streamed = stream_queries.streamed_length(connection, job_id, attempt)
        if report.delta is not None and report.offset is not None:
            streamed = _take_delta(
                connection, job_id, attempt, streamed, report.offset, report.delta
            )
        built[:] = [
            progress_event(
                job_id,
                client_id,
                report.miner_id,
                progress,
                streamed if report.delta is not None else None,
                runtime.clock(),
            )
        ]
        event_queries.append(connection, built)
        return ProgressAck(
            job_id=job_id,
            status=JobStatus.RUNNING,
            progress=progress,
            should_stop=False,
            streamed=streamed,
        )

    ack = await transaction(runtime.engine, work)
    if report.delta is not None:
        runtime.streams.notify(job_id)
    if built:
        publish(runtime, built)
    return ack


def _take_delta(
    connection: Connection, job_id: str, attempt: int, streamed: int, offset: int, delta: str
) -> int:
    """Store the part of ``delta`` (characters ``offset``.. of the output) not stored
    yet; the stored length after. A gap (``offset`` beyond what is stored) is a 409
    that says where to resume."""
    if offset > streamed:
        raise Conflict(
            f"this text starts at character {offset} but the coordinator holds {streamed}: "
            "send again from there",
            error_code="stream_gap",
        )
    new_text = delta[streamed - offset :]
    if not new_text:  # a report sent again: taken already
        return streamed
    return stream_queries.append_chunk(connection, job_id, attempt, streamed, new_text)


async def report_failure(
    runtime: Runtime, principal: Principal, job_id: str, report: FailureReport
) -> JobDocument:
    """A miner gives up: retryable failures requeue the job while attempts remain.

    A job ``handed_back`` by a miner that is stopping goes back to the queue and
    gets back the attempt its claim used: a miner restart must not cost the client.
    """
    require_miner(principal, report.miner_id)
    now = runtime.clock()
    built: list[NewEvent] = []

    def work(connection: Connection) -> JobRecord:
        row = held_job(connection, job_id, report.miner_id)
        current = JobStatus(row.status)
        if current is not JobStatus.RUNNING:
            raise Conflict(
                f"job is {current.value}, not running", error_code=f"job_{current.value}"
            )
        if report.handed_back:
            values = lost_attempt_values(
                JobStatus.PENDING, now, report.error, HANDED_BACK_ERROR_CODE
            )
            values["attempts"] = max(row.attempts - 1, 0)
        else:
            target = (
                status_after_lost_attempt(row.attempts, runtime.settings.max_attempts)
                if report.retryable
                else JobStatus.FAILED
            )
            values = lost_attempt_values(target, now, report.error, "miner_error")
        # Only if this attempt still holds the job (it may have been requeued and
        # claimed by another miner since it was read).
        updated = transition(
            connection, job_id, current, values, attempt=(report.miner_id, row.attempts)
        )
        # A requeued job's event still names the miner that gave it up (who may see it).
        built[:] = [job_event(updated, runtime.clock(), miner_id=report.miner_id)]
        event_queries.append(connection, built)
        return updated

    updated = await transaction(runtime.engine, work)
    runtime.streams.notify(job_id)
    publish(runtime, built)
    if updated.status == JobStatus.PENDING.value:
        offer = offer_of(updated)
        runtime.dispatcher.publish(offer)
        return offer.payload
    return job_document(updated)
