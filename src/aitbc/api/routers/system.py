"""System endpoints: health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from aitbc.api.deps import OptionalPrincipalDep, RuntimeDep
from aitbc.api.rate_limits import RateLimiter
from aitbc.schemas import Health
from aitbc.services import health as health_service
from aitbc.services import metrics as metrics_service

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


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(
    request: Request, runtime: RuntimeDep, principal: OptionalPrincipalDep
) -> Response:
    """This process's metrics in Prometheus' text format: for the admin key, or a
    scraper at an address in ``AITBC_METRICS_ALLOW_IPS``."""
    client = request.client
    metrics_service.authorize(runtime, principal, client.host if client else None)
    await metrics_service.refresh(runtime)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
