"""System endpoints: health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aitbc.api.deps import RuntimeDep
from aitbc.schemas import Health
from aitbc.services import health as health_service

router = APIRouter(tags=["System"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(runtime: RuntimeDep) -> JSONResponse:
    """Liveness, version and a database round trip; 503 when the database is unreachable."""
    body = await health_service.check(runtime)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)
