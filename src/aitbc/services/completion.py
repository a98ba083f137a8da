"""Completing a job: the result stored, its usage checked, its receipt signed,
all in one transaction (re-sending the same result returns the same receipt)."""

from __future__ import annotations

from sqlalchemy import Connection

from aitbc.domain.canonical import sha256_hex
from aitbc.domain.jobs import JobStatus, is_terminal
from aitbc.domain.money import MAX_SUPPLY_MICRO
from aitbc.domain.payment import settle
from aitbc.domain.receipts import (
    ReceiptTerms,
    miner_statement,
    receipt_body,
    sign_receipt,
    text_hash,
    verify_miner_signature,
)
from aitbc.domain.timestamps import unix_seconds
from aitbc.domain.usage import check_usage
from aitbc.errors import Conflict, ValidationFailed, VerificationFailed
from aitbc.schemas import JobResult
from aitbc.services import keys as key_service
from aitbc.services import payment
from aitbc.services._job_steps import held_job, timeout_values, transition
from aitbc.services.auth import require_miner
from aitbc.services.events import job_event, publish, receipt_event
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import event_queries, job_queries, market_queries, receipt_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.event_queries import NewEvent
from aitbc.storage.job_queries import JobRecord

# The template allowance of jobs claimed before miners declared theirs (migration 0004).
LEGACY_TEMPLATE_ALLOWANCE_TOKENS = 512


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
    built: list[NewEvent] = []
    # The completed job's model, for the token counter (set by the unit that commits).
    completed: dict[str, str] = {}

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
                started_at=min(unix_seconds(row.started_at or now), unix_seconds(now)),
                completed_at=unix_seconds(now),
                input_hash=text_hash(row.prompt),
                result_hash=digest,
                miner_signature=miner_signature,
            )
            if terms.price_micro > MAX_SUPPLY_MICRO:
                raise ValidationFailed(
                    "the receipt's price would exceed the total AIT supply",
                    error_code="price_exceeds_supply",
                )
            body = receipt_body(terms)
            signed = sign_receipt(body, signer)
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
            timestamp = unix_seconds(now)
            hold = row.held_micro
            anchor = payment.receipt_anchor(receipt_id, signed.canonical, timestamp)
            if row.trade_id is not None and hold:
                # Paid out of the trade's escrow; the rest of the job's hold stays
                # the trade's.
                settlement = settle(hold, terms.price_micro, runtime.settings.fee_basis_points)
                payment.settle_trade_job(
                    connection,
                    client_id=row.client_id,
                    miner_id=miner_id,
                    trade_id=row.trade_id,
                    settlement=settlement,
                    anchor=anchor,
                    timestamp=timestamp,
                )
                market_queries.settle_job(
                    connection,
                    row.trade_id,
                    hold,
                    settlement.price_micro,
                    prompt_tokens + completion_tokens,
                )
            else:
                payment.settle_job(
                    connection,
                    client_id=row.client_id,
                    miner_id=miner_id,
                    job_id=job_id,
                    hold_micro=hold,
                    settlement=(
                        settle(hold, terms.price_micro, runtime.settings.fee_basis_points)
                        if hold
                        else None
                    ),
                    anchor=anchor,
                    timestamp=timestamp,
                )
            built[:] = [
                job_event(row, runtime.clock(), receipt_id=receipt_id),
                receipt_event(
                    body,
                    sha256_hex(signed.canonical),
                    anchor.id,
                    timestamp,
                ),
            ]
            event_queries.append(connection, built)
            completed["model"] = row.model
            return document
        # Not completed by this call: say why (or repeat an identical completion).
        row = held_job(connection, job_id, miner_id)
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
                "job was already completed with a different result", error_code="already_completed"
            )
        if is_terminal(current):
            raise Conflict(f"job is {current.value}", error_code=f"job_{current.value}")
        if now < row.deadline_at:
            raise Conflict("the job changed state meanwhile", error_code="job_changed")
        ended = transition(connection, job_id, current, timeout_values(row, now))  # refunds
        built[:] = [job_event(ended, runtime.clock())]
        event_queries.append(connection, built)
        return None

    receipt = await transaction(runtime.engine, work)
    runtime.streams.notify(job_id)
    if "model" in completed:
        runtime.metrics.receipts.inc()
        runtime.metrics.tokens.labels(completed["model"]).inc(completion_tokens)
    publish(runtime, built)
    if receipt is None:
        raise Conflict("job passed its timeout before completing", error_code="job_timed_out")
    return receipt
