"""Dependency aliases for routes: the runtime and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from aitbc.api.middleware import AUTH_ERROR_STATE_KEY, PRINCIPAL_STATE_KEY
from aitbc.errors import AITBCError, AuthenticationRequired
from aitbc.services.runtime import Principal, Runtime


async def get_runtime(request: Request) -> Runtime:
    """The coordinator runtime built by ``create_app``."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_optional_principal(request: Request) -> Principal | None:
    """The caller if a valid key was sent, None if no key; a bad key is an error."""
    error: AITBCError | None = getattr(request.state, AUTH_ERROR_STATE_KEY, None)
    if error is not None:
        raise error
    principal: Principal | None = getattr(request.state, PRINCIPAL_STATE_KEY, None)
    return principal


async def get_principal(request: Request) -> Principal:
    """The caller; 401 without a valid ``X-Api-Key``."""
    principal = await get_optional_principal(request)
    if principal is None:
        raise AuthenticationRequired(
            "missing API key (send X-Api-Key, or Authorization: Bearer)",
            error_code="missing_api_key",
        )
    return principal


# Job ids are "job_" + 32 hex; anything longer or with NUL cannot exist (and NUL
# would be refused by PostgreSQL with an error rather than a miss).
JobId = Annotated[str, Path(max_length=64, pattern=r"^[^\x00]+$")]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
OptionalPrincipalDep = Annotated[Principal | None, Depends(get_optional_principal)]
