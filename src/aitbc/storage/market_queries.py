"""Marketplace statements (DESIGN.md section 7): offers, trades, and the draws of
trade jobs on their trade's escrow.

Each change is one conditional statement, so the database decides races: a trade
takes its tokens from an offer only while the offer is open, valid and has them
(``remaining_tokens >= :tokens``; a CHECK backs it), so concurrent buyers never
oversell; a job reserves its hold from a trade only while the trade is active,
unexpired and has it; a trade expires (and is refunded) once, by the statement that
moves it out of ``active``. Helpers never commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, case, func, insert, select, text, update

from aitbc.storage.models import MarketOffer, MarketTrade

OFFERS = cast(Table, MarketOffer.__table__)
TRADES = cast(Table, MarketTrade.__table__)
OF = OFFERS.c
TC = TRADES.c

SORTS = {
    "price": (OF.price_micro.asc(), OF.seq.asc()),
    "-price": (OF.price_micro.desc(), OF.seq.asc()),
    "created": (OF.seq.desc(),),
}


# --- offers -----------------------------------------------------------------------------


def insert_offer(connection: Connection, values: Mapping[str, Any]) -> Row[Any]:
    """Store a new offer; its row."""
    return connection.execute(insert(OFFERS).values(**values).returning(OFFERS)).one()


def offer(connection: Connection, offer_id: str) -> Row[Any] | None:
    """One offer by id."""
    return connection.execute(select(OFFERS).where(OF.offer_id == offer_id)).first()


def offer_page(
    connection: Connection,
    *,
    now: datetime,
    model: str | None,
    gpu_type: str | None,
    min_vram_gb: float | None,
    max_price_micro: int | None,
    region: str | None,
    miner_id: str | None,
    include_closed: bool,
    sort: str,
    limit: int,
    offset: int,
) -> tuple[list[Row[Any]], int]:
    """Offers matching the filters (open and unexpired ones unless ``include_closed``)
    in ``sort`` order, one page, and how many match in all."""
    conditions: list[Any] = []
    if not include_closed:
        conditions += [OF.status == "open", OF.valid_until > now]
    if gpu_type is not None:
        conditions.append(func.lower(OF.gpu_type).contains(gpu_type.lower(), autoescape=True))
    if min_vram_gb is not None:
        conditions.append(OF.vram_gb >= min_vram_gb)
    if max_price_micro is not None:
        conditions.append(OF.price_micro <= max_price_micro)
    if region is not None:
        conditions.append(OF.region == region)
    if miner_id is not None:
        conditions.append(OF.miner_id == miner_id)
    rows = list(connection.execute(select(OFFERS).where(*conditions).order_by(*SORTS[sort])))
    if model is not None:  # models is a JSON list: filtered here, portable on both
        rows = [row for row in rows if model in (row.models or [])]
    return rows[offset : offset + limit], len(rows)


def update_offer(
    connection: Connection, offer_id: str, miner_id: str, values: Mapping[str, Any]
) -> Row[Any] | None:
    """Change an open offer of ``miner_id``; a new ``capacity_tokens`` moves
    ``remaining_tokens`` by as much (what was sold stays sold; never below 0)."""
    changes = dict(values)
    conditions: list[Any] = [OF.offer_id == offer_id, OF.miner_id == miner_id]
    conditions.append(OF.status.in_(("open", "sold_out")))
    if "capacity_tokens" in changes:
        delta = changes["capacity_tokens"] - OF.capacity_tokens
        remaining = OF.remaining_tokens + delta
        changes["remaining_tokens"] = remaining
        changes["status"] = case((remaining > 0, "open"), else_="sold_out")
        conditions.append(remaining >= 0)
    statement = update(OFFERS).where(*conditions).values(**changes).returning(OFFERS)
    return connection.execute(statement).first()


def withdraw_offer(connection: Connection, offer_id: str, miner_id: str) -> Row[Any] | None:
    """Close an offer of ``miner_id`` to new trades (its trades go on)."""
    statement = (
        update(OFFERS)
        .where(OF.offer_id == offer_id, OF.miner_id == miner_id, OF.status != "withdrawn")
        .values(status="withdrawn")
        .returning(OFFERS)
    )
    return connection.execute(statement).first()


def take_tokens(
    connection: Connection, offer_id: str, tokens: int, now: datetime
) -> Row[Any] | None:
    """Take ``tokens`` from an open, unexpired offer that has them (sold out at 0);
    None when it has not (or is closed): the database decides between buyers."""
    remaining = OF.remaining_tokens - tokens
    statement = (
        update(OFFERS)
        .where(
            OF.offer_id == offer_id,
            OF.status == "open",
            OF.valid_until > now,
            OF.remaining_tokens >= tokens,
        )
        .values(
            remaining_tokens=remaining,
            status=case((remaining == 0, "sold_out"), else_=OF.status),
        )
        .returning(OFFERS)
    )
    return connection.execute(statement).first()


# --- trades -----------------------------------------------------------------------------


def insert_trade(connection: Connection, values: Mapping[str, Any]) -> Row[Any]:
    """Store a new trade; its row."""
    return connection.execute(insert(TRADES).values(**values).returning(TRADES)).one()


def trade(connection: Connection, trade_id: str) -> Row[Any] | None:
    """One trade by id."""
    return connection.execute(select(TRADES).where(TC.trade_id == trade_id)).first()


def trades_of(connection: Connection, client_id: str, limit: int) -> list[Row[Any]]:
    """A client's trades, newest first."""
    statement = select(TRADES).where(TC.client_id == client_id).order_by(TC.seq.desc()).limit(limit)
    return list(connection.execute(statement))


