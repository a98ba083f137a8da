"""Job use cases: submission and reading for clients; polling, claiming, progress,
failure and completion for miners; the sweeper's timeouts and lapsed leases.

The rules live in ``aitbc.domain.jobs``. This module applies them in one transaction
per call through ``aitbc.storage.job_queries``, whose conditional statements make
the database the referee of races: of two concurrent claims (or a completion racing
a cancellation) exactly one statement matches. Only when a step does not match does
the service read the job again to say why.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import Connection

from aitbc.domain import pricing
from aitbc.domain.jobs import (
    JobStatus,
    MinerHardware,
    MinerTerms,
    Requirements,
    can_run,
    deadline,
    ensure_transition,
    is_terminal,
    status_after_lost_attempt,
    within_price,
)
from aitbc.domain.money import MAX_SUPPLY_MICRO, to_micro
from aitbc.domain.receipts import (
    ReceiptTerms,
    miner_statement,
    receipt_body,
    sign_receipt,
    text_hash,
    verify_miner_signature,
)
from aitbc.domain.usage import check_usage
from aitbc.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ValidationFailed,
    VerificationFailed,
)
from aitbc.schemas import (
    FailureReport,
    JobRequest,
    JobResult,
    ProgressAck,
    ProgressReport,
)
from aitbc.services import files as file_service
from aitbc.services import keys as key_service
from aitbc.services import miners as miner_service
from aitbc.services.auth import require_client, require_miner, require_role
from aitbc.services.dispatch import RECHECK_SECONDS, Dispatcher, Offer, Taker
from aitbc.services.runtime import Principal, Runtime
from aitbc.services.views import JobDocument, job_document, job_list_document
from aitbc.storage import job_queries, miner_queries, queries, receipt_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.job_queries import JobRecord

TIMEOUT_ERROR_CODE = "timeout"
LEASE_LAPSED_ERROR_CODE = "lease_expired"
# Jobs one sweep changes at most: a sweep is one transaction, and on SQLite it runs
# on the event loop, so a huge backlog is worked off over several sweeps instead.
SWEEP_BATCH = 500
# The template allowance of jobs claimed before miners declared theirs (migration 0004).
LEGACY_TEMPLATE_ALLOWANCE_TOKENS = 512
HANDED_BACK_ERROR_CODE = "handed_back"


def _requirements(row: JobRecord) -> Requirements:
    return Requirements(
        gpu_type=row.req_gpu_type,
        gpu_count=row.req_gpu_count or None,
        min_vram_gb=row.req_min_vram_gb or None,
    )


def offer_of(row: JobRecord) -> Offer[JobDocument]:
    """What the dispatcher needs to hand ``row`` to a waiting miner."""
    return Offer(
        job_id=row.id,
        model=row.model,
        requirements=_requirements(row),
        payload=job_document(row),
        max_price_micro=row.max_price_micro,
    )


def _visible_to(principal: Principal, row: JobRecord) -> bool:
    if principal.is_admin:
        return True
    if principal.role == "client":
        return bool(row.client_id == principal.owner_id)
    return principal.role == "miner" and row.miner_id == principal.owner_id


def load_visible_job(connection: Connection, principal: Principal, job_id: str) -> JobRecord:
    """The job if the caller may see it (its client, the miner holding it, an admin);
    404 ``job_not_found`` otherwise."""
    row = job_queries.get_job(connection, job_id)
    # A job someone else owns is reported as missing: ids are not an oracle.
    if row is None or not _visible_to(principal, row):
        raise NotFound(f"job {job_id} not found", error_code="job_not_found")
    return row


async def submit(runtime: Runtime, principal: Principal, request: JobRequest) -> JobDocument:
    """Queue a job for the calling client and offer it to a waiting miner."""
    client_id = require_client(principal)
    settings = runtime.settings
    timeout_seconds = request.timeout_seconds or settings.default_timeout_seconds
    if timeout_seconds > settings.max_timeout_seconds:
        raise InvalidRequest(
            f"timeout_seconds may be at most {settings.max_timeout_seconds}",
            error_code="timeout_too_long",
        )
    file_id = request.file_id
    prompt = (
        await file_service.prompt_of(runtime, client_id, file_id)
        if file_id
        else request.text_or_file
    )
    if len(prompt) > settings.max_prompt_chars:
        raise PayloadTooLarge(
            f"prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars}",
            error_code="prompt_too_large",
        )
    now = runtime.clock()
    model = request.model or settings.default_model
    requirements = Requirements(
        gpu_type=request.requirements.gpu_type,
        gpu_count=request.requirements.gpu_count,
        min_vram_gb=request.requirements.min_vram_gb,
    )
    market = await runtime.estimates.get(
        runtime.sessions, now, settings.miner_offline_after_seconds
    )
    max_tokens = request.params.max_tokens
    max_price_micro = to_micro(
        settings.default_max_price if request.max_price is None else request.max_price
    )
    values = {
        "id": runtime.new_id("job"),
        "client_id": client_id,
        "status": JobStatus.PENDING.value,
        "priority": request.priority.rank,
        "model": model,
        "prompt": prompt,
        "input_file_id": file_id,
        "params": request.params.model_dump(exclude_none=True),
        "req_gpu_type": requirements.gpu_type.lower() if requirements.gpu_type else None,
        "req_gpu_count": requirements.gpu_count or 0,
        "req_min_vram_gb": requirements.min_vram_gb or 0.0,
        "output_config": request.output_config.model_dump(),
        "timeout_seconds": timeout_seconds,
        "created_at": now,
        "deadline_at": deadline(now, timeout_seconds),
        "attempts": 0,
        "progress": 0,
        "estimated_cost_micro": pricing.estimate_cost_micro(
            pricing.estimate_units(prompt, max_tokens),
            [
                price
                for price in market.eligible_prices(model, requirements)
                if within_price(max_price_micro, price)
            ],
        ),
        "estimated_time_seconds": pricing.estimate_time_seconds(
            max_tokens, market.speeds.get(model)
        ),
        "max_price_micro": max_price_micro,
    }
    row = await transaction(runtime.engine, job_queries.insert_job, values)
    offer = offer_of(row)
    runtime.dispatcher.publish(offer)
    return offer.payload


async def get(runtime: Runtime, principal: Principal, job_id: str) -> JobDocument:
    """One job, if the caller may see it."""
    return job_document(await read(runtime.engine, load_visible_job, principal, job_id))


async def list_jobs(
    runtime: Runtime,
    principal: Principal,
    *,
    status: JobStatus | None = None,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = 20,
    offset: int = 0,
) -> dict[str, Any]:
    """The caller's jobs (all jobs for admins), newest first, in the list envelope."""
    require_role(principal, "client", "admin")
    # Admins see every job; a client sees its own (only clients and admins get here).
    client_id = None if principal.is_admin else principal.owner_id
    rows, total = await read(
        runtime.engine,
        job_queries.fetch_page,
        client_id=client_id,
        status=status,
        created_from=created_from,
        created_before=created_before,
        limit=limit,
        offset=offset,
    )
    return job_list_document(rows, total, offset)


