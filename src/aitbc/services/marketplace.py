"""Compute-marketplace use cases (DESIGN.md section 7): miners' offers of capacity,
trades that buy it, and the trade jobs that draw on it.

Buying is one transaction: the tokens taken from the offer by a conditional
statement (so concurrent buyers never oversell it), the amount moved into escrow
(``escrow_hold``, ``ref`` = the trade id; 402 when the buyer's balance is short) and
the trade stored. A job naming the trade reserves its hold from the trade's escrow
(409 when the trade has not that much left), runs only on the trade's miner at the
trade's price, and on completion pays its receipt's price out of escrow
(``escrow_release``, ``ref`` = the trade id); a job that ends without a result gives
its reservation back. At ``expires_at`` the sweeper refunds what no job used
(``escrow_refund``), once: the statement that moves the trade out of ``active``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row

from aitbc.domain.money import price_for_units, to_ait, to_micro
from aitbc.domain.timestamps import unix_seconds
from aitbc.errors import Conflict, InsufficientFunds, InvalidRequest, NotFound
from aitbc.market_schemas import OfferRequest, OfferUpdate, TradeRequest
from aitbc.schemas import JobRequest
from aitbc.services import payment
from aitbc.services.auth import require_client, require_miner, require_role
from aitbc.services.runtime import Principal, Runtime
from aitbc.services.views import iso_z as _iso
from aitbc.storage import ledger_queries, market_queries
from aitbc.storage.db import read, transaction

MAX_OFFERS_PAGE = 100
EXPIRE_BATCH = 500


def offer_status(row: Row[Any], now: datetime) -> str:
    """An offer's status now: ``expired`` once past ``valid_until`` (unless withdrawn)."""
    if row.status == "withdrawn":
        return "withdrawn"
    if row.valid_until <= now:
        return "expired"
    return str(row.status)


def offer_view(row: Row[Any], now: datetime) -> dict[str, Any]:
    """An ``Offer`` body."""
    return {
        "offer_id": row.offer_id,
        "miner_id": row.miner_id,
        "models": list(row.models),
        "price": to_ait(row.price_micro),
        "capacity_tokens": row.capacity_tokens,
        "remaining_tokens": row.remaining_tokens,
        "valid_until": _iso(row.valid_until),
        "gpu_type": row.gpu_type,
        "gpu_count": row.gpu_count,
        "vram_gb": row.vram_gb,
        "region": row.region,
        "status": offer_status(row, now),
        "created_at": _iso(row.created_at),
    }


def trade_view(row: Row[Any]) -> dict[str, Any]:
    """A ``Trade`` body."""
    return {
        "trade_id": row.trade_id,
        "offer_id": row.offer_id,
        "client": row.client_id,
        "miner_id": row.miner_id,
        "models": list(row.models),
        "tokens": row.tokens,
        "price": to_ait(row.price_micro),
        "amount": to_ait(row.amount_micro),
        "used_tokens": row.used_tokens,
        "paid": to_ait(row.paid_micro),
        "reserved": to_ait(row.reserved_micro),
        "refunded": to_ait(row.refunded_micro),
        "status": row.status,
        "expires_at": _iso(row.expires_at),
        "created_at": _iso(row.created_at),
    }


# --- offers -----------------------------------------------------------------------------


async def create_offer(
    runtime: Runtime, principal: Principal, body: OfferRequest
) -> dict[str, Any]:
    """A miner offers capacity of the models it names until ``valid_until``."""
    require_miner(principal, body.miner_id)
    now = runtime.clock()
    if body.valid_until <= now:
        raise InvalidRequest("valid_until is in the past", error_code="offer_already_expired")
    values = {
        "offer_id": runtime.new_id("offer"),
        "miner_id": body.miner_id,
        "models": sorted(set(body.models)),
        "price_micro": to_micro(body.price),
        "capacity_tokens": body.capacity_tokens,
        "remaining_tokens": body.capacity_tokens,
        "valid_until": body.valid_until,
        "gpu_type": body.gpu_type,
        "gpu_count": body.gpu_count,
        "vram_gb": body.vram_gb,
        "region": body.region,
        "status": "open",
        "created_at": now,
    }
    row = await transaction(runtime.engine, market_queries.insert_offer, values)
    return offer_view(row, now)


