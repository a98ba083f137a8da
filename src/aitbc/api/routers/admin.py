"""Admin endpoints: miners, all jobs, statistics, client accounts, API keys, the
signing key."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.api.routers.auth import ApiKeyId
from aitbc.domain.jobs import JobStatus
from aitbc.schemas import (
    MINER_ID_PATTERN,
    AdminStats,
    ApiKeyInfo,
    ApiKeyList,
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


@router.get("/keys", response_model=ApiKeyList)
async def list_api_keys(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    owner: Annotated[
        str | None, Query(pattern=MINER_ID_PATTERN, description="a client or miner id")
    ] = None,
    role: Literal["client", "miner", "admin"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> ApiKeyList:
    """API keys of one owner (or all), revoked ones too, oldest first."""
    return await auth.list_keys(
        runtime, principal, owner=owner, role=role, limit=limit, offset=offset
    )


@router.delete("/keys/{key_id}", response_model=ApiKeyInfo)
async def revoke_api_key(
    runtime: RuntimeDep, principal: PrincipalDep, key_id: ApiKeyId
) -> ApiKeyInfo:
    """Revoke anyone's API key, refused by every coordinator within 5 s; only the
    last active admin key is kept (409 ``last_api_key``)."""
    return await auth.revoke_key(runtime, principal, key_id)


@router.post("/keys/rotate", status_code=201, response_model=PublicKeyInfo)
async def rotate_signing_key(runtime: RuntimeDep, principal: PrincipalDep) -> JSONDocument:
    """Make a new receipt-signing key; the old one is retired now and stays published,
    so the receipts it signed stay verifiable."""
    auth.require_role(principal, "admin")
    key = await keys.rotate(runtime)
    return JSONDocument(key.to_document(), status_code=201)
