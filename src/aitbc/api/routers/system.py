"""System endpoints: health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from aitbc import __version__
from aitbc.api.deps import RuntimeDep
from aitbc.schemas import Health

router = APIRouter(tags=["System"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(runtime: RuntimeDep) -> JSONResponse:
    """Liveness, version and a database round trip; 503 when the database is unreachable."""
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        database = "ok"
    except Exception:  # any driver error means "not healthy", never a 500
        database = "error"
    body = Health(
        status="ok" if database == "ok" else "degraded", version=__version__, database=database
    )
    return JSONResponse(body.model_dump(), status_code=200 if database == "ok" else 503)
