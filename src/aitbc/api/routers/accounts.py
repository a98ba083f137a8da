"""Accounts and money (DESIGN.md section 6): ``GET /v1/accounts/me``, public balances,
``POST /v1/transfers``, ``POST /v1/admin/mint`` and the keys that sign transfers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.schemas import (
    ADDRESS_PATTERN,
    AccountBalance,
    AccountKeyRequest,
    AccountPublic,
    KeyList,
    MintRequest,
    Transaction,
    TransferRequest,
)
from aitbc.services import accounts
from aitbc.storage.ledger_queries import NewTransaction

router = APIRouter(tags=["Accounts"])

Address = Annotated[str, Path(pattern=ADDRESS_PATTERN)]


def transaction_response(tx: NewTransaction) -> Response:
    """A new transaction, 201, exactly as it is hashed."""
    return Response(tx.document, status_code=201, media_type="application/json")


@router.get("/v1/accounts/me", response_model=AccountBalance)
async def my_account(runtime: RuntimeDep, principal: PrincipalDep) -> AccountBalance:
    """The caller's balance and what it has in escrow for unfinished jobs."""
    return await accounts.me(runtime, principal)


@router.post("/v1/accounts/me/keys", status_code=201, response_model=KeyList)
async def register_account_key(
    runtime: RuntimeDep, principal: PrincipalDep, body: AccountKeyRequest
) -> JSONDocument:
    """Register the Ed25519 key that must sign the caller's transfers from now on."""
    return JSONDocument(await accounts.register_key(runtime, principal, body), status_code=201)


@router.get("/v1/accounts/{address}", response_model=AccountPublic)
async def account(runtime: RuntimeDep, address: Address) -> AccountPublic:
    """Any account's balance (public)."""
    return await accounts.public(runtime, address)


@router.post("/v1/transfers", status_code=201, response_model=Transaction)
async def transfer(runtime: RuntimeDep, principal: PrincipalDep, body: TransferRequest) -> Response:
    """Send AIT to another account: 402 beyond the balance, 409 for a reused nonce."""
    return transaction_response(await accounts.transfer(runtime, principal, body))


@router.post("/v1/admin/mint", status_code=201, response_model=Transaction, tags=["Admin"])
async def mint(runtime: RuntimeDep, principal: PrincipalDep, body: MintRequest) -> Response:
    """Create AIT for an account (admin key)."""
    return transaction_response(await accounts.mint(runtime, principal, body))
