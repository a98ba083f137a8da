"""Client job use cases: submission, reading, listing, history, cancel, download.

The rules live in ``aitbc.domain.jobs``. Each call is one transaction through
``aitbc.storage.job_queries``, whose conditional statements make the database the
referee of races (a cancellation racing a completion: exactly one matches). The
miner side is in ``services.work``, completion in ``services.completion``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection

from aitbc.domain import pricing
from aitbc.domain.jobs import JobStatus, Requirements, deadline, ensure_transition, within_price
from aitbc.domain.money import to_ait, to_micro
from aitbc.domain.payment import job_hold_micro
from aitbc.domain.timestamps import unix_seconds
from aitbc.errors import Conflict, InsufficientFunds, InvalidRequest, PayloadTooLarge
from aitbc.schemas import JobRequest
from aitbc.services import files as file_service
from aitbc.services import marketplace, payment
from aitbc.services._job_steps import load_visible_job, offer_of, transition
from aitbc.services.auth import require_client, require_role
from aitbc.services.events import job_event, publish
from aitbc.services.runtime import Principal, Runtime
from aitbc.services.views import JobDocument, job_document, job_list_document
from aitbc.storage import event_queries, job_queries, ledger_queries, queries
from aitbc.storage.db import read, transaction
from aitbc.storage.event_queries import NewEvent
from aitbc.storage.job_queries import JobRecord


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
    trade = None
    if request.trade_id is not None:
        trade = await marketplace.trade_for_job(runtime, client_id, request, model, now)
        max_price_micro = int(trade.price_micro)
        # The job cannot outlive the capacity it runs on.
        timeout_seconds = max(
            1, min(timeout_seconds, int((trade.expires_at - now).total_seconds()))
        )
    else:
        max_price_micro = to_micro(
            settings.default_max_price if request.max_price is None else request.max_price
        )
    eligible = list(market.eligible_prices(model, requirements))
    affordable = [price for price in eligible if within_price(max_price_micro, price)]
    if trade is not None:
        eligible = affordable = [max_price_micro]
    job_id = runtime.new_id("job")
    hold_micro = job_hold_micro(prompt, max_tokens, max_price_micro)
    values = {
        "id": job_id,
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
            pricing.estimate_units(prompt, max_tokens), affordable
        ),
        "estimate_note": _estimate_note(model, eligible, affordable, max_price_micro),
        "estimated_time_seconds": pricing.estimate_time_seconds(
            max_tokens, market.speeds.get(model)
        ),
        "max_price_micro": max_price_micro,
        "held_micro": hold_micro,
        "trade_id": None if trade is None else trade.trade_id,
        "target_miner_id": None if trade is None else trade.miner_id,
    }

    built: list[NewEvent] = []

    def work(connection: Connection) -> JobRecord:
        # The hold first: a client whose balance is short gets 402 and nothing is
        # written (the transaction rolls back with the error). A trade's job holds
        # part of the trade's escrow instead (409 when the trade has not that much).
        if trade is not None:
            marketplace.reserve_for_job(connection, trade, client_id, hold_micro, now)
        else:
            payment.hold_in_escrow(connection, client_id, job_id, hold_micro, unix_seconds(now))
        row = job_queries.insert_job(connection, values)
        built[:] = [job_event(row, runtime.clock())]
        event_queries.append(connection, built)
        return row

    try:
        row = await transaction(runtime.engine, work)
    except InsufficientFunds:
        raise await _short_of_funds(runtime, client_id, hold_micro) from None
    publish(runtime, built)
    offer = offer_of(row)
    runtime.dispatcher.publish(offer)
    return offer.payload


def _estimate_note(
    model: str, eligible: list[int], affordable: list[int], max_price_micro: int
) -> str | None:
    """Why a job has no cost estimate (no online miner could take it now), or None."""
    if affordable:
        return None
    if not eligible:
        return (
            f"no online miner serves model {model!r} with the hardware the job requires; "
            "it stays pending until one does"
        )
    return (
        f"no online miner serves model {model!r} at or below the job's max_price of "
        f"{to_ait(max_price_micro)} AIT per 1,000 tokens (the lowest online is "
        f"{to_ait(min(eligible))} AIT); it stays pending until one does"
    )


async def _short_of_funds(runtime: Runtime, client_id: str, hold_micro: int) -> InsufficientFunds:
    """The 402 for a job its client cannot cover, saying by how much."""
    balance = await read(runtime.engine, ledger_queries.account, client_id)
    available = balance.balance_micro if balance else 0
    return InsufficientFunds(
        f"this job may cost up to {to_ait(hold_micro)} AIT (its prompt and max_tokens at "
        f"its max_price), held until it ends; the balance is {to_ait(available)} AIT",
        error_code="insufficient_funds",
    )


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
    built: list[NewEvent] = []

    def work(connection: Connection) -> JobRecord:
        row = load_visible_job(connection, principal, job_id)
        current = JobStatus(row.status)
        ensure_transition(current, JobStatus.CANCELLED)
        updated = transition(
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
        built[:] = [job_event(updated, runtime.clock())]
        event_queries.append(connection, built)
        return updated

    updated = await transaction(runtime.engine, work)
    runtime.dispatcher.release(job_id)
    runtime.streams.notify(job_id)
    publish(runtime, built)
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
