"""Job statements in SQLAlchemy Core, for the hot paths of the lifecycle.

Each lifecycle step is one conditional statement (``UPDATE ... WHERE <the state it
needs> RETURNING *``), so the database decides races and a successful step costs
one round trip. Statements are built once (per miner hardware where they depend on
it) and reused with bound parameters. Helpers are plain functions over a sync
``Connection`` (services run a whole unit of work in one go, see
``aitbc.storage.db.transaction``) and never commit: the service owns the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)

from aitbc.domain.jobs import JobStatus, MinerHardware, MinerTerms
from aitbc.storage.models import Job, Miner

JOBS = cast(Table, Job.__table__)
MINERS = cast(Table, Miner.__table__)
C = JOBS.c
JobRecord = Row[Any]
HARDWARE_CACHE_SIZE = 1024


def status_is(*statuses: JobStatus) -> ColumnElement[bool]:
    """``status = 'x'`` or ``status IN ('x', 'y')`` with the values written into the
    SQL, as the partial indexes' conditions are: with bound parameters the planners
    could not tell that an index applies."""
    values: list[ColumnElement[Any]] = [literal_column(f"'{status.value}'") for status in statuses]
    return C.status == values[0] if len(values) == 1 else C.status.in_(values)


def _like_literal(column: ColumnElement[Any]) -> ColumnElement[str]:
    """``column`` with LIKE's wildcards escaped (escape character "/")."""
    escaped = func.replace(column, "/", "//")
    escaped = func.replace(escaped, "%", "/%")
    return func.replace(escaped, "_", "/_")


def dispatch_filter(hardware: MinerHardware) -> ColumnElement[bool]:
    """SQL condition: pending jobs ``hardware`` may run (mirrors ``domain.jobs.can_run``)."""
    gpu_name = (hardware.gpu_name or "").lower()
    return and_(
        status_is(JobStatus.PENDING),
        # One bound parameter per model (not an "expanding" IN list, which makes
        # SQLAlchemy re-render the statement on every execution).
        C.model.in_([literal(model) for model in sorted(hardware.models)]),
        # A job of a marketplace trade runs only on the trade's miner.
        or_(C.target_miner_id.is_(None), C.target_miner_id == bindparam("miner")),
        C.req_gpu_count <= hardware.gpu_count,
        C.req_min_vram_gb <= (hardware.gpu_memory_gb or 0.0),
        or_(
            C.req_gpu_type.is_(None),
            literal(gpu_name).contains(_like_literal(C.req_gpu_type), escape="/"),
        ),
    )


# The polling miner's posted price, µAIT per 1,000 units.
_PRICE = bindparam("price", type_=BigInteger())
_HELD = JOBS.alias("held")
# The running jobs of the miner bound as ``miner``, counted over an alias: the claim
# updates the same table, and an unaliased subquery would be correlated with the row
# being claimed.
_HELD_BY_MINER = (
    select(func.count())
    .select_from(_HELD)
    .where(_HELD.c.status == literal_column("'running'"), _HELD.c.miner_id == bindparam("miner"))
    .scalar_subquery()
)
# The claimer's terms as they are when it claims (its row, in the claim's statement).
_CLAIMER_PRICE = (
    select(MINERS.c.price_micro).where(MINERS.c.id == bindparam("claimer")).scalar_subquery()
)
_CLAIMER_CONCURRENCY = (
    select(MINERS.c.concurrency).where(MINERS.c.id == bindparam("claimer")).scalar_subquery()
)