async def list_offers(
    runtime: Runtime,
    *,
    model: str | None,
    gpu_type: str | None,
    min_vram_gb: float | None,
    max_price: float | None,
    region: str | None,
    miner_id: str | None,
    include_closed: bool,
    sort: str,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Offers (open and valid ones unless ``include_closed``), filtered and sorted."""
    now = runtime.clock()
    rows, total = await read(
        runtime.engine,
        lambda connection: market_queries.offer_page(
            connection,
            now=now,
            model=model,
            gpu_type=gpu_type,
            min_vram_gb=min_vram_gb,
            max_price_micro=None if max_price is None else to_micro(max_price),
            region=region,
            miner_id=miner_id,
            include_closed=include_closed,
            sort=sort,
            limit=limit,
            offset=offset,
        ),
    )
    return {
        "offers": [offer_view(row, now) for row in rows],
        "total": total,
        "has_more": offset + len(rows) < total,
    }


async def get_offer(runtime: Runtime, offer_id: str) -> dict[str, Any]:
    """One offer (public)."""
    row = await read(runtime.engine, market_queries.offer, offer_id)
    if row is None:
        raise NotFound(f"no offer {offer_id}", error_code="offer_not_found")
    return offer_view(row, runtime.clock())


async def _owned_offer(runtime: Runtime, principal: Principal, offer_id: str) -> Row[Any]:
    require_role(principal, "miner")
    row = await read(runtime.engine, market_queries.offer, offer_id)
    if row is None or row.miner_id != principal.owner_id:
        raise NotFound(f"no offer {offer_id} of yours", error_code="offer_not_found")
    return row


async def update_offer(
    runtime: Runtime, principal: Principal, offer_id: str, body: OfferUpdate
) -> dict[str, Any]:
    """Change one of the caller's open offers (a new capacity keeps what was sold
    sold: 409 below it); trades already made keep their terms."""
    row = await _owned_offer(runtime, principal, offer_id)
    changes = body.model_dump(exclude_unset=True)
    if "price" in changes:
        changes["price_micro"] = to_micro(changes.pop("price"))
    if "models" in changes:
        changes["models"] = sorted(set(changes["models"]))
    now = runtime.clock()
    if "valid_until" in changes and changes["valid_until"] <= now:
        raise InvalidRequest("valid_until is in the past", error_code="offer_already_expired")
    if not changes:
        return offer_view(row, now)
    updated = await transaction(
        runtime.engine, market_queries.update_offer, offer_id, row.miner_id, changes
    )
    if updated is None:
        status = offer_status(row, now)
        if status == "withdrawn":
            raise Conflict(f"offer {offer_id} is withdrawn", error_code="offer_withdrawn")
        raise Conflict(
            f"offer {offer_id} has sold {row.capacity_tokens - row.remaining_tokens} tokens: "
            "its capacity cannot go below that",
            error_code="capacity_below_sold",
        )
    return offer_view(updated, now)


async def withdraw_offer(runtime: Runtime, principal: Principal, offer_id: str) -> dict[str, Any]:
    """Close one of the caller's offers to new trades (its trades go on)."""
    row = await _owned_offer(runtime, principal, offer_id)
    updated = await transaction(
        runtime.engine, market_queries.withdraw_offer, offer_id, row.miner_id
    )
    return offer_view(updated or row, runtime.clock())


# --- trades -----------------------------------------------------------------------------


async def buy(runtime: Runtime, principal: Principal, body: TradeRequest) -> dict[str, Any]:
    """Buy ``tokens`` of an offer: 409 when it is sold out (or has fewer), expired or
    withdrawn; 402 when the buyer cannot pay; nothing is taken or held then."""
    client_id = require_client(principal)
    now = runtime.clock()
    trade_id = runtime.new_id("trade")

    def work(connection: Connection) -> Row[Any]:
        offer = market_queries.take_tokens(connection, body.offer_id, body.tokens, now)
        if offer is None:
            raise _not_buyable(market_queries.offer(connection, body.offer_id), body, now)
        amount = price_for_units(body.tokens, int(offer.price_micro))
        payment.hold_in_escrow(connection, client_id, trade_id, amount, unix_seconds(now))
        return market_queries.insert_trade(
            connection,
            {
                "trade_id": trade_id,
                "offer_id": offer.offer_id,
                "client_id": client_id,
                "miner_id": offer.miner_id,
                "models": list(offer.models),
                "tokens": body.tokens,
                "price_micro": offer.price_micro,
                "amount_micro": amount,
                "reserved_micro": 0,
                "paid_micro": 0,
                "used_tokens": 0,
                "refunded_micro": 0,
                "status": "active",
                "expires_at": offer.valid_until,
                "created_at": now,
            },
        )

    try:
        row = await transaction(runtime.engine, work)
    except InsufficientFunds:
        balance = await read(runtime.engine, ledger_queries.account, client_id)
        available = balance.balance_micro if balance else 0
        raise InsufficientFunds(
            f"{body.tokens} tokens of offer {body.offer_id} cost more than the balance of "
            f"{to_ait(available)} AIT",
            error_code="insufficient_funds",
        ) from None
    return trade_view(row)


