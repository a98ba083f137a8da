"""Exchange use cases (DESIGN.md section 7): markets, orders and cancels (through each
market's matching writer, services.matching), the caller's orders and fills, the
public book, ticker and trades (from memory), and admin deposits of quote assets.

Orders are queued for their market and a writer task takes them a batch at a time:
an order's answer waits for the commit of the batch it was in. A batch that fails
(the database, say) fails its orders with the error and leaves the book to be
rebuilt from the database before the next one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from aitbc.domain.exchange import MICRO_PER_UNIT, MarketSpec, parse_micro
from aitbc.domain.orderbook import OrderRequest, OrderType, Side, TimeInForce
from aitbc.errors import (
    AITBCError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ValidationFailed,
)
from aitbc.exchange_schemas import DepositRequest
from aitbc.exchange_schemas import OrderRequest as OrderBody
from aitbc.services.auth import require_role
from aitbc.services.events import publish
from aitbc.services.matching import (
    MAX_BATCH_ORDERS,
    Command,
    MarketState,
    OrderOutcome,
    OrderState,
    TradeRecord,
    amount_of,
    price_of,
)
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import exchange_queries, ledger_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.exchange_queries import AssetEntryRow

log = logging.getLogger(__name__)

MAX_ORDERS_LISTED = 100
# Event-loop turns the writer waits before taking a batch (see _drain).
BATCH_GATHER_TURNS = 2
# A batch the database refuses as a whole is matched again this many times in all.
MAX_BATCH_ATTEMPTS = 2
STATUS_GROUPS = {
    "open": ("open", "partially_filled"),
    "closed": ("filled", "cancelled", "rejected"),
}


def _now_ms(runtime: Runtime) -> int:
    return int(runtime.clock().timestamp() * 1000)


# --- starting and following -------------------------------------------------------------


async def refresh(runtime: Runtime, state: MarketState, *, force: bool = False) -> None:
    """Rebuild ``state`` from the database if another process changed its market."""
    if state.writer is not None and not state.writer.done():
        return  # the writer checks before each batch itself
    async with state.lock:
        if not force and not state.stale:
            stored = await read(runtime.engine, exchange_queries.market_sequence, state.spec.name)
            if stored == state.sequence:
                return
        await read(runtime.engine, state.rebuild, _now_ms(runtime))


async def start(runtime: Runtime) -> None:
    """Load every market's book, fills and ticker (at start-up): reads are served
    from memory from the first request on."""
    for state in runtime.exchange.markets.values():
        await refresh(runtime, state, force=True)
        log.info(
            "market %s: %d resting orders, sequence %d",
            state.spec.name,
            len(state.book),
            state.sequence,
            extra={"market": state.spec.name},
        )


async def follow_forever(runtime: Runtime) -> None:
    """Keep the in-memory books current with batches other coordinators commit (the
    same database), every ``event_poll_seconds``."""
    while True:
        await asyncio.sleep(runtime.settings.event_poll_seconds)
        for state in runtime.exchange.markets.values():
            try:
                await refresh(runtime, state, force=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing market %s failed", state.spec.name)


# --- the writer ---------------------------------------------------------------------------


async def _submit(runtime: Runtime, state: MarketState, command: Command) -> OrderOutcome:
    state.pending.append(command)
    if state.writer is None or state.writer.done():
        state.writer = asyncio.create_task(_drain(runtime, state), name=f"match-{state.spec.name}")
    # The batch goes on if this request is cancelled: its answer is what was committed.
    outcome = await asyncio.shield(command.future)
    if outcome.error is not None:
        raise outcome.error
    return outcome


async def _drain(runtime: Runtime, state: MarketState) -> None:
    while state.pending:
        # Group commit: let the requests already read reach the queue first, so one
        # transaction (one commit) takes as many orders as are in flight.
        for _ in range(BATCH_GATHER_TURNS):
            await asyncio.sleep(0)
        batch = state.pending[:MAX_BATCH_ORDERS]
        del state.pending[:MAX_BATCH_ORDERS]
        async with state.lock:
            await _run_batch(runtime, state, batch)


async def _run_batch(runtime: Runtime, state: MarketState, batch: list[Command]) -> None:
    attempt = 1
    while True:
        try:
            outcomes, trades, events, changed = await transaction(
                runtime.engine, state.run_batch, batch, _now_ms(runtime), runtime.new_id
            )
            break
        except (ServiceUnavailable, DBAPIError) as exc:
            # The database refused the batch as a whole (a deadlock with another
            # writer, a lost connection): nothing of it was written. The book is
            # rebuilt from the database and the batch matched again, once.
            state.stale = True
            if attempt < MAX_BATCH_ATTEMPTS:
                attempt += 1
                log.warning(
                    "a batch of %d orders on %s was refused by the database (%s); "
                    "matching it again",
                    len(batch),
                    state.spec.name,
                    exc,
                )
                continue
            # Rebuilt before the answers: a caller told "failed" reads the book as
            # the database holds it.
            await _restore(runtime, state)
            _fail(state, batch, exc)
            return
        except BaseException as exc:
            state.stale = True  # the book in memory may hold what did not commit
            if isinstance(exc, asyncio.CancelledError):
                _fail(state, batch, exc)
                raise
            await _restore(runtime, state)
            _fail(state, batch, exc)
            return
    state.committed(trades, changed)
    runtime.metrics.exchange_orders.inc(sum(1 for c in batch if c.order is not None))
    runtime.metrics.exchange_trades.inc(len(trades))
    runtime.metrics.exchange_batches.inc()
    publish(runtime, events)
    for command, outcome in zip(batch, outcomes, strict=True):
        if not command.future.done():
            command.future.set_result(outcome)


async def _restore(runtime: Runtime, state: MarketState) -> None:
    """Rebuild the book after a batch that did not commit, so reads from memory show
    what the database holds (if the database is unreachable now, the next batch or
    the follower rebuilds it)."""
    try:
        await read(runtime.engine, state.rebuild, _now_ms(runtime))
    except Exception:  # the database may be what failed: leave it stale
        log.warning("rebuilding market %s failed; it stays stale", state.spec.name)


def _fail(state: MarketState, batch: list[Command], exc: BaseException) -> None:
    """Answer every order of a batch that was not committed with the error."""
    error = (
        exc
        if isinstance(exc, AITBCError)
        else AITBCError("the order could not be matched; try again", error_code="internal")
    )
    if not isinstance(exc, AITBCError | asyncio.CancelledError):
        log.exception("a batch of %d orders on %s failed", len(batch), state.spec.name)
    for command in batch:
        if not command.future.done():
            command.future.set_result(OrderOutcome(error=error))


# --- orders -----------------------------------------------------------------------------


def _owner_of(principal: Principal) -> str:
    require_role(principal, "client", "miner")
    if principal.owner_id is None:
        raise PermissionDenied("this key has no account", error_code="no_account")
    return principal.owner_id


def _order_request(runtime: Runtime, spec: MarketSpec, owner: str, body: OrderBody) -> OrderRequest:
    """The engine's request for ``body``: 422 off the tick or lot, or for a price on
    a market order (or none on a limit order)."""
    lots = spec.lots(parse_micro(body.amount, "amount"))
    order_type = OrderType(body.type)
    if order_type is OrderType.LIMIT:
        if body.price is None:
            raise ValidationFailed("a limit order has a price", error_code="price_required")
        ticks: int | None = spec.ticks(parse_micro(body.price, "price"))
        tif = TimeInForce(body.time_in_force or "gtc")
    else:
        if body.price is not None:
            raise ValidationFailed("a market order has no price", error_code="price_not_allowed")
        if body.time_in_force not in (None, "ioc"):
            raise ValidationFailed(
                "a market order is immediate-or-cancel (time_in_force ioc)",
                error_code="invalid_time_in_force",
            )
        ticks, tif = None, TimeInForce.IOC
    return OrderRequest(
        order_id=runtime.new_id("ord"),
        owner=owner,
        side=Side(body.side),
        type=order_type,
        lots=lots,
        price_ticks=ticks,
        time_in_force=tif,
    )


async def place_order(runtime: Runtime, principal: Principal, body: OrderBody) -> dict[str, Any]:
    """Match and settle one order; 402 beyond what the caller has available."""
    owner = _owner_of(principal)
    state = runtime.exchange.market(body.market)
    request = _order_request(runtime, state.spec, owner, body)
    future: asyncio.Future[OrderOutcome] = asyncio.get_running_loop().create_future()
    outcome = await _submit(runtime, state, Command(owner=owner, future=future, order=request))
    return order_view(state.spec, _order_of(outcome), outcome.trades)


async def cancel_order(runtime: Runtime, principal: Principal, order_id: str) -> dict[str, Any]:
    """Cancel one of the caller's resting orders (admins: any); 404 for another's or
    an unknown one, 409 for one already filled or cancelled."""
    if not principal.is_admin:
        _owner_of(principal)
    owner = principal.owner_id or ""
    for state in runtime.exchange.markets.values():
        if order_id in state.resting:
            break
    else:
        row = await read(runtime.engine, exchange_queries.order, order_id)
        if row is None or (row.owner != owner and not principal.is_admin):
            raise NotFound(f"no order {order_id}", error_code="order_not_found")
        state = runtime.exchange.market(str(row.market))
    future: asyncio.Future[OrderOutcome] = asyncio.get_running_loop().create_future()
    command = Command(
        owner=owner, future=future, cancel_order_id=order_id, is_admin=principal.is_admin
    )
    outcome = await _submit(runtime, state, command)
    fills = await read(runtime.engine, exchange_queries.fills_of, [order_id])
    trades = [TradeRecord.from_row(state.spec, row) for row in fills]
    return order_view(state.spec, _order_of(outcome), trades)


def _order_of(outcome: OrderOutcome) -> OrderState:
    if outcome.order is None:  # the writer answers an order or an error, never neither
        raise RuntimeError("the matching writer gave no order")
    return outcome.order


def order_view(spec: MarketSpec, order: OrderState, trades: list[TradeRecord]) -> dict[str, Any]:
    """An ``Order`` body."""
    return {
        "order_id": order.order_id,
        "market": order.market,
        "side": order.side.value,
        "type": order.type.value,
        "time_in_force": order.time_in_force.value,
        "price": None if order.price_ticks is None else price_of(spec, order.price_ticks),
        "amount": amount_of(spec, order.lots),
        "filled": amount_of(spec, order.filled_lots),
        "remaining": amount_of(spec, order.lots - order.filled_lots),
        "status": order.status.value,
        "locked": order.locked_micro / MICRO_PER_UNIT,
        "created_at": order.created_ms / 1000,
        "fills": [trade.fill_for(spec, order.order_id) for trade in trades],
    }


async def get_order(runtime: Runtime, principal: Principal, order_id: str) -> dict[str, Any]:
    """One of the caller's orders with all its fills (admins: any)."""

    def work(connection: Connection) -> tuple[Any, list[Any]]:
        row = exchange_queries.order(connection, order_id)
        if row is None:
            return None, []
        return row, exchange_queries.fills_of(connection, [order_id])

    row, fills = await read(runtime.engine, work)
    if row is None or (row.owner != principal.owner_id and not principal.is_admin):
        raise NotFound(f"no order {order_id}", error_code="order_not_found")
    spec = runtime.exchange.market(str(row.market)).spec
    return order_view(
        spec, OrderState.from_row(row), [TradeRecord.from_row(spec, f) for f in fills]
    )