def reserve(
    connection: Connection, trade_id: str, client_id: str, hold_micro: int, now: datetime
) -> Row[Any] | None:
    """Reserve a job's hold from its client's active, unexpired trade that still has
    it; None otherwise."""
    statement = (
        update(TRADES)
        .where(
            TC.trade_id == trade_id,
            TC.client_id == client_id,
            TC.status == "active",
            TC.expires_at > now,
            TC.reserved_micro + TC.paid_micro + hold_micro <= TC.amount_micro,
        )
        .values(reserved_micro=TC.reserved_micro + hold_micro)
        .returning(TRADES)
    )
    return connection.execute(statement).first()


def release(connection: Connection, trade_id: str, hold_micro: int) -> None:
    """Give back a job's reservation (it ended without a result)."""
    connection.execute(
        update(TRADES)
        .where(TC.trade_id == trade_id)
        .values(reserved_micro=TC.reserved_micro - hold_micro)
    )


def settle_job(
    connection: Connection, trade_id: str, hold_micro: int, price_micro: int, units: int
) -> None:
    """A job of the trade completed: its reservation becomes ``price`` paid (the rest
    of the reservation is the trade's again) and its units used."""
    connection.execute(
        update(TRADES)
        .where(TC.trade_id == trade_id)
        .values(
            reserved_micro=TC.reserved_micro - hold_micro,
            paid_micro=TC.paid_micro + price_micro,
            used_tokens=TC.used_tokens + units,
        )
    )


def expire_due(connection: Connection, now: datetime, limit: int) -> list[Row[Any]]:
    """Move active trades past ``expires_at`` with no unfinished job out of
    ``active`` (each exactly once: this statement is the only one that does), with
    the rest of their amount as ``refunded``; their rows."""
    due = (
        select(TC.trade_id)
        .where(text("market_trades.status = 'active'"), TC.expires_at <= now)
        .where(TC.reserved_micro == 0)
        .limit(limit)
        .scalar_subquery()
    )
    statement = (
        update(TRADES)
        .where(TC.trade_id.in_(due), TC.status == "active", TC.reserved_micro == 0)
        .values(status="expired", refunded_micro=TC.amount_micro - TC.paid_micro)
        .returning(TRADES)
    )
    return list(connection.execute(statement))
