"""The exchange's matching engine (DESIGN.md section 7): one market's limit order book,
in memory, with price-time priority. Pure: no I/O, no clock, no money; the exchange
service persists what it returns and settles the fills.

Prices are integer ticks and amounts integer lots (the market's tick and lot sizes
turn them into quote units and AIT), so matching never rounds. An order:

- ``limit`` rests at its price what it does not fill at once (``gtc``), or cancels
  the rest (``ioc``); ``post_only`` is refused whole if any of it would fill at once
  (or meet a resting order of its own owner);
- ``market`` fills against the best prices until it is filled or the book is empty,
  and the rest is cancelled (it never rests).

Fills happen at the resting (maker) order's price; among orders at one price the
oldest fills first. Self-trade prevention: an incoming order never fills against a
resting order of the same owner; that resting order is cancelled instead (expire
maker, the usual default) and matching goes on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from sortedcontainers import SortedDict


class Side(StrEnum):
    """Which way an order trades the base asset (AIT)."""

    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    """Limit (a price) or market (none)."""

    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    """What happens to the part of a limit order that does not fill at once."""

    GTC = "gtc"
    IOC = "ioc"
    POST_ONLY = "post_only"


class OrderStatus(StrEnum):
    """An order's state after it was matched (the contract's names)."""

    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order to match: ids and sizes as integers (ticks, lots)."""

    order_id: str
    owner: str
    side: Side
    type: OrderType
    lots: int
    price_ticks: int | None = None
    time_in_force: TimeInForce = TimeInForce.GTC


@dataclass(slots=True)
class RestingOrder:
    """An order on the book: what is left of it at its price."""

    order_id: str
    owner: str
    side: Side
    price_ticks: int
    remaining_lots: int


class Fill(NamedTuple):
    """One match: ``lots`` at the maker's price between a resting and an incoming order
    (a named tuple: the engine makes one per match, and a frozen dataclass costs three
    times as much to build)."""

    maker_order_id: str
    maker_owner: str
    taker_order_id: str
    taker_owner: str
    taker_side: Side
    price_ticks: int
    lots: int


@dataclass(slots=True)
class MatchResult:
    """What submitting one order did: its fills in order, what of it rests on the book,
    what of it was cancelled, the resting orders self-trade prevention cancelled,
    and its status."""

    status: OrderStatus
    fills: list[Fill] = field(default_factory=list)
    resting_lots: int = 0
    cancelled_lots: int = 0
    cancelled_makers: list[RestingOrder] = field(default_factory=list)

    @property
    def filled_lots(self) -> int:
        """Lots of the incoming order filled."""
        return sum(fill.lots for fill in self.fills)


class OrderBookError(ValueError):
    """An order the book cannot take (sizes, prices, a duplicate id)."""