async def list_orders(
    runtime: Runtime,
    principal: Principal,
    *,
    status: str | None,
    market: str | None,
    limit: int,
) -> dict[str, Any]:
    """The caller's orders, newest first, with their fills; ``status`` is one of the
    order statuses, or ``open`` (open and partially filled) or ``closed``."""
    owner = _owner_of(principal)
    if market is not None:
        runtime.exchange.market(market)
    statuses = STATUS_GROUPS.get(status, (status,)) if status else None

    def work(connection: Connection) -> tuple[list[Any], list[Any]]:
        rows = exchange_queries.orders_of(
            connection, owner, statuses=statuses, market=market, limit=limit
        )
        fills = exchange_queries.fills_of(connection, [str(row.order_id) for row in rows])
        return rows, fills

    rows, fills = await read(runtime.engine, work)
    # Each fill belongs to its maker's and its taker's order (oldest first, as read).
    by_order: dict[str, list[Any]] = {}
    for fill in fills:
        for order_id in (str(fill.maker_order_id), str(fill.taker_order_id)):
            by_order.setdefault(order_id, []).append(fill)
    views = []
    for row in rows:
        spec = runtime.exchange.market(str(row.market)).spec
        trades = [TradeRecord.from_row(spec, fill) for fill in by_order.get(str(row.order_id), [])]
        views.append(order_view(spec, OrderState.from_row(row), trades))
    return {"orders": views}


