"""The caller's own API keys: list them, create another (rotation without downtime),
revoke one. The rules are in ``aitbc.services.auth``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.schemas import API_KEY_ID_PATTERN, ApiKeyCreated, ApiKeyInfo, ApiKeyList
from aitbc.services import auth

router = APIRouter(prefix="/v1/auth", tags=["API keys"])

ApiKeyId = Annotated[str, Path(pattern=API_KEY_ID_PATTERN, description="16 lowercase hex digits")]


@router.get("/keys", response_model=ApiKeyList)
async def list_own_keys(runtime: RuntimeDep, principal: PrincipalDep) -> ApiKeyList:
    """The caller's keys, revoked ones too, oldest first (never the secrets)."""
    return await auth.own_keys(runtime, principal)


@router.post("/keys", status_code=201, response_model=ApiKeyCreated)
async def create_own_key(runtime: RuntimeDep, principal: PrincipalDep) -> ApiKeyCreated:
    """Another key for the caller, same role and account; the secret is shown only
    in this answer. Move to it, then revoke the old key."""
    return await auth.create_own_key(runtime, principal)


@router.delete("/keys/{key_id}", response_model=ApiKeyInfo)
async def revoke_own_key(
    runtime: RuntimeDep, principal: PrincipalDep, key_id: ApiKeyId
) -> ApiKeyInfo:
    """Revoke one of the caller's keys (the one in use too), refused by every
    coordinator within 5 s. The account's last active key is kept (409
    ``last_api_key``); revoking a revoked key changes nothing."""
    return await auth.revoke_own_key(runtime, principal, key_id)
