"""Operator views: miners, all jobs, system figures, client keys."""

from __future__ import annotations

from datetime import timedelta

from aitbc.domain.jobs import JobStatus
from aitbc.schemas import AdminStats, Miner
from aitbc.services.auth import require_role
from aitbc.services.runtime import Principal, Runtime
from aitbc.services.views import miner_view
from aitbc.storage import queries


async def list_miners(runtime: Runtime, principal: Principal) -> list[Miner]:
    """Every registered miner with its liveness and completed-job count."""
    require_role(principal, "admin")
    async with runtime.sessions() as session:
        miners = await queries.all_miners(session)
        completed = await queries.completed_counts_by_miner(session)
    return [miner_view(miner, completed.get(miner.id, 0)) for miner in miners]


async def stats(runtime: Runtime, principal: Principal) -> AdminStats:
    """Jobs by status, queue depth, online miners and completions in the last minute."""
    require_role(principal, "admin")
    now = runtime.clock()
    settings = runtime.settings
    async with runtime.sessions() as session:
        by_status = await queries.count_jobs_by_status(session)
        online = await queries.online_miners(
            session, now - timedelta(seconds=settings.miner_offline_after_seconds)
        )
        total_miners = await queries.count_miners(session)
        completed_last_minute = await queries.count_completed_since(
            session, now - timedelta(minutes=1)
        )
    full = {status.value: by_status.get(status.value, 0) for status in JobStatus}
    return AdminStats(
        jobs_by_status=full,
        total_jobs=sum(full.values()),
        queue_depth=full[JobStatus.PENDING.value],
        running_jobs=full[JobStatus.RUNNING.value],
        online_miners=len(online),
        total_miners=total_miners,
        completed_last_minute=completed_last_minute,
    )
