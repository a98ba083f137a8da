"""Account use cases: balances, transfers between accounts, admin mints, and the keys
that sign an account's transfers (DESIGN.md sections 3 and 6).

Every balance change is one ledger transaction, written in the same database
transaction as the change. Concurrent transfers cannot double-spend: the debit is
refused by the database's non-negative CHECK (PostgreSQL locks the sender's row
until commit), and a replayed nonce by the (sender, nonce) unique constraint.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from aitbc.domain.ledger import ESCROW, Transaction, TxType, check_sender_signature
from aitbc.domain.money import MAX_SUPPLY_MICRO, to_ait, to_micro
from aitbc.domain.signing import KeyRing
from aitbc.domain.timestamps import unix_seconds
from aitbc.errors import (
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ValidationFailed,
    VerificationFailed,
)
from aitbc.schemas import (
    AccountBalance,
    AccountKeyRequest,
    AccountPublic,
    AssetHolding,
    MintRequest,
    TransferRequest,
)
from aitbc.services import keys as key_service
from aitbc.services import payment
from aitbc.services.auth import require_role
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import exchange_queries, ledger_queries, receipt_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.ledger_queries import NewTransaction

# A transfer may be dated this far in the past (a signed one is prepared before it
# is sent), and no later than now plus a little clock skew: its block is dated at or
# after it, and a key retired since must not sign "earlier" transfers for long.
TRANSFER_PAST_SECONDS = 300
TRANSFER_FUTURE_SECONDS = 30


def _address_of(principal: Principal) -> str:
    """The caller's account: its client or miner id (the operator has none)."""
    require_role(principal, "client", "miner")
    if principal.owner_id is None:
        raise PermissionDenied("this key has no account", error_code="no_account")
    return principal.owner_id


async def me(runtime: Runtime, principal: Principal) -> AccountBalance:
    """The caller's balance and what it holds in escrow."""
    address = _address_of(principal)

    def work(
        connection: Connection,
    ) -> tuple[ledger_queries.AccountBalance | None, tuple[int, int] | None, dict[str, Any]]:
        return (
            ledger_queries.account(connection, address),
            exchange_queries.ait_funds(connection, address, for_update=False),
            exchange_queries.all_asset_funds(connection, address),
        )

    found, ait, assets = await read(runtime.engine, work)
    balance, held = (found.balance_micro, found.held_micro) if found else (0, 0)
    locked = ait[1] if ait else 0
    holdings = {
        asset: AssetHolding(balance=amounts[0] / 1_000_000, locked=amounts[1] / 1_000_000)
        for asset, amounts in sorted(assets.items())
    }
    for asset in sorted(runtime.exchange.quote_assets()):
        holdings.setdefault(asset, AssetHolding(balance=0, locked=0))
    return AccountBalance(
        address=address,
        balance=to_ait(balance),
        held=to_ait(held),
        locked=to_ait(locked),
        assets=holdings,
    )


async def public(runtime: Runtime, address: str) -> AccountPublic:
    """Any account's balance (public)."""
    found = await read(runtime.engine, ledger_queries.account, address)
    if found is None:
        raise NotFound(f"no account {address}", error_code="account_not_found")
    return AccountPublic(address=address, balance=to_ait(found.balance_micro))


def _keys_of(connection: Connection, owner: str) -> KeyRing:
    """Every key ``owner`` registered, current and retired, with their periods."""
    return KeyRing(key_service.record_of(row) for row in receipt_queries.keys_of(connection, owner))


def _transfer_time(now: datetime, requested: int | None) -> int:
    current = unix_seconds(now)
    if requested is None:
        return current
    if requested > current + TRANSFER_FUTURE_SECONDS:
        raise InvalidRequest(
            f"timestamp {requested} is in the future (now {current})",
            error_code="timestamp_in_future",
        )
    if requested < current - TRANSFER_PAST_SECONDS:
        raise InvalidRequest(
            f"timestamp {requested} is more than {TRANSFER_PAST_SECONDS} s old (now {current})",
            error_code="timestamp_too_old",
        )
    return requested


