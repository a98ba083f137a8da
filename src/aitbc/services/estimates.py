"""Cached market data behind job estimates (see ``aitbc.domain.pricing`` for the method).

Submitting a job must stay cheap, so the online miners and the recent speed of each
model are read at most once every ``REFRESH_SECONDS`` and shared by all submissions.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aitbc.domain.jobs import MinerHardware, Requirements, can_run
from aitbc.domain.pricing import ModelSpeed
from aitbc.storage import queries

REFRESH_SECONDS = 5.0
SPEED_WINDOW = timedelta(hours=1)
SPEED_SAMPLE_JOBS = 500


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """Online miners with their prices, and observed speed per model."""

    miners: tuple[tuple[MinerHardware, int], ...]
    speeds: dict[str, ModelSpeed]

    def eligible_prices(self, model: str, requirements: Requirements) -> list[int]:
        """Posted prices (µAIT per 1,000 tokens) of online miners able to run the job."""
        return [price for hw, price in self.miners if can_run(model, requirements, hw)]


@dataclass
class EstimateCache:
    """The latest :class:`MarketSnapshot` and when it was taken."""

    snapshot: MarketSnapshot | None = None
    taken_at: datetime | None = None
    speeds_window: timedelta = field(default=SPEED_WINDOW)

    async def get(
        self,
        sessions: async_sessionmaker[AsyncSession],
        now: datetime,
        online_after_seconds: float,
    ) -> MarketSnapshot:
        """The snapshot, refreshed from the database when older than ``REFRESH_SECONDS``."""
        if (
            self.snapshot is not None
            and self.taken_at is not None
            and (now - self.taken_at).total_seconds() < REFRESH_SECONDS
        ):
            return self.snapshot
        async with sessions() as session:
            return await self._refresh(session, now, online_after_seconds)

    async def _refresh(
        self, session: AsyncSession, now: datetime, online_after_seconds: float
    ) -> MarketSnapshot:
        miners = await queries.online_miners(session, now - timedelta(seconds=online_after_seconds))
        rows = await queries.recent_completions(
            session, now - self.speeds_window, SPEED_SAMPLE_JOBS
        )
        tokens: dict[str, int] = defaultdict(int)
        run_seconds: dict[str, float] = defaultdict(float)
        waits: dict[str, list[float]] = defaultdict(list)
        for model, completion_tokens, created_at, started_at, completed_at in rows:
            tokens[model] += completion_tokens
            run_seconds[model] += max((completed_at - started_at).total_seconds(), 0.0)
            waits[model].append(max((started_at - created_at).total_seconds(), 0.0))
        self.snapshot = MarketSnapshot(
            miners=tuple(
                (
                    MinerHardware(
                        models=frozenset(m.capabilities),
                        gpu_name=m.gpu_name,
                        gpu_memory_gb=m.gpu_memory_gb,
                        gpu_count=m.gpu_count,
                    ),
                    m.price_micro,
                )
                for m in miners
            ),
            speeds={
                model: ModelSpeed(
                    completion_tokens=tokens[model],
                    run_seconds=run_seconds[model],
                    median_wait_seconds=statistics.median(waits[model]),
                )
                for model in tokens
            },
        )
        self.taken_at = now
        return self.snapshot

    def invalidate(self) -> None:
        """Forget the snapshot (a miner registered or changed its price)."""
        self.snapshot = None
