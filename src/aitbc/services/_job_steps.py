"""Steps shared by the job use cases (``jobs``, ``work``, ``completion`` and the
sweeper): conditional transitions, the lease holder's view of a job, the column
values of a lost attempt or a timeout, and the dispatcher's offer of a row."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from aitbc.domain.jobs import JobStatus, Requirements
from aitbc.domain.timestamps import unix_seconds
from aitbc.errors import Conflict, NotFound
from aitbc.services import payment
from aitbc.services.dispatch import Offer
from aitbc.services.runtime import Principal
from aitbc.services.views import JobDocument, job_document
from aitbc.storage import job_queries, market_queries
from aitbc.storage.job_queries import JobRecord

TIMEOUT_ERROR_CODE = "timeout"
LEASE_LAPSED_ERROR_CODE = "lease_expired"
HANDED_BACK_ERROR_CODE = "handed_back"
_UNPAID_ENDS = frozenset({JobStatus.FAILED.value, JobStatus.CANCELLED.value})


def requirements_of(row: JobRecord) -> Requirements:
    """The hardware a job needs, as the domain's matching rules read it."""
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
        requirements=requirements_of(row),
        payload=job_document(row),
        max_price_micro=row.max_price_micro,
        target_miner_id=row.target_miner_id,
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


def transition(
    connection: Connection,
    job_id: str,
    expected: JobStatus,
    values: Mapping[str, Any],
    attempt: tuple[str | None, int] | None = None,
) -> JobRecord:
    """Apply ``values`` only if the job is still in ``expected`` state (else 409);
    a job that ends without a result gets its hold back in the same transaction."""
    row = job_queries.transition(connection, job_id, expected, values, attempt=attempt)
    if row is None:
        raise Conflict("the job changed state meanwhile; try again", error_code="job_changed")
    refund_if_ended(connection, row)
    return row


def refund_if_ended(connection: Connection, row: JobRecord) -> None:
    """Refund the whole hold of a job that a transition just ended without a result
    (cancelled or failed). Only the transition that ended the job matched, so this
    runs once per job."""
    if row.status in _UNPAID_ENDS and row.held_micro:
        if row.trade_id is not None:
            # A trade's job held part of the trade's escrow: it is the trade's again.
            market_queries.release(connection, row.trade_id, row.held_micro)
            return
        payment.refund_from_escrow(
            connection, row.client_id, row.id, row.held_micro, unix_seconds(row.completed_at)
        )


def held_job(connection: Connection, job_id: str, miner_id: str) -> JobRecord:
    """The job as its lease holder sees it: 404 if missing, 409 if another miner holds it."""
    row = job_queries.get_job(connection, job_id)
    if row is None:
        raise NotFound(f"job {job_id} not found", error_code="job_not_found")
    if row.miner_id != miner_id:
        raise Conflict("this miner does not hold the job", error_code="not_lease_holder")
    return row


def lost_attempt_values(
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


def timeout_values(row: JobRecord, now: datetime) -> dict[str, object]:
    """Column values for a job failed by its timeout."""
    return {
        "status": JobStatus.FAILED.value,
        "completed_at": now,
        "lease_expires_at": None,
        "error": f"job did not finish within its timeout of {row.timeout_seconds} seconds",
        "error_code": TIMEOUT_ERROR_CODE,
    }
