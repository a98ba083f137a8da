"""``client.exchange``: the AIT exchange (DESIGN.md section 7) from Python, typed with
``aitbc.exchange_schemas``. Amounts and prices may be given as numbers or as
strings/Decimals (sent as text, so no float rounds them).

>>> with aitbc.Client() as client:
...     order = client.exchange.order("sell", amount="10", price="2.5")
...     print(order.status, client.exchange.book().asks[:3])
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx

from aitbc.exchange_schemas import (
    Deposit,
    Market,
    Order,
    OrderBookView,
    OrderList,
    PublicTrade,
    Ticker,
)
from aitbc.sdk.calls import Call, model_parser

if TYPE_CHECKING:
    from aitbc.sdk.client import AsyncClient, Client

DEFAULT_MARKET = "AIT-USD"
Number = float | int | Decimal | str


def _number(value: Number) -> float | int | str:
    return str(value) if isinstance(value, Decimal) else value


def _list_of(schema: type[Any]) -> Any:
    return lambda response: [schema.model_validate(item) for item in response.json()]


def markets_call() -> Call[list[Market]]:
    return Call("GET", "/v1/exchange/markets", _list_of(Market), idempotent=True)


def order_call(
    side: str,
    amount: Number,
    price: Number | None,
    market: str,
    order_type: str | None,
    time_in_force: str | None,
) -> Call[Order]:
    body: dict[str, Any] = {
        "market": market,
        "side": side,
        "type": order_type or ("limit" if price is not None else "market"),
        "amount": _number(amount),
    }
    if price is not None:
        body["price"] = _number(price)
    if time_in_force is not None:
        body["time_in_force"] = time_in_force
    return Call("POST", "/v1/exchange/orders", model_parser(Order), body=body)


def cancel_call(order_id: str) -> Call[Order]:
    return Call("DELETE", f"/v1/exchange/orders/{order_id}", model_parser(Order))


def get_order_call(order_id: str) -> Call[Order]:
    return Call("GET", f"/v1/exchange/orders/{order_id}", model_parser(Order), idempotent=True)


def orders_call(status: str | None, market: str | None, limit: int) -> Call[OrderList]:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    if market is not None:
        params["market"] = market
    return Call(
        "GET", "/v1/exchange/orders", model_parser(OrderList), params=params, idempotent=True
    )


def book_call(market: str, depth: int) -> Call[OrderBookView]:
    params = {"market": market, "depth": depth}
    return Call(
        "GET", "/v1/exchange/orderbook", model_parser(OrderBookView), params=params, idempotent=True
    )


def ticker_call(market: str) -> Call[Ticker]:
    params = {"market": market}
    return Call("GET", "/v1/exchange/ticker", model_parser(Ticker), params=params, idempotent=True)


def trades_call(market: str, limit: int, mine: bool) -> Call[list[dict[str, Any]]]:
    params: dict[str, Any] = {"market": market, "limit": limit}
    if mine:
        params["mine"] = "true"

    def parse(response: httpx.Response) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = response.json()
        if not mine:
            for item in items:
                PublicTrade.model_validate(item)
        return items

    return Call("GET", "/v1/exchange/trades", parse, params=params, idempotent=True)


def deposit_call(address: str, asset: str, amount: Number) -> Call[Deposit]:
    body = {"address": address, "asset": asset, "amount": _number(amount)}
    return Call("POST", "/v1/admin/deposits", model_parser(Deposit), body=body)


class Exchange:
    """``client.exchange`` of :class:`aitbc.Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def markets(self) -> list[Market]:
        """Every market with its tick and lot sizes and fees."""
        return self._client.send(markets_call())

    def order(
        self,
        side: str,
        amount: Number,
        price: Number | None = None,
        *,
        market: str = DEFAULT_MARKET,
        type: str | None = None,
        time_in_force: str | None = None,
    ) -> Order:
        """Place an order (a limit order when ``price`` is given, else a market order);
        it comes back matched, with its fills."""
        return self._client.send(order_call(side, amount, price, market, type, time_in_force))

    def cancel(self, order_id: str) -> Order:
        """Cancel one of your open orders."""
        return self._client.send(cancel_call(order_id))

    def get(self, order_id: str) -> Order:
        """One of your orders with all its fills."""
        return self._client.send(get_order_call(order_id))

    def orders(
        self, *, status: str | None = None, market: str | None = None, limit: int = 50
    ) -> OrderList:
        """Your orders, newest first (``status="open"``: those still working)."""
        return self._client.send(orders_call(status, market, limit))

    def book(self, market: str = DEFAULT_MARKET, depth: int = 20) -> OrderBookView:
        """The best ``depth`` price levels a side."""
        return self._client.send(book_call(market, depth))

    def ticker(self, market: str = DEFAULT_MARKET) -> Ticker:
        """Last price, best bid and ask, the last 24 hours."""
        return self._client.send(ticker_call(market))

    def trades(
        self, market: str = DEFAULT_MARKET, *, limit: int = 50, mine: bool = False
    ) -> list[dict[str, Any]]:
        """A market's newest fills (``mine``: yours, with your side and fee)."""
        return self._client.send(trades_call(market, limit, mine))

    def deposit(self, address: str, amount: Number, asset: str = "USD") -> Deposit:
        """Credit a quote asset to an account (admin key)."""
        return self._client.send(deposit_call(address, asset, amount))


class AsyncExchange:
    """``client.exchange`` of :class:`aitbc.AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def markets(self) -> list[Market]:
        """Every market with its tick and lot sizes and fees."""
        return await self._client.send(markets_call())

    async def order(
        self,
        side: str,
        amount: Number,
        price: Number | None = None,
        *,
        market: str = DEFAULT_MARKET,
        type: str | None = None,
        time_in_force: str | None = None,
    ) -> Order:
        """Place an order (see :meth:`Exchange.order`)."""
        call = order_call(side, amount, price, market, type, time_in_force)
        return await self._client.send(call)

    async def cancel(self, order_id: str) -> Order:
        """Cancel one of your open orders."""
        return await self._client.send(cancel_call(order_id))

    async def get(self, order_id: str) -> Order:
        """One of your orders with all its fills."""
        return await self._client.send(get_order_call(order_id))

    async def orders(
        self, *, status: str | None = None, market: str | None = None, limit: int = 50
    ) -> OrderList:
        """Your orders, newest first."""
        return await self._client.send(orders_call(status, market, limit))

    async def book(self, market: str = DEFAULT_MARKET, depth: int = 20) -> OrderBookView:
        """The best ``depth`` price levels a side."""
        return await self._client.send(book_call(market, depth))

    async def ticker(self, market: str = DEFAULT_MARKET) -> Ticker:
        """Last price, best bid and ask, the last 24 hours."""
        return await self._client.send(ticker_call(market))

    async def trades(
        self, market: str = DEFAULT_MARKET, *, limit: int = 50, mine: bool = False
    ) -> list[dict[str, Any]]:
        """A market's newest fills (``mine``: yours)."""
        return await self._client.send(trades_call(market, limit, mine))

    async def deposit(self, address: str, amount: Number, asset: str = "USD") -> Deposit:
        """Credit a quote asset to an account (admin key)."""
        return await self._client.send(deposit_call(address, asset, amount))
