"""Request and response bodies of the exchange (DESIGN.md section 7), beside
``aitbc.schemas``. Prices are quote units per AIT, amounts AIT, as JSON numbers with
at most 6 decimals; the market's tick and lot sizes say which ones it takes."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from aitbc.schemas import ADDRESS_PATTERN, StrictRequest

Positive = Annotated[Decimal, Field(gt=0, le=10**9, decimal_places=6)]
MARKET_PATTERN = r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$"
ASSET_PATTERN = r"^[A-Z0-9]{1,12}$"


class Market(BaseModel):
    """``GET /v1/exchange/markets``: one market and its sizes and fees (fractions)."""

    market: str
    base: str
    quote: str
    tick_size: float
    lot_size: float
    maker_fee: float
    taker_fee: float


class OrderRequest(StrictRequest):
    """``POST /v1/exchange/orders``."""

    market: str = Field(pattern=MARKET_PATTERN)
    side: Literal["buy", "sell"]
    type: Literal["limit", "market"] = "limit"
    price: Positive | None = Field(default=None, description="quote per AIT (limit orders)")
    amount: Positive = Field(description="AIT")
    time_in_force: Literal["gtc", "ioc", "post_only"] | None = Field(
        default=None, description="gtc by default for limit orders; a market order is ioc"
    )


class OrderFill(BaseModel):
    """One fill of an order, from that order's side."""

    trade_id: str
    price: float
    amount: float = Field(description="AIT filled")
    quote_amount: float
    fee: float = Field(description="AIT this order paid")
    liquidity: Literal["maker", "taker"]
    timestamp: float


class Order(BaseModel):
    """An exchange order and what became of it."""

    order_id: str
    market: str
    side: Literal["buy", "sell"]
    type: Literal["limit", "market"]
    time_in_force: Literal["gtc", "ioc", "post_only"]
    price: float | None
    amount: float
    filled: float
    remaining: float
    status: Literal["open", "partially_filled", "filled", "cancelled", "rejected"]
    locked: float = Field(description="what the order still locks (AIT to sell, quote to buy)")
    created_at: float
    fills: list[OrderFill]


class OrderList(BaseModel):
    """``GET /v1/exchange/orders``: the caller's orders, newest first."""

    orders: list[Order]


class PublicTrade(BaseModel):
    """One fill, as the public sees it (``side`` is the taker's)."""

    trade_id: str
    market: str
    price: float
    amount: float
    side: Literal["buy", "sell"]
    timestamp: float


class OrderBookView(BaseModel):
    """``GET /v1/exchange/orderbook``: price levels best first, ``[price, amount]``."""

    market: str
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    sequence: int


class Ticker(BaseModel):
    """``GET /v1/exchange/ticker``: the last price, the best bid and ask and the last
    24 hours (``change_24h`` as a fraction of the first price of the window)."""

    market: str
    last: float | None
    bid: float | None
    ask: float | None
    high_24h: float | None
    low_24h: float | None
    volume_24h: float
    change_24h: float | None


class DepositRequest(StrictRequest):
    """``POST /v1/admin/deposits``: credit an off-chain asset (admin only)."""

    address: str = Field(pattern=ADDRESS_PATTERN)
    asset: str = Field(pattern=ASSET_PATTERN)
    amount: Positive


class Deposit(BaseModel):
    """A deposit as recorded in the quote ledger."""

    deposit_id: str
    address: str
    asset: str
    amount: float
    balance: float
