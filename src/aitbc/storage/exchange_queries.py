"""Exchange statements (DESIGN.md section 7): locked AIT, off-chain asset balances and
their ledger, orders, fills and each market's change counter.

Helpers never commit: the matching writer (services.exchange) runs a whole batch of
orders in one transaction, so an order, its fills, their ``trade_fill`` transactions
and every balance and lock they change are committed together or not at all. The
database refuses a balance below what is locked (CHECK constraints, named here), so
a bug cannot spend locked funds; those violations become :class:`InsufficientFunds`.
The statements run for every order are on the driver's cursor (storage.driver).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from aitbc.errors import InsufficientFunds
from aitbc.storage.driver import DriverStatement
from aitbc.storage.models import (
    Account,
    AssetBalance,
    AssetEntry,
    ExchangeMarket,
    ExchangeOrder,
    ExchangeTrade,
)

ACCOUNTS = cast(Table, Account.__table__)
ASSET_BALANCES = cast(Table, AssetBalance.__table__)
ASSET_ENTRIES = cast(Table, AssetEntry.__table__)
MARKETS = cast(Table, ExchangeMarket.__table__)
ORDERS = cast(Table, ExchangeOrder.__table__)
TRADES = cast(Table, ExchangeTrade.__table__)
A = ACCOUNTS.c
AB = ASSET_BALANCES.c
O = ORDERS.c  # noqa: E741
TR = TRADES.c

# The constraints that keep what is locked unspendable (and locks non-negative).
LOCK_CONSTRAINTS = (
    "ck_accounts_balance_nonnegative",
    "ck_accounts_unlocked_nonnegative",
    "ck_accounts_locked_nonnegative",
    "ck_asset_balances_unlocked",
    "ck_asset_balances_locked_nonnegative",
)
# Any PostgreSQL advisory-lock key space of the matching writers ("AITBCX" + market).
_WRITER_LOCK_BASE = 0x414954424358 << 16


def _insufficient(exc: IntegrityError) -> InsufficientFunds | None:
    message = str(exc.orig)
    if any(name in message for name in LOCK_CONSTRAINTS):
        return InsufficientFunds(
            "the balance is too low for this (part of it is locked by open orders)",
            error_code="insufficient_funds",
        )
    return None


# --- balances and locks ---------------------------------------------------------------


def ait_funds(connection: Connection, address: str, *, for_update: bool) -> tuple[int, int] | None:
    """An account's AIT ``(balance, locked)`` in µAIT, or None if it has no account."""
    return funds_of(connection, [address], "AIT", for_update=for_update).get(address)


# (asset is AIT, for update, how many addresses) -> the statement on the driver's
# cursor: the matching writer reads its batch's takers in one statement per asset.
_FUNDS_STATEMENTS: dict[tuple[bool, bool, int], DriverStatement] = {}


def _funds_statement(ait: bool, for_update: bool, count: int) -> DriverStatement:
    key = (ait, for_update, count)
    found = _FUNDS_STATEMENTS.get(key)
    if found is not None:
        return found
    names = [f"address_{index}" for index in range(count)]
    wanted: list[Any] = [bindparam(name) for name in names]
    if ait:
        statement = select(A.address, A.balance_micro, A.locked_micro).where(A.address.in_(wanted))
        statement = statement.order_by(A.address)
    else:
        names.append("asset")
        statement = select(AB.address, AB.balance_micro, AB.locked_micro).where(
            AB.address.in_(wanted), AB.asset == bindparam("asset")
        )
        statement = statement.order_by(AB.address)
    if for_update:
        statement = statement.with_for_update()
    driver = DriverStatement(statement, names)
    if len(_FUNDS_STATEMENTS) < 4096:  # bounded: one per batch size seen
        _FUNDS_STATEMENTS[key] = driver
    return driver


def funds_of(
    connection: Connection, addresses: Sequence[str], asset: str, *, for_update: bool
) -> dict[str, tuple[int, int]]:
    """``{address: (balance, locked)}`` of one asset (AIT: the accounts; another: its
    off-chain balances) for many addresses in one statement; an address without a row
    is left out. ``for_update`` locks the rows, in address order, to the end of the
    transaction (PostgreSQL), so no other writer spends them before the caller's
    commit."""
    wanted = sorted(set(addresses))
    if not wanted:
        return {}
    ait = asset == "AIT"
    statement = _funds_statement(ait, for_update, len(wanted))
    rows = statement.fetchall(connection, wanted if ait else [*wanted, asset])
    return {str(row[0]): (int(row[1]), int(row[2])) for row in rows}


def asset_funds(
    connection: Connection, address: str, asset: str, *, for_update: bool
) -> tuple[int, int]:
    """An account's ``(balance, locked)`` of an off-chain asset (zeros for none)."""
    return funds_of(connection, [address], asset, for_update=for_update).get(address, (0, 0))


