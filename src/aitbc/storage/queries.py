"""ORM query helpers on an open session (accounts, miners, statistics). They never
commit: the calling service does. Job lifecycle statements are in ``job_queries``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from aitbc.domain.jobs import JobStatus
from aitbc.storage.job_queries import status_is
from aitbc.storage.models import ApiKey, Job, Miner

UTC_MIDNIGHT = time(0, 0)


def day_range(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00 UTC, day after end 00:00 UTC): ``end`` is inclusive."""
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


async def online_miners(session: AsyncSession, seen_since: datetime) -> Sequence[Miner]:
    """Miners that heartbeated (or registered) since ``seen_since`` and take work
    (online or busy; not draining or offline)."""
    return (
        await session.scalars(
            select(Miner).where(
                Miner.status.in_(("online", "busy")),
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


async def recent_completions(
    session: AsyncSession, since: datetime, limit: int
) -> Sequence[tuple[str, int, datetime, datetime, datetime]]:
    """``(model, completion_tokens, created_at, started_at, completed_at)`` of up to
    ``limit`` jobs completed with metered usage since ``since``, newest first."""
    rows = await session.execute(
        select(Job.model, Job.completion_tokens, Job.created_at, Job.started_at, Job.completed_at)
        .where(
            status_is(JobStatus.COMPLETED),
            Job.completed_at >= since,
            Job.completion_tokens.is_not(None),
            Job.started_at.is_not(None),
        )
        .order_by(Job.completed_at.desc())
        .limit(limit)
    )
    return [tuple(row) for row in rows]  # type: ignore[misc]


async def count_completed_since(session: AsyncSession, since: datetime) -> int:
    """Jobs completed since ``since``."""
    query = select(func.count(Job.id)).where(
        status_is(JobStatus.COMPLETED), Job.completed_at >= since
    )
    return int((await session.execute(query)).scalar_one())


async def count_miners(session: AsyncSession) -> int:
    """Registered miners."""
    return int((await session.execute(select(func.count(Miner.id)))).scalar_one())


async def all_miners(session: AsyncSession) -> Sequence[Miner]:
    """Every registered miner, by id."""
    return (await session.scalars(select(Miner).order_by(Miner.id))).all()


def job_counts_and_online_miners(
    connection: Connection, now: datetime, offline_after_seconds: float
) -> tuple[dict[str, int], int]:
    """Jobs per status and how many miners take work now (``online_miners``'s rule),
    in a unit of work (the metrics scrape)."""
    counts = {
        status: int(count)
        for status, count in connection.execute(
            select(Job.status, func.count()).group_by(Job.status)
        )
    }
    seen_since = now - timedelta(seconds=offline_after_seconds)
    online = connection.execute(
        select(func.count())
        .select_from(Miner)
        .where(
            Miner.status.in_(("online", "busy")),
            or_(
                Miner.last_heartbeat_at >= seen_since,
                and_(Miner.last_heartbeat_at.is_(None), Miner.registered_at >= seen_since),
            ),
        )
    ).scalar_one()
    return counts, int(online)