async def transfer(
    runtime: Runtime, principal: Principal, request: TransferRequest
) -> NewTransaction:
    """Move AIT from the caller to another account; 402 beyond the balance, 409 for a
    nonce used before, 422 for a missing or bad signature when the sender has a key."""
    sender = _address_of(principal)
    recipient = request.to
    if recipient == sender:
        raise InvalidRequest("a transfer needs another account", error_code="self_transfer")
    if recipient == ESCROW:
        raise InvalidRequest("escrow only takes job holds", error_code="invalid_recipient")
    amount_micro = to_micro(request.amount)
    timestamp = _transfer_time(runtime.clock(), request.timestamp)
    tx = payment.new_transaction(
        TxType.TRANSFER,
        sender=sender,
        recipient=recipient,
        amount_micro=amount_micro,
        timestamp=timestamp,
        extra={"nonce": request.nonce},
        signature=request.signature.model_dump() if request.signature else None,
    )
    parsed = Transaction.parse(payment.document_of(tx))

    def work(connection: Connection) -> NewTransaction:
        if ledger_queries.account(connection, recipient) is None:
            raise NotFound(f"no account {recipient}", error_code="account_not_found")
        keys = _keys_of(connection, sender)
        if parsed.signature is None and any(key.status == "current" for key in keys):
            # Stricter than the chain's rule (a key valid at the timestamp): an
            # account with a key signs every transfer, however it is dated.
            raise VerificationFailed(
                f"{sender} registered a key: its transfers must carry its signature",
                error_code="missing_signature",
            )
        check_sender_signature(parsed, keys)
        payment.record(connection, [tx])
        return tx

    try:
        return await transaction(runtime.engine, work)
    except InsufficientFunds:
        found = await read(runtime.engine, ledger_queries.account, sender)
        available = found.balance_micro if found else 0
        raise InsufficientFunds(
            f"the transfer is {to_ait(amount_micro)} AIT; the balance is {to_ait(available)} AIT",
            error_code="insufficient_funds",
        ) from None


async def mint(runtime: Runtime, principal: Principal, request: MintRequest) -> NewTransaction:
    """Create AIT for an account (admin only); the supply stays below 10^9 AIT."""
    require_role(principal, "admin")
    amount_micro = to_micro(request.amount)
    timestamp = unix_seconds(runtime.clock())
    ref = runtime.new_id("mint")

    def work(connection: Connection) -> NewTransaction:
        if ledger_queries.account(connection, request.address) is None:
            raise NotFound(f"no account {request.address}", error_code="account_not_found")
        if request.address == ESCROW:
            raise InvalidRequest("escrow only takes job holds", error_code="invalid_recipient")
        if ledger_queries.total_balance(connection) + amount_micro > MAX_SUPPLY_MICRO:
            raise ValidationFailed("the supply would exceed 10^9 AIT", error_code="supply_exceeded")
        return payment.mint(connection, request.address, amount_micro, timestamp, ref)

    return await transaction(runtime.engine, work)


async def register_key(
    runtime: Runtime, principal: Principal, request: AccountKeyRequest
) -> dict[str, object]:
    """Register the key that signs the caller's transfers dated from the next second
    on (retiring the previous one then, which stays valid for what it signed while
    current). Until then the account cannot transfer: it has a key, but none that
    is valid yet."""
    address = _address_of(principal)
    public_key = key_service.parse_public_key(request.public_key)
    # Valid from the next whole second: transfers are dated in whole seconds, and one
    # accepted unsigned earlier in this second must stay valid without a signature.
    valid_from = runtime.clock().replace(microsecond=0) + timedelta(seconds=1)
    await transaction(
        runtime.engine, key_service.register_miner_key, address, public_key, valid_from
    )
    runtime.miner_keys_cache.pop(address, None)
    return await key_service.published(runtime, address)
