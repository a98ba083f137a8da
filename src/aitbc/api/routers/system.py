"""System endpoints: health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from aitbc.api.deps import RuntimeDep
from aitbc.api.rate_limits import RateLimiter
from aitbc.schemas import Health
from aitbc.services import health as health_service

router = APIRouter(tags=["System"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Liveness, version, a database round trip and where rate limits are counted; 503
    when the database is unreachable."""
    limiter: RateLimiter = request.app.state.rate_limiter
    # Asks Redis at most every few seconds, so probes see it leave and come back.
    await limiter.refresh()
    body = await health_service.check(runtime, limiter.health())
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)
