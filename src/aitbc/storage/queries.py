"""Query helpers on an open session. They never commit: the calling service does."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date, datetime, time, timedelta

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from aitbc.domain.jobs import JobStatus
from aitbc.domain.jobs import MinerHardware as Hardware
from aitbc.storage.models import ApiKey, Job, Miner

UTC_MIDNIGHT = time(0, 0)


def _like_literal(
    column: ColumnElement[str | None] | InstrumentedAttribute[str | None],
) -> ColumnElement[str]:
    """``column`` with LIKE's wildcards escaped (escape character "/")."""
    escaped = func.replace(column, "/", "//")
    escaped = func.replace(escaped, "%", "/%")
    return func.replace(escaped, "_", "/_")


def dispatch_filter(hardware: Hardware) -> ColumnElement[bool]:
    """SQL condition: pending jobs ``hardware`` may run (mirrors ``domain.jobs.can_run``)."""
    gpu_name = (hardware.gpu_name or "").lower()
    return and_(
        Job.status == JobStatus.PENDING.value,
        Job.model.in_(sorted(hardware.models)),
        Job.req_gpu_count <= hardware.gpu_count,
        Job.req_min_vram_gb <= (hardware.gpu_memory_gb or 0.0),
        or_(
            Job.req_gpu_type.is_(None),
            literal(gpu_name).contains(_like_literal(Job.req_gpu_type), escape="/"),
        ),
    )


async def next_jobs_for(
    session: AsyncSession, hardware: Hardware, exclude_ids: Collection[str], limit: int
) -> Sequence[Job]:
    """Up to ``limit`` pending jobs ``hardware`` may run, in dispatch order:
    highest priority, then oldest."""
    query = select(Job).where(dispatch_filter(hardware))
    if exclude_ids:
        query = query.where(Job.id.not_in(list(exclude_ids)))
    query = query.order_by(Job.priority.desc(), Job.created_at, Job.id).limit(limit)
    return (await session.scalars(query)).all()


def jobs_page(query: Select[Job], limit: int, offset: int) -> tuple[Select[Job], Select[int]]:
    """A page query (newest first) and its total-count query for a filtered job query."""
    count = select(func.count()).select_from(query.order_by(None).subquery())
    page = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    return page, count


async def fetch_page(
    session: AsyncSession, query: Select[Job], limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    """Run a page query: the jobs and the total matching."""
    page, count = jobs_page(query, limit, offset)
    jobs = (await session.scalars(page)).all()
    total = (await session.execute(count)).scalar_one()
    return jobs, total


def day_range(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00 UTC, day after end 00:00 UTC): ``end`` is inclusive."""
    from datetime import UTC

    upper = (
        datetime.max.replace(tzinfo=UTC)
        if end == date.max
        else datetime.combine(end + timedelta(days=1), UTC_MIDNIGHT, tzinfo=UTC)
    )
    return datetime.combine(start, UTC_MIDNIGHT, tzinfo=UTC), upper


async def count_jobs_by_status(session: AsyncSession) -> dict[str, int]:
    """How many jobs are in each state."""
    rows = await session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: count for status, count in rows}


async def completed_counts_by_miner(session: AsyncSession) -> dict[str, int]:
    """Completed jobs per miner."""
    rows = await session.execute(
        select(Job.miner_id, func.count())
        .where(Job.status == JobStatus.COMPLETED.value)
        .group_by(Job.miner_id)
    )
    return {miner_id: count for miner_id, count in rows if miner_id is not None}


async def renew_leases(
    session: AsyncSession, miner_id: str, lease_expires_at: datetime, job_ids: Collection[str]
) -> None:
    """Extend the leases of ``miner_id``'s running jobs (all, or those in ``job_ids``)."""
    query = update(Job).where(Job.miner_id == miner_id, Job.status == JobStatus.RUNNING.value)
    if job_ids:
        query = query.where(Job.id.in_(list(job_ids)))
    await session.execute(query.values(lease_expires_at=lease_expires_at))


async def online_miners(session: AsyncSession, seen_since: datetime) -> Sequence[Miner]:
    """Miners that heartbeated (or registered) since ``seen_since`` and are not draining."""
    return (
        await session.scalars(
            select(Miner).where(
                Miner.status != "offline",
                or_(
                    Miner.last_heartbeat_at >= seen_since,
                    and_(Miner.last_heartbeat_at.is_(None), Miner.registered_at >= seen_since),
                ),
            )
        )
    ).all()


async def api_key(session: AsyncSession, key_hash: str) -> ApiKey | None:
    """The stored key with this hash, if any."""
    return await session.get(ApiKey, key_hash)
