"""Client accounts: open self-registration (can be turned off)."""

from __future__ import annotations

from fastapi import APIRouter

from aitbc.api.deps import RuntimeDep
from aitbc.errors import PermissionDenied
from aitbc.schemas import ClientCredentials, ClientRegistration
from aitbc.services import auth

router = APIRouter(prefix="/v1/clients", tags=["Clients"])


@router.post("/register", status_code=201, response_model=ClientCredentials)
async def register_client(
    runtime: RuntimeDep, body: ClientRegistration | None = None
) -> ClientCredentials:
    """Create a client account; the API key in the answer is shown only this once."""
    if not runtime.settings.open_client_registration:
        raise PermissionDenied(
            "client self-registration is turned off; ask an admin for a key",
            error_code="registration_closed",
        )
    return await auth.register_client(runtime, body.name if body else None)