async def my_trades(
    runtime: Runtime, principal: Principal, *, market: str | None, limit: int
) -> list[dict[str, Any]]:
    """The caller's fills as buyer or seller, newest first, from its side."""
    owner = _owner_of(principal)
    if market is not None:
        runtime.exchange.market(market)
    rows = await read(runtime.engine, exchange_queries.trades_of, owner, market, limit)
    views = []
    for row in rows:
        spec = runtime.exchange.market(str(row.market)).spec
        trade = TradeRecord.from_row(spec, row)
        mine = (
            trade.settlement.buyer_order_id
            if trade.settlement.buyer == owner
            else trade.settlement.seller_order_id
        )
        view = trade.public(spec) | trade.fill_for(spec, mine)
        view["order_id"] = mine
        view["side"] = "buy" if trade.settlement.buyer == owner else "sell"
        views.append(view)
    return views


# --- public reads, from memory ------------------------------------------------------------


def markets(runtime: Runtime) -> list[dict[str, Any]]:
    """Every market with its sizes and fees."""
    return [
        {
            "market": spec.name,
            "base": spec.base,
            "quote": spec.quote,
            "tick_size": spec.tick_micro / MICRO_PER_UNIT,
            "lot_size": spec.lot_micro / MICRO_PER_UNIT,
            "maker_fee": spec.maker_fee_ppm / 1_000_000,
            "taker_fee": spec.taker_fee_ppm / 1_000_000,
        }
        for spec in (state.spec for state in runtime.exchange.markets.values())
    ]


