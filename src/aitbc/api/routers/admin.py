"""Admin endpoints: miners, all jobs, statistics, client keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.domain.jobs import JobStatus
from aitbc.schemas import (
    AdminStats,
    ClientCredentials,
    ClientRegistration,
    JobList,
    Miner,
    PublicKeyInfo,
)
from aitbc.services import admin, auth, jobs, keys

router = APIRouter(prefix="/v1/admin", tags=["Admin"])


@router.get("/miners", response_model=list[Miner])
async def list_miners(runtime: RuntimeDep, principal: PrincipalDep) -> list[Miner]:
    """Every registered miner."""
    return await admin.list_miners(runtime, principal)


@router.get("/jobs", response_model=JobList)
async def list_all_jobs(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JSONDocument:
    """Every job in the system, newest first."""
    auth.require_role(principal, "admin")
    return JSONDocument(
        await jobs.list_jobs(runtime, principal, status=status, limit=limit, offset=offset)
    )


@router.get("/stats", response_model=AdminStats)
async def stats(runtime: RuntimeDep, principal: PrincipalDep) -> AdminStats:
    """Jobs by status, queue depth, online miners, completions in the last minute."""
    return await admin.stats(runtime, principal)


@router.post("/clients", status_code=201, response_model=ClientCredentials)
async def create_client(
    runtime: RuntimeDep, principal: PrincipalDep, body: ClientRegistration | None = None
) -> ClientCredentials:
    """Create a client account and key (works even when self-registration is off)."""
    auth.require_role(principal, "admin")
    return await auth.register_client(runtime, body.name if body else None)


@router.post("/keys/rotate", status_code=201, response_model=PublicKeyInfo)
async def rotate_signing_key(runtime: RuntimeDep, principal: PrincipalDep) -> JSONDocument:
    """Make a new receipt-signing key; the old one is retired now and stays published,
    so the receipts it signed stay verifiable."""
    auth.require_role(principal, "admin")
    key = await keys.rotate(runtime)
    return JSONDocument(key.to_document(), status_code=201)