def _not_buyable(offer: Row[Any] | None, body: TradeRequest, now: datetime) -> Exception:
    if offer is None:
        return NotFound(f"no offer {body.offer_id}", error_code="offer_not_found")
    status = offer_status(offer, now)
    if status == "expired":
        return Conflict(f"offer {body.offer_id} has expired", error_code="offer_expired")
    if status == "withdrawn":
        return Conflict(f"offer {body.offer_id} was withdrawn", error_code="offer_withdrawn")
    return Conflict(
        f"offer {body.offer_id} has {offer.remaining_tokens} tokens left, not {body.tokens}",
        error_code="sold_out",
    )


async def get_trade(runtime: Runtime, principal: Principal, trade_id: str) -> dict[str, Any]:
    """A trade, for its buyer, its seller (the miner) or an admin."""
    row = await read(runtime.engine, market_queries.trade, trade_id)
    if row is None or not (
        principal.is_admin or principal.owner_id in (row.client_id, row.miner_id)
    ):
        raise NotFound(f"no trade {trade_id}", error_code="trade_not_found")
    return trade_view(row)


async def list_trades(runtime: Runtime, principal: Principal, limit: int) -> dict[str, Any]:
    """The calling client's trades, newest first."""
    client_id = require_client(principal)
    rows = await read(runtime.engine, market_queries.trades_of, client_id, limit)
    return {"trades": [trade_view(row) for row in rows]}


# --- jobs on a trade (services.jobs) ----------------------------------------------------


async def trade_for_job(
    runtime: Runtime, client_id: str, request: JobRequest, model: str, now: datetime
) -> Row[Any]:
    """The trade a job names, checked: the client's (404 otherwise), active and
    unexpired (409), for the job's model (400); a job on a trade has no max_price."""
    if request.max_price is not None:
        raise InvalidRequest(
            "a job on a trade runs at the trade's price: leave max_price out",
            error_code="max_price_with_trade",
        )
    trade_id = request.trade_id or ""
    row = await read(runtime.engine, market_queries.trade, trade_id)
    if row is None or row.client_id != client_id:
        raise NotFound(f"no trade {trade_id} of yours", error_code="trade_not_found")
    if row.status != "active" or row.expires_at <= now:
        raise Conflict(f"trade {trade_id} has expired", error_code="trade_expired")
    if model not in row.models:
        raise InvalidRequest(
            f"trade {trade_id} is for {', '.join(row.models)}, not {model}",
            error_code="model_not_in_trade",
        )
    return row


def reserve_for_job(
    connection: Connection, trade: Row[Any], client_id: str, hold_micro: int, now: datetime
) -> None:
    """Reserve a job's hold from its trade in the submit's transaction; 409 when the
    trade has expired meanwhile or has not that much left."""
    if market_queries.reserve(connection, trade.trade_id, client_id, hold_micro, now) is None:
        current = market_queries.trade(connection, trade.trade_id)
        left = (
            0
            if current is None
            else (current.amount_micro - current.paid_micro - current.reserved_micro)
        )
        raise Conflict(
            f"trade {trade.trade_id} has {to_ait(max(left, 0))} AIT left; this job may cost up "
            f"to {to_ait(hold_micro)} AIT (its prompt and max_tokens at the trade's price)",
            error_code="trade_exhausted",
        )


# --- expiry (the sweeper) ---------------------------------------------------------------


def expire_trades(connection: Connection, now: datetime) -> int:
    """Refund what expired trades' jobs did not use (each trade once); how many."""
    rows = market_queries.expire_due(connection, now, EXPIRE_BATCH)
    timestamp = unix_seconds(now)
    for row in rows:
        payment.refund_from_escrow(
            connection, row.client_id, row.trade_id, int(row.refunded_micro), timestamp
        )
    return len(rows)
