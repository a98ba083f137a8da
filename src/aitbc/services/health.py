"""Service health: version, whether the database answers, where rate limits count."""

from __future__ import annotations

from aitbc import __version__
from aitbc.schemas import Health, RateLimitHealth
from aitbc.services.runtime import Runtime
from aitbc.storage import db


async def check(runtime: Runtime, rate_limits: RateLimitHealth) -> Health:
    """``ok`` when the database answers a trivial query, ``degraded`` when it does not.

    Rate limits counted in process while their Redis is away leave the service ``ok``
    (it serves, and a load balancer must not take it out); ``rate_limits`` says so.
    """
    database_ok = await db.ping(runtime.engine)
    return Health(
        status="ok" if database_ok else "degraded",
        version=__version__,
        database="ok" if database_ok else "error",
        rate_limits=rate_limits,
    )
