"""The exchange's matching writer (DESIGN.md section 7): one market's book in memory,
the orders waiting for it, and the batches that match and settle them.

Orders and cancels are queued per market and taken by one writer task a batch at a
time. A batch is one database transaction: it takes the market's writer lock
(PostgreSQL: an advisory lock, so coordinators sharing the database match one batch
at a time), rebuilds the book from the database if another process changed the
market since (its change counter says so), then matches each order in turn against
the book in memory and writes everything the batch did: the orders, their fills,
each fill's ``trade_fill`` transaction (the AIT leg) and quote-ledger entries (the
quote leg), every balance and lock those change, the events, and the counter. So a
fill is settled exactly when it is committed, and a batch that fails leaves nothing
behind, in the database or (the book is rebuilt before the next) in memory.

Funds: an order locks what it can spend before it is matched (a sell its AIT and
the highest fee; a limit buy its quote at its limit; a market buy exactly what its
sweep of the book costs), refused with 402 beyond what is available, and each fill
and the order's end release it (``domain.exchange``). The rows of the batch's
takers are read ``FOR UPDATE`` (PostgreSQL), so nothing else spends them before the
batch commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Row

from aitbc.domain.events import Channel
from aitbc.domain.exchange import (
    MICRO_PER_UNIT,
    FillSettlement,
    MarketSpec,
    fee_ppm,
    lock_released,
    settle,
)
from aitbc.domain.ledger import TxType, balance_deltas
from aitbc.domain.money import to_ait
from aitbc.domain.orderbook import (
    Fill,
    OrderBook,
    OrderRequest,
    OrderStatus,
    OrderType,
    RestingOrder,
    Side,
    TimeInForce,
)
from aitbc.errors import AITBCError, Conflict, InsufficientFunds, NotFound
from aitbc.services import payment
from aitbc.settings import MarketSettings
from aitbc.storage import event_queries, exchange_queries, ledger_queries
from aitbc.storage.event_queries import NewEvent
from aitbc.storage.exchange_queries import AssetEntryRow
from aitbc.storage.ledger_queries import NewTransaction

log = logging.getLogger(__name__)

BASE_ASSET = "AIT"
# Orders one batch takes at most: a batch is one transaction, and its orders wait
# for its commit.
MAX_BATCH_ORDERS = 512
RECENT_TRADES = 1000
TICKER_WINDOW_MS = 86_400_000
MINUTE_MS = 60_000
TRADE_EVENT_TYPE = "trade"
ORDERBOOK_EVENT_TYPE = "orderbook.update"
_TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})


def price_of(spec: MarketSpec, ticks: int) -> float:
    """A price in ticks as a quote-units number."""
    return ticks * spec.tick_micro / MICRO_PER_UNIT


def amount_of(spec: MarketSpec, lots: int) -> float:
    """An amount in lots as an AIT number."""
    return lots * spec.lot_micro / MICRO_PER_UNIT


@dataclass(slots=True)
class OrderState:
    """An order as the writer keeps it (the ``exchange_orders`` row)."""

    order_id: str
    market: str
    owner: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    price_ticks: int | None
    lots: int
    filled_lots: int
    status: OrderStatus
    locked_micro: int
    created_ms: int
    updated_ms: int

    @classmethod
    def from_row(cls, row: Row[Any]) -> OrderState:
        """From an ``exchange_orders`` row."""
        return cls(
            order_id=str(row.order_id),
            market=str(row.market),
            owner=str(row.owner),
            side=Side(row.side),
            type=OrderType(row.type),
            time_in_force=TimeInForce(row.time_in_force),
            price_ticks=None if row.price_ticks is None else int(row.price_ticks),
            lots=int(row.lots),
            filled_lots=int(row.filled_lots),
            status=OrderStatus(row.status),
            locked_micro=int(row.locked_micro),
            created_ms=int(row.created_ms),
            updated_ms=int(row.updated_ms),
        )

    def row(self) -> tuple[Any, ...]:
        """The row to insert (``exchange_queries.ORDER_COLUMNS`` order)."""
        return (
            self.order_id,
            self.market,
            self.owner,
            self.side.value,
            self.type.value,
            self.time_in_force.value,
            self.price_ticks,
            self.lots,
            self.filled_lots,
            self.status.value,
            self.locked_micro,
            self.created_ms,
            self.updated_ms,
        )


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """One settled fill (an ``exchange_trades`` row)."""

    trade_id: str
    market: str
    price_ticks: int
    lots: int
    taker_side: Side
    maker_order_id: str
    taker_order_id: str
    settlement: FillSettlement
    tx_id: str
    created_ms: int

    @classmethod
    def from_row(cls, spec: MarketSpec, row: Row[Any]) -> TradeRecord:
        """From an ``exchange_trades`` row."""
        taker_side = Side(row.taker_side)
        buys = taker_side is Side.BUY
        return cls(
            trade_id=str(row.trade_id),
            market=str(row.market),
            price_ticks=int(row.price_ticks),
            lots=int(row.lots),
            taker_side=taker_side,
            maker_order_id=str(row.maker_order_id),
            taker_order_id=str(row.taker_order_id),
            settlement=FillSettlement(
                buyer=str(row.buyer),
                seller=str(row.seller),
                buyer_order_id=str(row.taker_order_id if buys else row.maker_order_id),
                seller_order_id=str(row.maker_order_id if buys else row.taker_order_id),
                base_micro=int(row.base_micro),
                quote_micro=int(row.quote_micro),
                buyer_fee_micro=int(row.buyer_fee_micro),
                seller_fee_micro=int(row.seller_fee_micro),
            ),
            tx_id=str(row.tx_id),
            created_ms=int(row.created_ms),
        )

    def row(self) -> tuple[Any, ...]:
        """The row to insert (``exchange_queries.TRADE_COLUMNS`` order)."""
        s = self.settlement
        return (
            self.trade_id,
            self.market,
            self.price_ticks,
            self.lots,
            self.taker_side.value,
            self.maker_order_id,
            self.taker_order_id,
            s.buyer,
            s.seller,
            s.base_micro,
            s.quote_micro,
            s.buyer_fee_micro,
            s.seller_fee_micro,
            self.tx_id,
            self.created_ms,
        )

    def public(self, spec: MarketSpec) -> dict[str, Any]:
        """What everyone sees of it (``PublicTrade``)."""
        return {
            "trade_id": self.trade_id,
            "market": self.market,
            "price": price_of(spec, self.price_ticks),
            "amount": amount_of(spec, self.lots),
            "side": self.taker_side.value,
            "timestamp": self.created_ms / 1000,
        }

    def fill_for(self, spec: MarketSpec, order_id: str) -> dict[str, Any]:
        """The fill as one of its two orders sees it (``OrderFill``)."""
        s = self.settlement
        fee = s.buyer_fee_micro if order_id == s.buyer_order_id else s.seller_fee_micro
        return {
            "trade_id": self.trade_id,
            "price": price_of(spec, self.price_ticks),
            "amount": amount_of(spec, self.lots),
            "quote_amount": s.quote_micro / MICRO_PER_UNIT,
            "fee": to_ait(fee),
            "liquidity": "maker" if order_id == self.maker_order_id else "taker",
            "timestamp": self.created_ms / 1000,
        }


class TickerWindow:
    """The last 24 hours of a market's fills in one-minute buckets: ``[minute, first
    price, high, low, lots]``, oldest first."""

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.last_ticks: int | None = None

    def add(self, created_ms: int, price_ticks: int, lots: int) -> None:
        """Fold in one fill (fills come in time order)."""
        minute = created_ms // MINUTE_MS
        self.last_ticks = price_ticks
        if self.buckets and self.buckets[-1][0] >= minute:
            bucket = self.buckets[-1]
            bucket[2] = max(bucket[2], price_ticks)
            bucket[3] = min(bucket[3], price_ticks)
            bucket[4] += lots
        else:
            self.buckets.append([minute, price_ticks, price_ticks, price_ticks, lots])

    def window(self, now_ms: int) -> tuple[int | None, int | None, int, int | None]:
        """``(high, low, lots, first price)`` over the last 24 hours."""
        oldest = (now_ms - TICKER_WINDOW_MS) // MINUTE_MS
        while self.buckets and self.buckets[0][0] < oldest:
            self.buckets.popleft()
        if not self.buckets:
            return None, None, 0, None
        high = max(bucket[2] for bucket in self.buckets)
        low = min(bucket[3] for bucket in self.buckets)
        lots = sum(bucket[4] for bucket in self.buckets)
        return high, low, lots, self.buckets[0][1]


@dataclass(slots=True)
class Command:
    """One order or cancel waiting for the writer, and the future of its answer."""

    owner: str
    future: asyncio.Future[OrderOutcome]
    order: OrderRequest | None = None
    cancel_order_id: str | None = None
    is_admin: bool = False


@dataclass(slots=True)
class OrderOutcome:
    """What the writer did with one command: the order as it stands and its fills in
    this batch (a placement's), or the error it was refused with."""

    order: OrderState | None = None
    trades: list[TradeRecord] = field(default_factory=list)
    error: AITBCError | None = None


class MarketState:
    """One market in this process: its book, resting orders, recent fills and ticker
    (what reads are served from), and its queue of commands."""

    def __init__(self, spec: MarketSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.book = OrderBook()
        self.resting: dict[str, OrderState] = {}
        self.sequence = 0
        self.last_trade_seq = 0
        self.recent: deque[TradeRecord] = deque(maxlen=RECENT_TRADES)
        self.ticker = TickerWindow()
        # Rebuild from the database before the next batch (at start, after a failure).
        self.stale = True
        self.loaded = False
        self.pending: list[Command] = []
        self.writer: asyncio.Task[None] | None = None
        # Held by the writer's batches and by rebuilds, never both at once.
        self.lock = asyncio.Lock()

    # --- rebuilding ---------------------------------------------------------------------

    def rebuild(self, connection: Connection, now_ms: int) -> None:
        """Load the book and the fills this process has not seen from the database:
        the resting orders rest again in time priority, giving the same book."""
        book = OrderBook()
        resting: dict[str, OrderState] = {}
        for row in exchange_queries.resting_orders(connection, self.spec.name):
            order = OrderState.from_row(row)
            if order.price_ticks is None:
                raise RuntimeError(f"resting order {order.order_id} has no price")
            result = book.submit(
                OrderRequest(
                    order.order_id,
                    order.owner,
                    order.side,
                    OrderType.LIMIT,
                    order.lots - order.filled_lots,
                    order.price_ticks,
                    TimeInForce.POST_ONLY,  # resting orders never cross: say so if they do
                )
            )
            if result.status is not OrderStatus.OPEN:
                raise RuntimeError(f"{self.spec.name}: stored resting orders cross the book")
            resting[order.order_id] = order
        self.book, self.resting = book, resting
        self.sequence = exchange_queries.market_sequence(connection, self.spec.name)
        self._load_trades(connection, now_ms)
        self.stale = False
        self.loaded = True

    def _load_trades(self, connection: Connection, now_ms: int) -> None:
        name = self.spec.name
        if not self.loaded:
            self.ticker = TickerWindow()
            for row in exchange_queries.trades_since(connection, name, now_ms - TICKER_WINDOW_MS):
                self.ticker.add(int(row.created_ms), int(row.price_ticks), int(row.lots))
            newest = exchange_queries.newest_trades(connection, name, RECENT_TRADES)
            self.recent.clear()
            self.recent.extend(TradeRecord.from_row(self.spec, row) for row in reversed(newest))
            self.last_trade_seq = exchange_queries.last_trade_seq(connection, name)
            return
        while True:  # what other processes settled since
            rows = exchange_queries.trades_after(connection, name, self.last_trade_seq, 5000)
            for row in rows:
                trade = TradeRecord.from_row(self.spec, row)
                self.recent.append(trade)
                self.ticker.add(trade.created_ms, trade.price_ticks, trade.lots)
                self.last_trade_seq = int(row.seq)
            if len(rows) < 5000:
                return

    # --- one batch ----------------------------------------------------------------------

    def run_batch(
        self,
        connection: Connection,
        commands: Sequence[Command],
        now_ms: int,
        new_id: Callable[[str], str],
    ) -> tuple[list[OrderOutcome], list[TradeRecord], list[NewEvent], bool]:
        """Match and settle ``commands`` in the caller's transaction (see the module
        docstring): their outcomes, the fills, the events written and whether the
        market changed (its counter was raised). The in-memory book is changed as it
        goes; the caller marks it stale if the transaction does not commit."""
        exchange_queries.writer_lock(connection, self.index)
        stored_sequence = exchange_queries.market_sequence(connection, self.spec.name)
        if self.stale or stored_sequence != self.sequence:
            self.rebuild(connection, now_ms)
        self.stale = True  # until this batch commits
        batch = _Batch(self, connection, now_ms, new_id, commands)
        outcomes: list[OrderOutcome] = []
        for command in commands:
            try:
                if command.order is not None:
                    outcomes.append(batch.place(command.order))
                else:
                    outcomes.append(batch.cancel(command))
            except AITBCError as exc:
                outcomes.append(OrderOutcome(error=exc))
        events = batch.flush()
        if batch.changed:
            exchange_queries.set_market_sequence(
                connection, self.spec.name, self.sequence + 1, stored_sequence
            )
        return outcomes, batch.trades, events, batch.changed

    def committed(self, trades: Sequence[TradeRecord], changed: bool) -> None:
        """After the batch's commit: its fills join the recent list and the ticker."""
        for trade in trades:
            self.recent.append(trade)
            self.ticker.add(trade.created_ms, trade.price_ticks, trade.lots)
        if changed:
            self.sequence += 1
        self.stale = False


class _Batch:
    """The changes of one batch, written at its end (:meth:`flush`)."""

    def __init__(
        self,
        market: MarketState,
        connection: Connection,
        now_ms: int,
        new_id: Callable[[str], str],
        commands: Sequence[Command],
    ) -> None:
        self.market = market
        self.spec = market.spec
        self.connection = connection
        self.now_ms = now_ms
        self.now_s = now_ms // 1000
        self.new_id = new_id
        # (address, asset) -> [balance, locked] as read at the start, FOR UPDATE.
        self.funds: dict[tuple[str, str], list[int]] = {}
        # address -> [balance delta, locked delta], per asset.
        self.ait: dict[str, list[int]] = {}
        self.quote: dict[str, list[int]] = {}
        self.new_orders: dict[str, OrderState] = {}
        self.changed_orders: dict[str, OrderState] = {}
        self.trades: list[TradeRecord] = []
        self.transactions: list[NewTransaction] = []
        self.entries: list[AssetEntryRow] = []
        self.levels: set[tuple[Side, int]] = set()
        self.changed = False
        self._read_funds(sorted({command.owner for command in commands}))

    def _read_funds(self, owners: list[str]) -> None:
        """The takers' funds, two statements a batch (rows locked in address order:
        the order every writer locks accounts in)."""
        lock = self.connection.dialect.name == "postgresql"
        for asset in (BASE_ASSET, self.spec.quote):
            found = exchange_queries.funds_of(self.connection, owners, asset, for_update=lock)
            for owner in owners:
                self.funds[(owner, asset)] = list(found.get(owner, (0, 0)))

    def _available(self, owner: str, asset: str) -> int:
        balance, locked = self.funds[(owner, asset)]
        delta, locked_delta = (self.ait if asset == BASE_ASSET else self.quote).get(owner, (0, 0))
        return balance + delta - locked - locked_delta

    @staticmethod
    def _add(changes: dict[str, list[int]], owner: str, delta: int, locked: int) -> None:
        entry = changes.get(owner)
        if entry is None:
            changes[owner] = [delta, locked]
        else:
            entry[0] += delta
            entry[1] += locked

    def _lock(self, order: OrderState, amount: int) -> None:
        """Change ``order``'s lock by ``amount`` (negative: release)."""
        order.locked_micro += amount
        if order.locked_micro < 0:
            raise RuntimeError(f"order {order.order_id} would lock less than nothing")
        changes = self.ait if order.side is Side.SELL else self.quote
        self._add(changes, order.owner, 0, amount)

    def _touch(self, order: OrderState) -> None:
        order.updated_ms = self.now_ms
        if order.order_id not in self.new_orders:
            self.changed_orders[order.order_id] = order

    def _end(self, order: OrderState, status: OrderStatus) -> None:
        order.status = status
        if order.locked_micro:
            self._lock(order, -order.locked_micro)
        self.market.resting.pop(order.order_id, None)
        self._touch(order)

    # --- commands -----------------------------------------------------------------------

    def place(self, request: OrderRequest) -> OrderOutcome:
        """Lock, match, settle one order."""
        spec, book = self.spec, self.market.book
        owner = request.owner
        limit = request.price_ticks
        if request.side is Side.SELL:
            asset, lock = BASE_ASSET, spec.sell_lock_micro(request.lots)
        elif limit is not None:
            asset, lock = spec.quote, spec.notional_micro(request.lots, limit)
        else:
            _, cost_ticks = book.sweep_cost(owner, Side.BUY, request.lots)
            asset, lock = spec.quote, cost_ticks * spec.quote_per_lot_tick
        available = self._available(owner, asset)
        if lock > available:
            raise InsufficientFunds(
                f"the order needs {lock / MICRO_PER_UNIT} {asset}; "
                f"{max(available, 0) / MICRO_PER_UNIT} {asset} is available",
                error_code="insufficient_funds",
            )
        order = OrderState(
            order_id=request.order_id,
            market=spec.name,
            owner=owner,
            side=request.side,
            type=request.type,
            time_in_force=request.time_in_force,
            price_ticks=request.price_ticks,
            lots=request.lots,
            filled_lots=0,
            status=OrderStatus.OPEN,
            locked_micro=0,
            created_ms=self.now_ms,
            updated_ms=self.now_ms,
        )
        self.new_orders[order.order_id] = order
        self._lock(order, lock)
        result = book.submit(request)
        self.changed = True
        for maker in result.cancelled_makers:  # self-trade prevention: expire maker
            self._cancel_resting(maker)
        trades = [self._settle(fill, order) for fill in result.fills]
        order.filled_lots = result.filled_lots
        if not result.resting_lots:
            # Closed: an order that stopped short of its amount (ioc, market) is
            # cancelled, with what it filled ("partially_filled" is a working order).
            status = result.status if result.status in _TERMINAL else OrderStatus.CANCELLED
            self._end(order, status)
        else:
            order.status = result.status
            self.market.resting[order.order_id] = order
            if limit is not None:
                self.levels.add((order.side, limit))
        return OrderOutcome(order=order, trades=trades)

    def cancel(self, command: Command) -> OrderOutcome:
        """Take one resting order off the book; 404 for another's or an unknown order,
        409 for one that is no longer open."""
        order_id = command.cancel_order_id or ""
        order = self.market.resting.get(order_id)
        if order is None or (order.owner != command.owner and not command.is_admin):
            row = exchange_queries.order(self.connection, order_id)
            if row is None or (row.owner != command.owner and not command.is_admin):
                raise NotFound(f"no order {order_id}", error_code="order_not_found")
            if order is None:
                raise Conflict(f"order {order_id} is {row.status}", error_code="order_not_open")
        resting = self.market.book.cancel(order_id)
        if resting is None:
            raise RuntimeError(f"order {order_id} is resting but not on the book")
        self.levels.add((resting.side, resting.price_ticks))
        self.changed = True
        self._end(order, OrderStatus.CANCELLED)
        return OrderOutcome(order=order)

    def _cancel_resting(self, maker: RestingOrder) -> None:
        order = self.market.resting[maker.order_id]
        self.levels.add((maker.side, maker.price_ticks))
        self._end(order, OrderStatus.CANCELLED)

    def _settle(self, fill: Fill, taker: OrderState) -> TradeRecord:
        spec = self.spec
        maker = self.market.resting[fill.maker_order_id]
        settlement = settle(spec, fill)
        trade_id = self.new_id("trd")
        tx = payment.new_transaction(
            TxType.TRADE_FILL,
            sender=settlement.seller,
            recipient=settlement.buyer,
            amount_micro=settlement.buyer_receives_micro,
            fee_micro=settlement.fees_micro,
            ref=trade_id,
            timestamp=self.now_s,
            extra={"quote_amount": to_ait(settlement.quote_micro)},
        )
        self.transactions.append(tx)
        for address, delta in balance_deltas(
            tx.sender, tx.recipient, tx.amount_micro, tx.fee_micro
        ).items():
            self._add(self.ait, address, delta, 0)
        quote = settlement.quote_micro
        self._add(self.quote, settlement.buyer, -quote, 0)
        self._add(self.quote, settlement.seller, quote, 0)
        asset = spec.quote
        self.entries.append(
            AssetEntryRow(asset, settlement.buyer, -quote, "trade", trade_id, self.now_s)
        )
        self.entries.append(
            AssetEntryRow(asset, settlement.seller, quote, "trade", trade_id, self.now_s)
        )
        for order in (maker, taker):
            self._lock(
                order,
                -lock_released(
                    spec, order.side, order.type, order.price_ticks, settlement, fill.lots
                ),
            )
        maker.filled_lots += fill.lots
        self.levels.add((maker.side, fill.price_ticks))
        if maker.filled_lots == maker.lots:
            self._end(maker, OrderStatus.FILLED)
        else:
            maker.status = OrderStatus.PARTIALLY_FILLED
            self._touch(maker)
        trade = TradeRecord(
            trade_id=trade_id,
            market=spec.name,
            price_ticks=fill.price_ticks,
            lots=fill.lots,
            taker_side=fill.taker_side,
            maker_order_id=fill.maker_order_id,
            taker_order_id=fill.taker_order_id,
            settlement=settlement,
            tx_id=tx.id,
            created_ms=self.now_ms,
        )
        self.trades.append(trade)
        return trade

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> list[NewEvent]:
        """Write the batch: balances and locks, the ledger's and the quote ledger's
        entries, orders, fills, events. Returns the events written."""
        connection = self.connection
        exchange_queries.change_ait(connection, {a: (d, lk) for a, (d, lk) in self.ait.items()})
        exchange_queries.change_assets(
            connection, self.spec.quote, {a: (d, lk) for a, (d, lk) in self.quote.items()}
        )
        ledger_queries.append_transactions(connection, self.transactions)
        exchange_queries.append_entries(connection, self.entries)
        exchange_queries.insert_orders(connection, [o.row() for o in self.new_orders.values()])
        exchange_queries.update_orders(
            connection,
            [
                (o.filled_lots, o.status.value, o.locked_micro, o.updated_ms, o.order_id)
                for o in self.changed_orders.values()
            ],
        )
        exchange_queries.insert_trades(connection, [trade.row() for trade in self.trades])
        events = self._events()
        event_queries.append(connection, events)
        return events

    def _events(self) -> list[NewEvent]:
        spec, now = self.spec, self.now_s
        events = [
            NewEvent(
                Channel.TRADES.value,
                TRADE_EVENT_TYPE,
                None,
                None,
                now,
                orjson.dumps(trade.public(spec)).decode(),
            )
            for trade in self.trades
        ]
        if self.levels:
            book = self.market.book
            bids = sorted((price for side, price in self.levels if side is Side.BUY), reverse=True)
            asks = sorted(price for side, price in self.levels if side is Side.SELL)
            data = {
                "market": spec.name,
                "sequence": self.market.sequence + 1,
                "bids": [
                    [price_of(spec, p), amount_of(spec, book.level_lots(Side.BUY, p))] for p in bids
                ],
                "asks": [
                    [price_of(spec, p), amount_of(spec, book.level_lots(Side.SELL, p))]
                    for p in asks
                ],
            }
            events.append(
                NewEvent(
                    Channel.ORDERBOOK.value,
                    ORDERBOOK_EVENT_TYPE,
                    None,
                    None,
                    now,
                    orjson.dumps(data).decode(),
                )
            )
        return events


def market_spec(config: MarketSettings) -> MarketSpec:
    """A configured market as the engine's integers."""
    return MarketSpec(
        name=f"{BASE_ASSET}-{config.quote}",
        base=BASE_ASSET,
        quote=config.quote,
        tick_micro=int(config.tick_size * MICRO_PER_UNIT),
        lot_micro=int(config.lot_size * MICRO_PER_UNIT),
        maker_fee_ppm=fee_ppm(config.maker_fee),
        taker_fee_ppm=fee_ppm(config.taker_fee),
    )


@dataclass
class Exchange:
    """Every market of this process (built from settings, loaded at start-up)."""

    markets: dict[str, MarketState] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, configs: list[MarketSettings]) -> Exchange:
        """One :class:`MarketState` per configured market (names must be unique)."""
        markets: dict[str, MarketState] = {}
        for index, config in enumerate(configs):
            spec = market_spec(config)
            if spec.name in markets:
                raise ValueError(f"market {spec.name} is configured twice")
            markets[spec.name] = MarketState(spec, index)
        return cls(markets)

    def market(self, name: str) -> MarketState:
        """A market by name; 404 for one not configured."""
        found = self.markets.get(name)
        if found is None:
            raise NotFound(
                f"no market {name} (markets: {', '.join(sorted(self.markets))})",
                error_code="unknown_market",
            )
        return found

    def quote_assets(self) -> set[str]:
        """The off-chain assets of the configured markets."""
        return {state.spec.quote for state in self.markets.values()}
