"""The exchange (DESIGN.md section 7): markets, orders, the book, the ticker, fills,
and admin deposits of quote assets. Public reads are served from memory."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from aitbc.api.deps import OptionalPrincipalDep, PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.errors import AuthenticationRequired
from aitbc.exchange_schemas import (
    MARKET_PATTERN,
    Deposit,
    DepositRequest,
    Market,
    Order,
    OrderBookView,
    OrderList,
    OrderRequest,
    PublicTrade,
    Ticker,
)
from aitbc.services import exchange

router = APIRouter(tags=["Exchange"])
# Placing and cancelling orders, the exchange's hot path: included first, so a request
# is not matched against every other route before it (the rest come later).
orders_router = APIRouter(tags=["Exchange"])

MarketName = Annotated[str, Query(pattern=MARKET_PATTERN)]
OrderId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
OrderStatusFilter = Literal["open", "closed", "partially_filled", "filled", "cancelled", "rejected"]


@router.get("/v1/exchange/markets", response_model=list[Market])
async def markets(runtime: RuntimeDep) -> JSONDocument:
    """Every market with its tick and lot sizes and its fees."""
    return JSONDocument(exchange.markets(runtime))


@orders_router.post("/v1/exchange/orders", status_code=201, response_model=Order)
async def place_order(
    runtime: RuntimeDep, principal: PrincipalDep, body: OrderRequest
) -> JSONDocument:
    """Place a limit or market order: it is matched and its fills settled before the
    answer (402 beyond the caller's available balance, 422 off the tick or lot)."""
    return JSONDocument(await exchange.place_order(runtime, principal, body), status_code=201)


@orders_router.delete("/v1/exchange/orders/{order_id}", response_model=Order)
async def cancel_order(
    runtime: RuntimeDep, principal: PrincipalDep, order_id: OrderId
) -> JSONDocument:
    """Cancel one of the caller's open orders (404 for another's, 409 once closed)."""
    return JSONDocument(await exchange.cancel_order(runtime, principal, order_id))


@router.get("/v1/exchange/orders/{order_id}", response_model=Order)
async def get_order(
    runtime: RuntimeDep, principal: PrincipalDep, order_id: OrderId
) -> JSONDocument:
    """One of the caller's orders with every fill."""
    return JSONDocument(await exchange.get_order(runtime, principal, order_id))


@router.get("/v1/exchange/orders", response_model=OrderList)
async def list_orders(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    status: OrderStatusFilter | None = None,
    market: Annotated[str | None, Query(pattern=MARKET_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=exchange.MAX_ORDERS_LISTED)] = 50,
) -> JSONDocument:
    """The caller's orders, newest first (``open``: open and partially filled)."""
    return JSONDocument(
        await exchange.list_orders(runtime, principal, status=status, market=market, limit=limit)
    )


@router.get("/v1/exchange/trades", response_model=list[PublicTrade])
async def trades(
    runtime: RuntimeDep,
    principal: OptionalPrincipalDep,
    market: MarketName = "AIT-USD",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    mine: bool = False,
) -> JSONDocument:
    """A market's newest fills (``mine=true``: the caller's own, from its side)."""
    if mine:
        if principal is None:
            raise AuthenticationRequired(
                "mine=true needs an API key (X-Api-Key)", error_code="missing_api_key"
            )
        return JSONDocument(
            await exchange.my_trades(runtime, principal, market=market, limit=limit)
        )
    return JSONDocument(exchange.recent_trades(runtime, market, limit))


@router.get("/v1/exchange/orderbook", response_model=OrderBookView)
async def orderbook(
    runtime: RuntimeDep,
    market: MarketName = "AIT-USD",
    depth: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JSONDocument:
    """The best ``depth`` price levels a side, and the book's sequence."""
    return JSONDocument(exchange.orderbook(runtime, market, depth))


@router.get("/v1/exchange/ticker", response_model=Ticker)
async def ticker(runtime: RuntimeDep, market: MarketName = "AIT-USD") -> JSONDocument:
    """Last price, best bid and ask, the last 24 hours' high, low, volume, change."""
    return JSONDocument(exchange.ticker(runtime, market))


@router.post("/v1/admin/deposits", status_code=201, response_model=Deposit, tags=["Admin"])
async def deposit(
    runtime: RuntimeDep, principal: PrincipalDep, body: DepositRequest
) -> JSONDocument:
    """Credit a quote asset (USD) to an account (admin key)."""
    return JSONDocument(await exchange.deposit(runtime, principal, body), status_code=201)