class OrderBook:
    """One market's resting orders by price, oldest first at each price."""

    def __init__(self) -> None:
        # price (ticks) -> orders at it, oldest first; bids iterate best (highest)
        # first through negated keys.
        self._bids: SortedDict = SortedDict()
        self._asks: SortedDict = SortedDict()
        self._orders: dict[str, RestingOrder] = {}

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def order(self, order_id: str) -> RestingOrder | None:
        """A resting order, or None."""
        return self._orders.get(order_id)

    def best_bid(self) -> int | None:
        """The highest bid price (ticks), or None."""
        return -self._bids.peekitem(0)[0] if self._bids else None

    def best_ask(self) -> int | None:
        """The lowest ask price (ticks), or None."""
        return self._asks.peekitem(0)[0] if self._asks else None

    def depth(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Up to ``levels`` price levels a side, best first: ``[(price, lots), ...]``."""
        bids = [
            (-key, sum(order.remaining_lots for order in queue))
            for key, queue in self._bids.items()[:levels]
        ]
        asks = [
            (key, sum(order.remaining_lots for order in queue))
            for key, queue in self._asks.items()[:levels]
        ]
        return bids, asks

    def level_lots(self, side: Side, price_ticks: int) -> int:
        """Lots resting on ``side`` at ``price_ticks`` (0 for an empty level)."""
        queue = self._bids.get(-price_ticks) if side is Side.BUY else self._asks.get(price_ticks)
        return sum(order.remaining_lots for order in queue) if queue else 0

    def sweep_cost(self, owner: str, side: Side, lots: int) -> tuple[int, int]:
        """What a market order of ``owner`` for ``lots`` would fill now: ``(lots
        filled, sum of lots x price in ticks)``, skipping ``owner``'s own resting
        orders as self-trade prevention will (so a market buy can lock exactly what
        it will pay)."""
        book = self._asks if side is Side.BUY else self._bids
        remaining, cost = lots, 0
        for key, queue in book.items():
            price = key if side is Side.BUY else -key
            for order in queue:
                if order.owner == owner:
                    continue
                take = min(remaining, order.remaining_lots)
                remaining -= take
                cost += take * price
                if not remaining:
                    return lots, cost
        return lots - remaining, cost

    def submit(self, request: OrderRequest) -> MatchResult:
        """Match ``request`` against the book, then rest or cancel what is left."""
        self._check(request)
        buying = request.side is Side.BUY
        book = self._asks if buying else self._bids
        limit = request.price_ticks if request.type is OrderType.LIMIT else None
        if request.time_in_force is TimeInForce.POST_ONLY and self._would_cross(
            book, buying, limit
        ):
            return MatchResult(OrderStatus.REJECTED, cancelled_lots=request.lots)
        result = MatchResult(OrderStatus.OPEN)
        remaining = request.lots
        while remaining and book:
            key, queue = book.peekitem(0)
            price = key if buying else -key
            if limit is not None and (price > limit if buying else price < limit):
                break
            while remaining and queue:
                maker = queue[0]
                if maker.owner == request.owner:
                    queue.popleft()
                    del self._orders[maker.order_id]
                    result.cancelled_makers.append(maker)
                    continue
                lots = min(remaining, maker.remaining_lots)
                result.fills.append(
                    Fill(
                        maker.order_id,
                        maker.owner,
                        request.order_id,
                        request.owner,
                        request.side,
                        price,
                        lots,
                    )
                )
                remaining -= lots
                maker.remaining_lots -= lots
                if not maker.remaining_lots:
                    queue.popleft()
                    del self._orders[maker.order_id]
            if not queue:
                del book[key]
        filled = request.lots - remaining
        if remaining and limit is not None and request.time_in_force is not TimeInForce.IOC:
            self._rest(request, limit, remaining)
            result.resting_lots = remaining
            result.status = OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.OPEN
        elif remaining:
            result.cancelled_lots = remaining
            result.status = OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.CANCELLED
        else:
            result.status = OrderStatus.FILLED
        return result

    def cancel(self, order_id: str) -> RestingOrder | None:
        """Take a resting order off the book; None if it is not there."""
        order = self._orders.pop(order_id, None)
        if order is None:
            return None
        book = self._bids if order.side is Side.BUY else self._asks
        key = -order.price_ticks if order.side is Side.BUY else order.price_ticks
        queue = book[key]
        queue.remove(order)
        if not queue:
            del book[key]
        return order

    def resting(self) -> list[RestingOrder]:
        """Every resting order, bids then asks, best price and oldest first (what a
        restart replays to rebuild an identical book)."""
        return [order for queue in self._bids.values() for order in queue] + [
            order for queue in self._asks.values() for order in queue
        ]

    # --- internals ----------------------------------------------------------------

    def _check(self, request: OrderRequest) -> None:
        if request.lots <= 0:
            raise OrderBookError("an order is at least one lot")
        if request.order_id in self._orders:
            raise OrderBookError(f"order {request.order_id} is on the book already")
        if request.type is OrderType.LIMIT:
            if request.price_ticks is None or request.price_ticks <= 0:
                raise OrderBookError("a limit order has a price of at least one tick")
        elif request.price_ticks is not None:
            raise OrderBookError("a market order has no price")
        elif request.time_in_force is not TimeInForce.IOC:
            # A market order never rests: it is immediate-or-cancel by nature.
            raise OrderBookError("a market order is ioc")

    @staticmethod
    def _would_cross(book: SortedDict, buying: bool, limit: int | None) -> bool:
        if not book or limit is None:
            return bool(book)
        key: int = book.peekitem(0)[0]
        best = key if buying else -key
        return best <= limit if buying else best >= limit

    def _rest(self, request: OrderRequest, price: int, lots: int) -> None:
        order = RestingOrder(request.order_id, request.owner, request.side, price, lots)
        if request.side is Side.BUY:
            queue = self._bids.get(-price)
            if queue is None:
                queue = self._bids[-price] = deque()
        else:
            queue = self._asks.get(price)
            if queue is None:
                queue = self._asks[price] = deque()
        queue.append(order)
        self._orders[request.order_id] = order