async def history(
    runtime: Runtime, principal: Principal, start: date, end: date, limit: int, offset: int
) -> dict[str, Any]:
    """Jobs created between two UTC dates, both inclusive."""
    if end < start:
        raise InvalidRequest("'to' is before 'from'", error_code="invalid_date_range")
    created_from, created_before = queries.day_range(start, end)
    return await list_jobs(
        runtime,
        principal,
        created_from=created_from,
        created_before=created_before,
        limit=limit,
        offset=offset,
    )


async def cancel(runtime: Runtime, principal: Principal, job_id: str) -> JobDocument:
    """Cancel a pending or running job; 409 once it is terminal."""
    require_role(principal, "client", "admin")
    now = runtime.clock()

    def work(connection: Connection) -> JobRecord:
        row = load_visible_job(connection, principal, job_id)
        current = JobStatus(row.status)
        ensure_transition(current, JobStatus.CANCELLED)
        return _transition(
            connection,
            job_id,
            current,
            {
                "status": JobStatus.CANCELLED.value,
                "completed_at": now,
                "lease_expires_at": None,
                "error": "cancelled by the client",
                "error_code": "cancelled",
            },
        )

    updated = await transaction(runtime.engine, work)
    runtime.dispatcher.release(job_id)
    return job_document(updated)


async def download(runtime: Runtime, principal: Principal, job_id: str) -> JobDocument:
    """A completed job, for its result to be delivered in its ``output_config.format``."""
    job = await get(runtime, principal, job_id)
    if job["status"] != JobStatus.COMPLETED.value:
        raise Conflict(
            f"job is {job['status']}; a result exists only once it is completed",
            error_code="result_not_ready",
        )
    return job


def _transition(
    connection: Connection,
    job_id: str,
    expected: JobStatus,
    values: Mapping[str, Any],
    attempt: tuple[str | None, int] | None = None,
) -> JobRecord:
    """Apply ``values`` only if the job is still in ``expected`` state (else 409)."""
    row = job_queries.transition(connection, job_id, expected, values, attempt=attempt)
    if row is None:
        raise Conflict("the job changed state meanwhile; try again", error_code="job_changed")
    return row


