"""Service health: version and whether the database answers."""

from __future__ import annotations

from aitbc import __version__
from aitbc.schemas import Health
from aitbc.services.runtime import Runtime
from aitbc.storage import db


async def check(runtime: Runtime) -> Health:
    """``ok`` when the database answers a trivial query, ``degraded`` when it does not."""
    database_ok = await db.ping(runtime.engine)
    return Health(
        status="ok" if database_ok else "degraded",
        version=__version__,
        database="ok" if database_ok else "error",
    )