def all_asset_funds(connection: Connection, address: str) -> dict[str, tuple[int, int]]:
    """Every off-chain asset ``address`` has a row for: ``{asset: (balance, locked)}``."""
    rows = connection.execute(
        select(AB.asset, AB.balance_micro, AB.locked_micro).where(AB.address == address)
    )
    return {str(row[0]): (int(row[1]), int(row[2])) for row in rows}


_CHANGE_AIT = DriverStatement(
    update(ACCOUNTS)
    .where(A.address == bindparam("target"))
    .values(
        balance_micro=A.balance_micro + bindparam("delta", type_=A.balance_micro.type),
        locked_micro=A.locked_micro + bindparam("locked_delta", type_=A.locked_micro.type),
    ),
    ("target", "delta", "locked_delta"),
)


def change_ait(connection: Connection, changes: Mapping[str, tuple[int, int]]) -> None:
    """Add ``(balance delta, locked delta)`` to each account, in address order (so two
    writers lock rows in the same order). The balance deltas must be those of ledger
    transactions appended in the same database transaction."""
    rows = [(address, delta, locked) for address, (delta, locked) in sorted(changes.items())]
    rows = [row for row in rows if row[1] or row[2]]
    try:
        _CHANGE_AIT.executemany(connection, rows)
    except IntegrityError as exc:
        refused = _insufficient(exc)
        if refused is not None:
            raise refused from exc
        raise


# A seller's first proceeds open its row: rows are opened at zero first (CHECK
# constraints see the row as inserted, so a delta cannot be inserted as a new row),
# then changed.
_OPEN_ASSET = text(
    "INSERT INTO asset_balances (address, asset, balance_micro, locked_micro) "
    "VALUES (:address, :asset, 0, 0) ON CONFLICT (address, asset) DO NOTHING"
)
_CHANGE_ASSET = DriverStatement(
    update(ASSET_BALANCES)
    .where(AB.address == bindparam("target"), AB.asset == bindparam("target_asset"))
    .values(
        balance_micro=AB.balance_micro + bindparam("delta", type_=AB.balance_micro.type),
        locked_micro=AB.locked_micro + bindparam("locked_delta", type_=AB.locked_micro.type),
    ),
    ("target", "target_asset", "delta", "locked_delta"),
)


def change_assets(
    connection: Connection, asset: str, changes: Mapping[str, tuple[int, int]]
) -> None:
    """Add ``(balance delta, locked delta)`` to each address's ``asset`` balance, in
    address order; balance deltas come with their entries (:func:`append_entries`)."""
    rows = [
        (address, asset, delta, locked)
        for address, (delta, locked) in sorted(changes.items())
        if delta or locked
    ]
    if not rows:
        return
    opened = [row[0] for row in rows if row[2] > 0]  # only a credit can open a row
    if opened:
        connection.execute(_OPEN_ASSET, [{"address": a, "asset": asset} for a in opened])
    try:
        _CHANGE_ASSET.executemany(connection, rows)
    except IntegrityError as exc:
        refused = _insufficient(exc)
        if refused is not None:
            raise refused from exc
        raise


@dataclass(frozen=True, slots=True)
class AssetEntryRow:
    """One change of an off-chain balance (the quote ledger)."""

    asset: str
    address: str
    delta_micro: int
    kind: str
    ref: str
    created_at: int


_APPEND_ENTRY = DriverStatement(
    insert(ASSET_ENTRIES),
    ("asset", "address", "delta_micro", "kind", "ref", "created_at"),
)


def append_entries(connection: Connection, entries: Sequence[AssetEntryRow]) -> None:
    """Append quote-ledger entries in the order given."""
    _APPEND_ENTRY.executemany(
        connection,
        [(e.asset, e.address, e.delta_micro, e.kind, e.ref, e.created_at) for e in entries],
    )


# --- the market's counter and writer lock -------------------------------------------------


def writer_lock(connection: Connection, market_index: int) -> None:
    """Wait for the market's matching-writer lock for this transaction (PostgreSQL: an
    advisory lock, so coordinators sharing the database match one batch at a time;
    SQLite has one writer already)."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITER_LOCK_BASE + market_index}
        )


def market_sequence(connection: Connection, market: str) -> int:
    """The market's change counter (0 before its first batch)."""
    value = connection.execute(
        select(MARKETS.c.sequence).where(MARKETS.c.market == market)
    ).scalar()
    return 0 if value is None else int(value)


def set_market_sequence(connection: Connection, market: str, sequence: int, previous: int) -> None:
    """Raise the counter from ``previous`` to ``sequence`` (the row is made at the first)."""
    if previous == 0:
        exists = connection.execute(
            select(MARKETS.c.market).where(MARKETS.c.market == market)
        ).first()
        if exists is None:
            connection.execute(insert(MARKETS), {"market": market, "sequence": sequence})
            return
    connection.execute(update(MARKETS).where(MARKETS.c.market == market).values(sequence=sequence))


# --- orders -----------------------------------------------------------------------------