# --- miners -------------------------------------------------------------------------


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


def _take_next_pending(
    connection: Connection,
    dispatcher: Dispatcher[JobDocument],
    miner_id: str,
    hardware: MinerHardware,
    terms: MinerTerms,
) -> tuple[Taker, JobRecord | None]:
    """The miner as the dispatcher sees it now, and the first pending job it may run
    that no other poll was just offered (marked as offered to it), if it may take one."""
    running = job_queries.running_count(connection, miner_id)
    taker = Taker(miner_id, hardware, terms.price_micro, terms.concurrency - running)
    if not dispatcher.may_receive(taker):
        return taker, None
    while True:
        # Enough jobs that one is not on offer elsewhere, unless the queue has no more.
        limit = len(dispatcher.offered_ids()) + 1
        rows = job_queries.next_jobs(connection, hardware, terms.price_micro, limit)
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
    hardware, _cached_terms = await miner_service.profile(runtime, miner_id)
    now = runtime.clock()
    lease_until = now + timedelta(seconds=runtime.settings.lease_seconds)

    def work(connection: Connection) -> JobRecord:
        # The miner's terms as they are now, its row locked: the price it posts at
        # this moment is the job's price, and its running jobs are counted exactly.
        terms = miner_queries.lock_terms(connection, miner_id)
        if terms is None:
            raise NotFound(f"miner {miner_id} not found", error_code="miner_not_found")
        row = job_queries.claim(connection, hardware, terms, job_id, miner_id, now, lease_until)
        if row is None:
            _explain_refused_claim(connection, job_id, miner_id, hardware, terms, now)
        return row

    row = await transaction(runtime.engine, work)
    runtime.dispatcher.claimed(job_id, miner_id)
    return job_document(row)