def orderbook(runtime: Runtime, market: str, depth: int) -> dict[str, Any]:
    """The book's best ``depth`` levels a side and its sequence."""
    state = runtime.exchange.market(market)
    spec = state.spec
    bids, asks = state.book.depth(depth)
    return {
        "market": spec.name,
        "bids": [[price_of(spec, p), amount_of(spec, lots)] for p, lots in bids],
        "asks": [[price_of(spec, p), amount_of(spec, lots)] for p, lots in asks],
        "sequence": state.sequence,
    }


def ticker(runtime: Runtime, market: str) -> dict[str, Any]:
    """Last price, best bid and ask, and the last 24 hours."""
    state = runtime.exchange.market(market)
    spec = state.spec
    high, low, lots, first = state.ticker.window(_now_ms(runtime))
    last = state.ticker.last_ticks

    def price(ticks: int | None) -> float | None:
        return None if ticks is None else price_of(spec, ticks)

    return {
        "market": spec.name,
        "last": price(last),
        "bid": price(state.book.best_bid()),
        "ask": price(state.book.best_ask()),
        "high_24h": price(high),
        "low_24h": price(low),
        "volume_24h": amount_of(spec, lots),
        "change_24h": None if first is None or last is None else round((last - first) / first, 6),
    }


def recent_trades(runtime: Runtime, market: str, limit: int) -> list[dict[str, Any]]:
    """A market's newest fills, newest first."""
    state = runtime.exchange.market(market)
    newest = list(state.recent)[-limit:]
    return [trade.public(state.spec) for trade in reversed(newest)]


# --- deposits ---------------------------------------------------------------------------


async def deposit(runtime: Runtime, principal: Principal, body: DepositRequest) -> dict[str, Any]:
    """Credit an off-chain asset to an account (admin only), as one quote-ledger entry."""
    require_role(principal, "admin")
    if body.asset not in runtime.exchange.quote_assets():
        raise InvalidRequest(
            f"{body.asset} is not a quote asset of any market "
            f"({', '.join(sorted(runtime.exchange.quote_assets()))})",
            error_code="unknown_asset",
        )
    amount = parse_micro(body.amount, "amount")
    deposit_id = runtime.new_id("dep")
    now = int(runtime.clock().timestamp())

    def work(connection: Connection) -> int:
        if ledger_queries.account(connection, body.address) is None:
            raise NotFound(f"no account {body.address}", error_code="account_not_found")
        balance, _ = exchange_queries.asset_funds(
            connection, body.address, body.asset, for_update=False
        )
        if balance + amount > 10**15:
            raise ValidationFailed("a balance stays below 10^9", error_code="balance_limit")
        exchange_queries.change_assets(connection, body.asset, {body.address: (amount, 0)})
        exchange_queries.append_entries(
            connection,
            [AssetEntryRow(body.asset, body.address, amount, "deposit", deposit_id, now)],
        )
        return balance + amount

    balance = await transaction(runtime.engine, work)
    return {
        "deposit_id": deposit_id,
        "address": body.address,
        "asset": body.asset,
        "amount": amount / MICRO_PER_UNIT,
        "balance": balance / MICRO_PER_UNIT,
    }
