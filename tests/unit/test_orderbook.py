"""The matching engine against a deliberately simple reference (a list of resting
orders scanned in full for every match) on random order streams: the same fills in
the same order, the same book after every step, the book never crossed, and every
order's lots accounted for (filled + resting + cancelled = ordered)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitbc.domain.orderbook import (
    Fill,
    OrderBook,
    OrderBookError,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)


@dataclass
class _Resting:
    order_id: str
    owner: str
    side: Side
    price: int
    lots: int
    arrival: int


class ReferenceBook:
    """Price-time priority the obvious way."""

    def __init__(self) -> None:
        self.orders: list[_Resting] = []
        self.arrivals = 0

    def submit(self, request: OrderRequest) -> tuple[OrderStatus, list[Fill], int, int]:
        buying = request.side is Side.BUY
        limit = request.price_ticks if request.type is OrderType.LIMIT else None

        def crosses(order: _Resting) -> bool:
            if order.side is request.side:
                return False
            if limit is None:
                return True
            return order.price <= limit if buying else order.price >= limit

        if request.time_in_force is TimeInForce.POST_ONLY and any(map(crosses, self.orders)):
            return OrderStatus.REJECTED, [], 0, request.lots
        fills: list[Fill] = []
        remaining = request.lots
        while remaining:
            candidates = [order for order in self.orders if crosses(order)]
            if not candidates:
                break
            best = min(
                candidates,
                key=lambda order: (order.price if buying else -order.price, order.arrival),
            )
            if best.owner == request.owner:
                self.orders.remove(best)
                continue
            lots = min(remaining, best.lots)
            fills.append(
                Fill(
                    best.order_id,
                    best.owner,
                    request.order_id,
                    request.owner,
                    request.side,
                    best.price,
                    lots,
                )
            )
            remaining -= lots
            best.lots -= lots
            if not best.lots:
                self.orders.remove(best)
        filled = request.lots - remaining
        if remaining and limit is not None and request.time_in_force is not TimeInForce.IOC:
            self.arrivals += 1
            self.orders.append(
                _Resting(
                    request.order_id, request.owner, request.side, limit, remaining, self.arrivals
                )
            )
            return (
                OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.OPEN,
                fills,
                remaining,
                0,
            )
        if remaining:
            return (
                OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.CANCELLED,
                fills,
                0,
                remaining,
            )
        return OrderStatus.FILLED, fills, 0, 0

    def cancel(self, order_id: str) -> bool:
        for order in self.orders:
            if order.order_id == order_id:
                self.orders.remove(order)
                return True
        return False

    def depth(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        levels: dict[tuple[Side, int], int] = {}
        for order in self.orders:
            levels[(order.side, order.price)] = (
                levels.get((order.side, order.price), 0) + order.lots
            )
        bids = sorted(
            ((price, lots) for (side, price), lots in levels.items() if side is Side.BUY),
            reverse=True,
        )
        asks = sorted((price, lots) for (side, price), lots in levels.items() if side is Side.SELL)
        return bids, asks


requests = st.builds(
    lambda owner, side, kind, lots, price, tif: (owner, side, kind, lots, price, tif),
    st.sampled_from(["alice", "bob", "carol"]),
    st.sampled_from(list(Side)),
    st.sampled_from([OrderType.LIMIT, OrderType.LIMIT, OrderType.LIMIT, OrderType.MARKET]),
    st.integers(min_value=1, max_value=20),
    st.integers(min_value=95, max_value=105),
    st.sampled_from(list(TimeInForce)),
)
steps = st.lists(st.one_of(requests, st.integers(min_value=0, max_value=60)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_engine_matches_the_reference(stream: list[object]) -> None:
    book, reference = OrderBook(), ReferenceBook()
    submitted: list[str] = []
    for index, step in enumerate(stream):
        if isinstance(step, int):  # cancel an earlier order (maybe gone already)
            if submitted:
                order_id = submitted[step % len(submitted)]
                assert (book.cancel(order_id) is not None) == reference.cancel(order_id)
            continue
        owner, side, kind, lots, price, tif = step  # type: ignore[misc]
        order_id = f"o{index}"
        request = OrderRequest(
            order_id,
            owner,
            side,
            kind,
            lots,
            price if kind is OrderType.LIMIT else None,
            tif if kind is OrderType.LIMIT else TimeInForce.IOC,
        )
        result = book.submit(request)
        status, fills, resting, cancelled = reference.submit(request)
        submitted.append(order_id)
        assert result.status == status
        assert result.fills == fills
        assert (result.resting_lots, result.cancelled_lots) == (resting, cancelled)
        assert result.filled_lots + result.resting_lots + result.cancelled_lots == lots
        assert book.depth(100) == reference.depth()
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is None or ask is None or bid < ask  # never crossed


def test_fills_are_at_the_makers_price_oldest_first() -> None:
    book = OrderBook()
    book.submit(OrderRequest("a1", "alice", Side.SELL, OrderType.LIMIT, 5, 101))
    book.submit(OrderRequest("a2", "bob", Side.SELL, OrderType.LIMIT, 5, 100))
    book.submit(OrderRequest("a3", "carol", Side.SELL, OrderType.LIMIT, 5, 100))
    result = book.submit(OrderRequest("b1", "dave", Side.BUY, OrderType.LIMIT, 12, 101))
    assert [(fill.maker_order_id, fill.price_ticks, fill.lots) for fill in result.fills] == [
        ("a2", 100, 5),
        ("a3", 100, 5),
        ("a1", 101, 2),
    ]
    assert result.status is OrderStatus.FILLED
    assert book.depth(5) == ([], [(101, 3)])


def test_self_trades_cancel_the_resting_order() -> None:
    book = OrderBook()
    book.submit(OrderRequest("mine", "alice", Side.SELL, OrderType.LIMIT, 5, 100))
    book.submit(OrderRequest("theirs", "bob", Side.SELL, OrderType.LIMIT, 5, 100))
    result = book.submit(OrderRequest("buy", "alice", Side.BUY, OrderType.LIMIT, 5, 100))
    assert [maker.order_id for maker in result.cancelled_makers] == ["mine"]
    assert [fill.maker_order_id for fill in result.fills] == ["theirs"]
    assert "mine" not in book


def test_post_only_never_takes_and_bad_orders_are_refused() -> None:
    book = OrderBook()
    book.submit(OrderRequest("ask", "bob", Side.SELL, OrderType.LIMIT, 5, 100))
    taking = book.submit(
        OrderRequest("p", "alice", Side.BUY, OrderType.LIMIT, 1, 100, TimeInForce.POST_ONLY)
    )
    assert taking.status is OrderStatus.REJECTED and not taking.fills
    making = book.submit(
        OrderRequest("q", "alice", Side.BUY, OrderType.LIMIT, 1, 99, TimeInForce.POST_ONLY)
    )
    assert making.status is OrderStatus.OPEN and book.best_bid() == 99
    for bad in (
        OrderRequest("z", "alice", Side.BUY, OrderType.LIMIT, 0, 100),
        OrderRequest("z", "alice", Side.BUY, OrderType.LIMIT, 1, 0),
        OrderRequest("z", "alice", Side.BUY, OrderType.MARKET, 1, 100, TimeInForce.IOC),
        OrderRequest("z", "alice", Side.BUY, OrderType.MARKET, 1),
        OrderRequest("q", "alice", Side.BUY, OrderType.LIMIT, 1, 98),
    ):
        with pytest.raises(OrderBookError):
            book.submit(bad)