def _explain_refused_claim(
    connection: Connection,
    job_id: str,
    miner_id: str,
    hardware: MinerHardware,
    terms: MinerTerms,
    now: datetime,
) -> NoReturn:
    """Raise the reason a claim did not match: missing, taken, ineligible, too dear,
    the miner busy, timed out."""
    row = job_queries.get_job(connection, job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found", error_code="job_not_found")
    if row.status != JobStatus.PENDING.value:
        raise Conflict(f"job is {row.status}, not pending", error_code="already_claimed")
    if not can_run(row.model, _requirements(row), hardware):
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


def _held_job(connection: Connection, job_id: str, miner_id: str) -> JobRecord:
    row = job_queries.get_job(connection, job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found", error_code="job_not_found")
    if row.miner_id != miner_id:
        raise Conflict("this miner does not hold the job", error_code="not_lease_holder")
    return row


async def report_progress(
    runtime: Runtime, principal: Principal, job_id: str, report: ProgressReport
) -> ProgressAck:
    """Record progress and renew the lease; tell the miner to stop if the job ended."""
    require_miner(principal, report.miner_id)
    lease_until = runtime.clock() + timedelta(seconds=runtime.settings.lease_seconds)

    def work(connection: Connection) -> ProgressAck:
        progress = job_queries.record_progress(
            connection, job_id, report.miner_id, report.progress, lease_until
        )
        if progress is not None:
            return ProgressAck(
                job_id=job_id, status=JobStatus.RUNNING, progress=progress, should_stop=False
            )
        row = _held_job(connection, job_id, report.miner_id)
        return ProgressAck(
            job_id=job_id, status=JobStatus(row.status), progress=row.progress, should_stop=True
        )

    return await transaction(runtime.engine, work)


async def report_failure(
    runtime: Runtime, principal: Principal, job_id: str, report: FailureReport
) -> JobDocument:
    """A miner gives up: retryable failures requeue the job while attempts remain.

    A job ``handed_back`` by a miner that is stopping goes back to the queue and
    gets back the attempt its claim used: a miner restart must not cost the client.
    """
    require_miner(principal, report.miner_id)
    now = runtime.clock()

    def work(connection: Connection) -> JobRecord:
        row = _held_job(connection, job_id, report.miner_id)
        current = JobStatus(row.status)
        if current is not JobStatus.RUNNING:
            raise Conflict(
                f"job is {current.value}, not running", error_code=f"job_{current.value}"
            )
        if report.handed_back:
            values = _lost_attempt_values(
                JobStatus.PENDING, now, report.error, HANDED_BACK_ERROR_CODE
            )
            values["attempts"] = max(row.attempts - 1, 0)
        else:
            target = (
                status_after_lost_attempt(row.attempts, runtime.settings.max_attempts)
                if report.retryable
                else JobStatus.FAILED
            )
            values = _lost_attempt_values(target, now, report.error, "miner_error")
        # Only if this attempt still holds the job (it may have been requeued and
        # claimed by another miner since it was read).
        return _transition(
            connection, job_id, current, values, attempt=(report.miner_id, row.attempts)
        )

    updated = await transaction(runtime.engine, work)
    if updated.status == JobStatus.PENDING.value:
        offer = offer_of(updated)
        runtime.dispatcher.publish(offer)
        return offer.payload
    return job_document(updated)


def _lost_attempt_values(
    target: JobStatus, now: datetime, error: str, error_code: str
) -> dict[str, object]:
    """Column values for a running job whose attempt ended without a result."""
    if target is JobStatus.PENDING:
        return {
            "status": target.value,
            "miner_id": None,
            "started_at": None,
            "lease_expires_at": None,
            "progress": 0,
            "error": error,
            "error_code": error_code,
        }
    return {
        "status": target.value,
        "completed_at": now,
        "lease_expires_at": None,
        "error": error,
        "error_code": error_code,
    }


def result_digest(result: str) -> str:
    """SHA-256 hex of the result's UTF-8 bytes (the receipt's ``result_hash``)."""
    return text_hash(result)


async def _check_miner_signature(
    runtime: Runtime, job_id: str, job_result: JobResult, digest: str, units: int
) -> dict[str, str] | None:
    """The miner's signature object if it verifies; 422 if it does not, or if a miner
    that registered a key sent none."""
    miner_id = job_result.miner_id
    signature = job_result.miner_signature
    keys = await key_service.miner_keys(runtime, miner_id)
    if signature is None:
        if len(keys) == 0:
            return None
        # The key may have been registered through another coordinator meanwhile.
        raise VerificationFailed(
            "this miner registered a public key: completions must carry miner_signature",
            error_code="miner_signature_required",
        )
    statement = miner_statement(job_id, miner_id, digest, units)
    document = signature.model_dump()
    try:
        verify_miner_signature(statement, document, keys)
    except VerificationFailed as exc:
        if exc.error_code != "unknown_miner_key":
            raise
        # A key registered moments ago through another coordinator: read again.
        keys = await key_service.miner_keys(runtime, miner_id, fresh=True)
        verify_miner_signature(statement, document, keys)
    return document


def _issued_receipt(connection: Connection, job_id: str, miner_id: str, digest: str) -> str | None:
    """The receipt of ``job_id`` if ``miner_id`` completed it with this result."""
    row = job_queries.get_job(connection, job_id)
    if row is None or row.miner_id != miner_id or row.result_sha256 != digest:
        return None
    receipt = receipt_queries.receipt_for_job(connection, job_id)
    return None if receipt is None else str(receipt.document)


def _charged_unit_price(row: JobRecord) -> int:
    """The receipt's unit price: the miner's price at claim, which the claim allowed
    only up to the job's ``max_price`` (the bound is applied again here, in the
    client's favour, so no path can charge above what the client accepted)."""
    unit_price = int(row.unit_price_micro or 0)
    if row.max_price_micro is not None:
        unit_price = min(unit_price, int(row.max_price_micro))
    return unit_price


def _unix(moment: datetime) -> int:
    return math.floor(moment.timestamp())


async def complete(
    runtime: Runtime, principal: Principal, job_id: str, job_result: JobResult
) -> str:
    """Store the result of a job this miner holds and issue its signed receipt.

    Returns the receipt as canonical JSON text. Re-sending the same result returns
    the same receipt; a different result for a completed job is a 409.
    """
    miner_id = job_result.miner_id
    require_miner(principal, miner_id)
    # Sampled together, with nothing awaited in between: a rotation publishes the
    # new key before it switches to it and keeps the old one valid a while after
    # (see services.keys.rotate), so this receipt's date lies in its key's period.
    now = runtime.clock()
    signer = runtime.signing_key()
    digest = result_digest(job_result.result)
    usage = job_result.usage
    prompt_tokens, completion_tokens = (
        (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    )
    try:
        miner_signature = await _check_miner_signature(
            runtime, job_id, job_result, digest, prompt_tokens + completion_tokens
        )
    except VerificationFailed:
        # A re-send of a result already taken (the miner may have changed its key
        # since) gets the receipt it was issued; anything else is refused.
        issued = await read(runtime.engine, _issued_receipt, job_id, miner_id, digest)
        if issued is None:
            raise
        return issued
    receipt_id = runtime.new_id("rcpt")

    def work(connection: Connection) -> str | None:
        """The receipt, or None when the job timed out (committed as failed)."""
        row = job_queries.complete(
            connection,
            job_id,
            miner_id,
            now,
            job_result.result,
            digest,
            (prompt_tokens, completion_tokens) if usage else None,
        )
        if row is not None:
            # Raising rolls the completion back: the job stays running.
            check_usage(
                prompt=row.prompt,
                result=job_result.result,
                params=row.params,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                prompt_allowance=(
                    LEGACY_TEMPLATE_ALLOWANCE_TOKENS
                    if row.prompt_allowance_tokens is None
                    else row.prompt_allowance_tokens
                ),
            )
            terms = ReceiptTerms(
                receipt_id=receipt_id,
                job_id=job_id,
                provider=miner_id,
                client=row.client_id,
                model=row.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                unit_price_micro=_charged_unit_price(row),
                # A wall clock stepped back must not date the start after the end.
                started_at=min(_unix(row.started_at or now), _unix(now)),
                completed_at=_unix(now),
                input_hash=text_hash(row.prompt),
                result_hash=digest,
                miner_signature=miner_signature,
            )
            if terms.price_micro > MAX_SUPPLY_MICRO:
                raise ValidationFailed(
                    "the receipt's price would exceed the total AIT supply",
                    error_code="price_exceeds_supply",
                )
            signed = sign_receipt(receipt_body(terms), signer)
            document = signed.canonical.decode("utf-8")
            receipt_queries.insert_receipt(
                connection,
                receipt_id=receipt_id,
                job_id=job_id,
                client_id=row.client_id,
                provider=miner_id,
                completed_at=terms.completed_at,
                key_id=signer.key_id,
                document=document,
            )
            return document
        # Not completed by this call: say why (or repeat an identical completion).
        row = _held_job(connection, job_id, miner_id)
        current = JobStatus(row.status)
        if current is JobStatus.COMPLETED:
            if row.result_sha256 == digest:
                existing = receipt_queries.receipt_for_job(connection, job_id)
                if existing is not None:
                    return str(existing.document)  # idempotent re-send
                raise Conflict(
                    "job was completed before receipts were issued", error_code="no_receipt"
                )
            raise Conflict(
                "job was already completed with a different result",
                error_code="already_completed",
            )
        if is_terminal(current):
            raise Conflict(f"job is {current.value}", error_code=f"job_{current.value}")
        if now < row.deadline_at:
            raise Conflict("the job changed state meanwhile", error_code="job_changed")
        _transition(connection, job_id, current, _timeout_values(row, now))
        return None

    receipt = await transaction(runtime.engine, work)
    if receipt is None:
        raise Conflict("job passed its timeout before completing", error_code="job_timed_out")
    return receipt


def _timeout_values(row: JobRecord, now: datetime) -> dict[str, object]:
    return {
        "status": JobStatus.FAILED.value,
        "completed_at": now,
        "lease_expires_at": None,
        "error": f"job did not finish within its timeout of {row.timeout_seconds} seconds",
        "error_code": TIMEOUT_ERROR_CODE,
    }


# --- sweeping -----------------------------------------------------------------------


async def sweep(runtime: Runtime) -> dict[str, int]:
    """Fail timed-out jobs and requeue (or fail) jobs whose lease lapsed.

    Runs in the background every ``sweep_interval_seconds``; each change is a
    conditional update, so a miner completing at the same moment cannot be overwritten.
    """
    now = runtime.clock()
    max_attempts = runtime.settings.max_attempts

    def work(connection: Connection) -> tuple[list[str], list[JobRecord], int]:
        timed_out: list[str] = []
        requeued: list[JobRecord] = []
        failed = 0
        for row in job_queries.overdue(connection, now, SWEEP_BATCH):
            values = _timeout_values(row, now)
            if job_queries.transition(connection, row.id, JobStatus(row.status), values):
                timed_out.append(row.id)
        for row in job_queries.lapsed(connection, now, SWEEP_BATCH):
            target = status_after_lost_attempt(row.attempts, max_attempts)
            error = (
                f"miner {row.miner_id} stopped renewing its lease"
                if target is JobStatus.PENDING
                else f"lease lapsed on all {row.attempts} attempts"
            )
            values = _lost_attempt_values(target, now, error, LEASE_LAPSED_ERROR_CODE)
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
            if target is JobStatus.PENDING:
                requeued.append(updated)
            else:
                failed += 1
        return timed_out, requeued, failed

    timed_out, requeued, failed = await transaction(runtime.engine, work)
    for job_id in timed_out:
        runtime.dispatcher.release(job_id)
    for row in requeued:
        runtime.dispatcher.publish(offer_of(row))
    return {"timed_out": len(timed_out), "requeued": len(requeued), "failed": failed}