def price_filter(price: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL condition: the job accepts ``price`` (µAIT per 1,000 units; mirrors
    ``domain.jobs.within_price``), or it is a trade's job, which its miner runs at the
    trade's price whatever it posts now (the dispatch filter names the miner)."""
    return or_(
        C.max_price_micro.is_(None), C.max_price_micro >= price, C.target_miner_id.is_not(None)
    )


@lru_cache(maxsize=HARDWARE_CACHE_SIZE)
def next_jobs_statement(hardware: MinerHardware) -> Select[Any]:
    return (
        select(JOBS, _HELD_BY_MINER.label("poller_running"))
        .where(dispatch_filter(hardware), price_filter(_PRICE))
        .order_by(C.priority.desc(), C.created_at, C.id)
        .limit(bindparam("limit"))
    )


def next_jobs(
    connection: Connection, hardware: MinerHardware, miner_id: str, price_micro: int, limit: int
) -> list[JobRecord]:
    """Up to ``limit`` pending jobs ``hardware`` may run at ``price_micro``, in dispatch
    order (highest priority, then oldest), each row also carrying ``poller_running``:
    how many jobs ``miner_id`` runs now (one statement for both on the hot path)."""
    result = connection.execute(
        next_jobs_statement(hardware), {"limit": limit, "price": price_micro, "miner": miner_id}
    )
    return list(result.all())


def running_count_statement() -> Select[Any]:
    """How many jobs the miner bound as ``miner`` runs now (when no pending row
    carries the count)."""
    return select(_HELD_BY_MINER)


_RUNNING_COUNT = running_count_statement()


def running_count(connection: Connection, miner_id: str) -> int:
    """See :func:`running_count_statement`."""
    return int(connection.execute(_RUNNING_COUNT, {"miner": miner_id}).scalar_one())


@lru_cache(maxsize=HARDWARE_CACHE_SIZE)
def _claim_statement(hardware: MinerHardware) -> Update:
    return (
        update(JOBS)
        .where(
            C.id == bindparam("job_id"),
            dispatch_filter(hardware),
            # The price the claimer posts now is one the client accepts...
            price_filter(_CLAIMER_PRICE),
            C.deadline_at > bindparam("now"),
            # ...and it holds fewer jobs than it declared it runs at once.
            _CLAIMER_CONCURRENCY > _HELD_BY_MINER,
        )
        .values(
            status=JobStatus.RUNNING.value,
            miner_id=bindparam("claimer"),
            started_at=bindparam("now"),
            lease_expires_at=bindparam("lease_until"),
            attempts=C.attempts + 1,
            progress=0,
            # A new attempt starts clean; an earlier attempt's error no longer applies.
            error=None,
            error_code=None,
            # The price the miner posts now is the price of this job, whatever it
            # posts later; a trade's job is priced as the trade was (its max_price).
            unit_price_micro=case((C.trade_id.is_(None), _CLAIMER_PRICE), else_=C.max_price_micro),
            prompt_allowance_tokens=_allowance_by_model(hardware),
        )
        .returning(JOBS)
    )


def claim(
    connection: Connection,
    hardware: MinerHardware,
    terms: MinerTerms,
    job_id: str,
    miner_id: str,
    now: datetime,
    lease_until: datetime,
) -> JobRecord | None:
    """Make a pending job this miner may run at the price it posts now ``running``
    under its lease, if it holds fewer jobs than its concurrency; None otherwise.

    The price and concurrency are read from the miner's row by the statement itself.
    ``terms`` gives the template allowances the miner declared (its registration
    as last read). On PostgreSQL the miner's row is locked first, so two claims by
    one miner are decided one after the other: each counts the other's committed
    claim (one statement's snapshot would not). SQLite has one writer at a time.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(_LOCK_CLAIMER, {"claimer": miner_id})
    parameters: dict[str, Any] = {
        "job_id": job_id,
        "claimer": miner_id,
        "miner": miner_id,
        "now": now,
        "lease_until": lease_until,
    }
    for index, model in enumerate(sorted(hardware.models)):
        parameters[f"allowance_{index}"] = terms.prompt_allowance(model)
    result = connection.execute(_claim_statement(hardware), parameters)
    return result.first()


_LOCK_CLAIMER = select(MINERS.c.id).where(MINERS.c.id == bindparam("claimer")).with_for_update()


def _allowance_by_model(hardware: MinerHardware) -> ColumnElement[Any]:
    """The claimer's template allowance for the job's model, one bound parameter per
    model it serves (the job's model is one of them, or the claim does not match)."""
    return case(
        *[
            (C.model == literal(model), bindparam(f"allowance_{index}", type_=Integer()))
            for index, model in enumerate(sorted(hardware.models))
        ],
        else_=None,
    )


_COMPLETE = (
    update(JOBS)
    .where(
        C.id == bindparam("job_id"),
        C.status == JobStatus.RUNNING.value,
        C.miner_id == bindparam("holder"),
        C.deadline_at > bindparam("now"),
    )
    .values(
        status=JobStatus.COMPLETED.value,
        result=bindparam("result_text"),
        result_sha256=bindparam("digest"),
        completed_at=bindparam("now"),
        lease_expires_at=None,
        progress=100,
        error=None,
        error_code=None,
        prompt_tokens=bindparam("usage_prompt"),
        completion_tokens=bindparam("usage_completion"),
    )
    .returning(JOBS)
)


def complete(
    connection: Connection,
    job_id: str,
    miner_id: str,
    now: datetime,
    result: str,
    digest: str,
    usage: tuple[int, int] | None,
) -> JobRecord | None:
    """Store the result of a running job held by ``miner_id`` before its deadline."""
    rows = connection.execute(
        _COMPLETE,
        {
            "job_id": job_id,
            "holder": miner_id,
            "now": now,
            "result_text": result,
            "digest": digest,
            "usage_prompt": usage[0] if usage else None,
            "usage_completion": usage[1] if usage else None,
        },
    )
    record: JobRecord | None = rows.first()
    return record


_PROGRESS = (
    update(JOBS)
    .where(
        C.id == bindparam("job_id"),
        C.status == JobStatus.RUNNING.value,
        C.miner_id == bindparam("holder"),
    )
    .values(
        progress=case(
            (C.progress > bindparam("reported"), C.progress), else_=bindparam("reported")
        ),
        lease_expires_at=bindparam("lease_until"),
    )
    .returning(C.progress, C.attempts, C.client_id)
)


def record_progress(
    connection: Connection, job_id: str, miner_id: str, progress: int, lease_until: datetime
) -> tuple[int, int, str] | None:
    """Raise a running job's progress (never lower it) and renew its lease; its
    progress, attempt number and client, or None when this miner does not run it."""
    row = (
        connection.execute(
            _PROGRESS,
            {
                "job_id": job_id,
                "holder": miner_id,
                "reported": progress,
                "lease_until": lease_until,
            },
        )
    ).first()
    return None if row is None else (int(row.progress), int(row.attempts), str(row.client_id))


_INSERT = insert(JOBS).returning(JOBS)


def insert_job(connection: Connection, values: Mapping[str, Any]) -> JobRecord:
    """Insert a job (``values`` are bound parameters) and return it as stored."""
    record: JobRecord = (connection.execute(_INSERT, dict(values))).one()
    return record


def get_job(connection: Connection, job_id: str) -> JobRecord | None:
    """One job by id."""
    record: JobRecord | None = (connection.execute(select(JOBS).where(C.id == job_id))).first()
    return record


def transition(
    connection: Connection,
    job_id: str,
    expected: JobStatus,
    values: Mapping[str, Any],
    *,
    attempt: tuple[str | None, int] | None = None,
    lease_lapsed_by: datetime | None = None,
) -> JobRecord | None:
    """Apply ``values`` if the job is still ``expected``; the updated job or None.

    ``attempt`` (miner id, attempt number) also requires the job to be held by that
    same attempt, and ``lease_lapsed_by`` its lease to have run out by then: the job
    may have been renewed, requeued or reclaimed since the caller read it.
    """
    conditions = [C.id == job_id, C.status == expected.value]
    if attempt is not None:
        conditions += [C.miner_id == attempt[0], C.attempts == attempt[1]]
    if lease_lapsed_by is not None:
        conditions.append(C.lease_expires_at <= lease_lapsed_by)
    result = connection.execute(update(JOBS).where(*conditions).values(**values).returning(JOBS))
    record: JobRecord | None = result.first()
    return record


def fetch_page(
    connection: Connection,
    *,
    client_id: str | None = None,
    miner_id: str | None = None,
    status: JobStatus | None = None,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
    limit: int,
    offset: int,
) -> tuple[Sequence[JobRecord], int]:
    """A page of jobs (newest first) matching every filter given, and how many match."""
    conditions: list[ColumnElement[bool]] = []
    if client_id is not None:
        conditions.append(C.client_id == client_id)
    if miner_id is not None:
        conditions.append(C.miner_id == miner_id)
    if status is not None:
        conditions.append(C.status == status.value)
    if created_from is not None:
        conditions.append(C.created_at >= created_from)
    if created_before is not None:
        conditions.append(C.created_at < created_before)
    page = (
        select(JOBS)
        .where(*conditions)
        .order_by(C.created_at.desc(), C.id.desc())
        .limit(limit)
        .offset(offset)
    )
    count = select(func.count()).select_from(JOBS).where(*conditions)
    rows = (connection.execute(page)).all()
    total = (connection.execute(count)).scalar_one()
    return rows, int(total)


def renew_leases(
    connection: Connection, miner_id: str, lease_until: datetime, job_ids: Collection[str]
) -> None:
    """See :func:`renew_leases_statement`; nothing to do for no jobs."""
    if job_ids:
        connection.execute(renew_leases_statement(miner_id, lease_until, job_ids))


def statuses(connection: Connection, job_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
    """``{job_id: (status, miner_id)}`` for the jobs that exist among ``job_ids``."""
    rows = connection.execute(select(C.id, C.status, C.miner_id).where(C.id.in_(list(job_ids))))
    return {row.id: (row.status, row.miner_id) for row in rows}


def overdue_statement(now: datetime, limit: int) -> Select[Any]:
    """Up to ``limit`` unfinished jobs past their deadline, earliest first."""
    return (
        select(JOBS)
        .where(status_is(JobStatus.PENDING, JobStatus.RUNNING), C.deadline_at <= now)
        .order_by(C.deadline_at)
        .limit(limit)
    )


def lapsed_statement(now: datetime, limit: int) -> Select[Any]:
    """Up to ``limit`` running jobs whose lease has run out, longest lapsed first."""
    return (
        select(JOBS)
        .where(status_is(JobStatus.RUNNING), C.lease_expires_at <= now)
        .order_by(C.lease_expires_at)
        .limit(limit)
    )


def renew_leases_statement(
    miner_id: str, lease_until: datetime, job_ids: Collection[str]
) -> Update:
    """Extend the leases of those of ``job_ids`` (the jobs the miner says it is still
    running) that ``miner_id`` does hold and that are running."""
    return (
        update(JOBS)
        .where(C.miner_id == miner_id, status_is(JobStatus.RUNNING), C.id.in_(list(job_ids)))
        .values(lease_expires_at=lease_until)
    )


def overdue(connection: Connection, now: datetime, limit: int) -> Sequence[JobRecord]:
    """See :func:`overdue_statement`."""
    return connection.execute(overdue_statement(now, limit)).all()


def lapsed(connection: Connection, now: datetime, limit: int) -> Sequence[JobRecord]:
    """See :func:`lapsed_statement`."""
    return connection.execute(lapsed_statement(now, limit)).all()