ORDER_COLUMNS = (
    "order_id",
    "market",
    "owner",
    "side",
    "type",
    "time_in_force",
    "price_ticks",
    "lots",
    "filled_lots",
    "status",
    "locked_micro",
    "created_ms",
    "updated_ms",
)
_INSERT_ORDER = DriverStatement(insert(ORDERS), ORDER_COLUMNS)
_UPDATE_ORDER = DriverStatement(
    update(ORDERS)
    .where(O.order_id == bindparam("target"))
    .values(
        filled_lots=bindparam("filled"),
        status=bindparam("new_status"),
        locked_micro=bindparam("locked"),
        updated_ms=bindparam("updated"),
    ),
    ("filled", "new_status", "locked", "updated", "target"),
)


def insert_orders(connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """New orders, each a tuple in :data:`ORDER_COLUMNS` order, in time priority."""
    _INSERT_ORDER.executemany(connection, rows)


def update_orders(connection: Connection, rows: Sequence[tuple[int, str, int, int, str]]) -> None:
    """``(filled_lots, status, locked_micro, updated_ms, order_id)`` of orders changed."""
    _UPDATE_ORDER.executemany(connection, rows)


def resting_orders(connection: Connection, market: str) -> list[Row[Any]]:
    """A market's open orders in time priority (the partial index's order): what
    rebuilds its book."""
    statement = (
        select(ORDERS)
        .where(O.market == market, text("exchange_orders.status IN ('open', 'partially_filled')"))
        .order_by(O.seq)
    )
    return list(connection.execute(statement))


def order(connection: Connection, order_id: str) -> Row[Any] | None:
    """One order by id."""
    return connection.execute(select(ORDERS).where(O.order_id == order_id)).first()


def orders_of(
    connection: Connection,
    owner: str,
    *,
    statuses: Sequence[str] | None,
    market: str | None,
    limit: int,
) -> list[Row[Any]]:
    """An owner's orders newest first (by the (owner, seq) index)."""
    statement = select(ORDERS).where(O.owner == owner)
    if statuses:
        statement = statement.where(O.status.in_(statuses))
    if market is not None:
        statement = statement.where(O.market == market)
    return list(connection.execute(statement.order_by(O.seq.desc()).limit(limit)))


# --- trades -----------------------------------------------------------------------------

TRADE_COLUMNS = (
    "trade_id",
    "market",
    "price_ticks",
    "lots",
    "taker_side",
    "maker_order_id",
    "taker_order_id",
    "buyer",
    "seller",
    "base_micro",
    "quote_micro",
    "buyer_fee_micro",
    "seller_fee_micro",
    "tx_id",
    "created_ms",
)
_INSERT_TRADE = DriverStatement(insert(TRADES), TRADE_COLUMNS)


def insert_trades(connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Fills as settled, each a tuple in :data:`TRADE_COLUMNS` order."""
    _INSERT_TRADE.executemany(connection, rows)


def trades_after(connection: Connection, market: str, seq: int, limit: int) -> list[Row[Any]]:
    """A market's fills after ``seq``, oldest first."""
    statement = (
        select(TRADES).where(TR.market == market, TR.seq > seq).order_by(TR.seq).limit(limit)
    )
    return list(connection.execute(statement))


def newest_trades(connection: Connection, market: str, limit: int) -> list[Row[Any]]:
    """A market's newest fills, newest first."""
    statement = select(TRADES).where(TR.market == market).order_by(TR.seq.desc()).limit(limit)
    return list(connection.execute(statement))


def last_trade_seq(connection: Connection, market: str) -> int:
    """The market's newest fill's number (0 before any)."""
    value = connection.execute(select(func.max(TR.seq)).where(TR.market == market)).scalar()
    return 0 if value is None else int(value)


def trades_since(connection: Connection, market: str, since_ms: int) -> list[Row[Any]]:
    """``(created_ms, price_ticks, lots)`` of a market's fills since ``since_ms``, oldest
    first: what the 24-hour ticker is folded from at start-up."""
    statement = (
        select(TR.created_ms, TR.price_ticks, TR.lots)
        .where(TR.market == market, TR.created_ms >= since_ms)
        .order_by(TR.seq)
    )
    return list(connection.execute(statement))


def fills_of(connection: Connection, order_ids: Iterable[str]) -> list[Row[Any]]:
    """Every fill of the orders named (as maker or taker), oldest first."""
    wanted = sorted(set(order_ids))
    if not wanted:
        return []
    statement = (
        select(TRADES)
        .where(or_(TR.maker_order_id.in_(wanted), TR.taker_order_id.in_(wanted)))
        .order_by(TR.seq)
    )
    return list(connection.execute(statement))


def trades_of(
    connection: Connection, address: str, market: str | None, limit: int
) -> list[Row[Any]]:
    """An address's fills as buyer or seller, newest first (two short index scans)."""
    sides = []
    for column in (TR.buyer, TR.seller):
        statement = select(TRADES).where(column == address)
        if market is not None:
            statement = statement.where(TR.market == market)
        sides.append(statement.order_by(TR.seq.desc()).limit(limit).subquery())
    merged = select(sides[0]).union(select(sides[1])).subquery()
    return list(connection.execute(select(merged).order_by(merged.c.seq.desc()).limit(limit)))
