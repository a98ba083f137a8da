"""``client.market``: the compute marketplace (DESIGN.md section 7) from Python, typed
with ``aitbc.market_schemas``: offers (miners), trades (clients); a job then names
its ``trade_id`` (``client.jobs.submit(prompt, trade_id=...)``).

>>> with aitbc.Client() as client:
...     cheapest = client.market.offers(model="smollm2-135m").offers[0]
...     trade = client.market.buy(cheapest.offer_id, tokens=10_000)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aitbc.market_schemas import Offer, OfferList, Trade, TradeList
from aitbc.sdk.calls import Call, model_parser

if TYPE_CHECKING:
    from aitbc.sdk.client import AsyncClient, Client


def offers_call(filters: dict[str, Any]) -> Call[OfferList]:
    params = {name: value for name, value in filters.items() if value is not None}
    return Call(
        "GET", "/v1/marketplace/offers", model_parser(OfferList), params=params, idempotent=True
    )


def offer_call(offer_id: str) -> Call[Offer]:
    return Call("GET", f"/v1/marketplace/offers/{offer_id}", model_parser(Offer), idempotent=True)


def create_offer_call(
    miner_id: str,
    models: list[str],
    price: float | Decimal | str,
    capacity_tokens: int,
    valid_until: datetime,
    hardware: dict[str, Any],
) -> Call[Offer]:
    body: dict[str, Any] = {
        "miner_id": miner_id,
        "models": models,
        "price": str(price) if isinstance(price, Decimal) else price,
        "capacity_tokens": capacity_tokens,
        "valid_until": valid_until.isoformat(),
        **{name: value for name, value in hardware.items() if value is not None},
    }
    return Call("POST", "/v1/marketplace/offers", model_parser(Offer), body=body)


def withdraw_call(offer_id: str) -> Call[Offer]:
    return Call("DELETE", f"/v1/marketplace/offers/{offer_id}", model_parser(Offer))


def buy_call(offer_id: str, tokens: int) -> Call[Trade]:
    body = {"offer_id": offer_id, "tokens": tokens}
    return Call("POST", "/v1/marketplace/trades", model_parser(Trade), body=body)


def trade_call(trade_id: str) -> Call[Trade]:
    return Call("GET", f"/v1/marketplace/trades/{trade_id}", model_parser(Trade), idempotent=True)


def trades_call(limit: int) -> Call[TradeList]:
    params = {"limit": limit}
    return Call(
        "GET", "/v1/marketplace/trades", model_parser(TradeList), params=params, idempotent=True
    )


class Market:
    """``client.market`` of :class:`aitbc.Client`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def offers(self, **filters: Any) -> OfferList:
        """Open offers: ``model``, ``gpu_type``, ``min_vram_gb``, ``max_price``,
        ``region``, ``miner_id``, ``sort`` (price, -price, created), ``limit``, ``offset``."""
        return self._client.send(offers_call(filters))

    def offer(self, offer_id: str) -> Offer:
        """One offer."""
        return self._client.send(offer_call(offer_id))

    def create_offer(
        self,
        miner_id: str,
        models: list[str],
        price: float | Decimal | str,
        capacity_tokens: int,
        valid_until: datetime,
        **hardware: Any,
    ) -> Offer:
        """Offer capacity (a miner key); ``hardware``: gpu_type, gpu_count, vram_gb, region."""
        call = create_offer_call(miner_id, models, price, capacity_tokens, valid_until, hardware)
        return self._client.send(call)

    def withdraw(self, offer_id: str) -> Offer:
        """Withdraw one of your offers."""
        return self._client.send(withdraw_call(offer_id))

    def buy(self, offer_id: str, tokens: int) -> Trade:
        """Buy ``tokens`` of an offer (its amount goes into escrow)."""
        return self._client.send(buy_call(offer_id, tokens))

    def trade(self, trade_id: str) -> Trade:
        """One of your trades."""
        return self._client.send(trade_call(trade_id))

    def trades(self, limit: int = 20) -> TradeList:
        """Your trades, newest first."""
        return self._client.send(trades_call(limit))


class AsyncMarket:
    """``client.market`` of :class:`aitbc.AsyncClient`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def offers(self, **filters: Any) -> OfferList:
        """Open offers (see :meth:`Market.offers`)."""
        return await self._client.send(offers_call(filters))

    async def offer(self, offer_id: str) -> Offer:
        """One offer."""
        return await self._client.send(offer_call(offer_id))

    async def create_offer(
        self,
        miner_id: str,
        models: list[str],
        price: float | Decimal | str,
        capacity_tokens: int,
        valid_until: datetime,
        **hardware: Any,
    ) -> Offer:
        """Offer capacity (a miner key)."""
        call = create_offer_call(miner_id, models, price, capacity_tokens, valid_until, hardware)
        return await self._client.send(call)

    async def withdraw(self, offer_id: str) -> Offer:
        """Withdraw one of your offers."""
        return await self._client.send(withdraw_call(offer_id))

    async def buy(self, offer_id: str, tokens: int) -> Trade:
        """Buy ``tokens`` of an offer."""
        return await self._client.send(buy_call(offer_id, tokens))

    async def trade(self, trade_id: str) -> Trade:
        """One of your trades."""
        return await self._client.send(trade_call(trade_id))

    async def trades(self, limit: int = 20) -> TradeList:
        """Your trades, newest first."""
        return await self._client.send(trades_call(limit))
