"""The AIT exchange over HTTP (issue 17; DESIGN.md section 7), on both databases.

Orders lock what they can spend, match by price-time priority at the maker's price,
and settle each fill in the batch's transaction: the AIT leg a ``trade_fill`` on the
chain, the quote leg in the quote ledger, fees to ``treasury``. After every test the
books balance (:func:`check_books`): AIT adds up to what was minted, USD to what was
deposited, every lock is exactly what the open orders hold, and the sealed chain
verifies.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from aitbc.api import create_app
from aitbc.domain.signing import KeyRing
from aitbc.sdk.chain import HttpChainSource, verify_chain
from aitbc.services import exchange
from aitbc.services.ledger import seal_once
from aitbc.storage import exchange_queries
from aitbc.storage.db import read
from tests.conftest import Coordinator, make_settings
from tests.integration.helpers import assert_error, ok
from tests.ws_client import event_socket, serve_in_loop

MARKET = "AIT-USD"
GRANT = 1000.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"client_grant": GRANT}


async def trader(coordinator: Coordinator, usd: float = 0) -> tuple[str, dict[str, str]]:
    client_id, headers = await coordinator.new_client()
    if usd:
        await deposit(coordinator, client_id, usd)
    return client_id, headers


async def deposit(coordinator: Coordinator, address: str, amount: float) -> dict[str, Any]:
    body: dict[str, Any] = ok(
        await coordinator.http.post(
            "/v1/admin/deposits",
            json={"address": address, "asset": "USD", "amount": amount},
            headers=coordinator.admin_headers,
        ),
        201,
    )
    return body


async def order(
    coordinator: Coordinator, headers: dict[str, str], status: int = 201, **fields: Any
) -> dict[str, Any]:
    payload = {"market": MARKET, "type": "limit", **fields}
    response = await coordinator.http.post("/v1/exchange/orders", json=payload, headers=headers)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def me(coordinator: Coordinator, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    return body


async def book(coordinator: Coordinator, depth: int = 10) -> dict[str, Any]:
    body: dict[str, Any] = ok(
        await coordinator.http.get(f"/v1/exchange/orderbook?market={MARKET}&depth={depth}")
    )
    return body


async def check_books(coordinator: Coordinator) -> None:
    """Nothing created or destroyed; locks are exactly the open orders'; the chain
    (sealed now) verifies through the public API."""

    def sums(connection: Connection) -> dict[str, Any]:
        one = lambda sql: connection.execute(text(sql)).scalar() or 0  # noqa: E731
        return {
            "ait": one("SELECT SUM(balance_micro) FROM accounts"),
            "minted": one("SELECT SUM(amount_micro) FROM ledger_transactions WHERE type='mint'"),
            "usd": one("SELECT SUM(balance_micro) FROM asset_balances WHERE asset='USD'"),
            "usd_entries": one("SELECT SUM(delta_micro) FROM asset_entries WHERE asset='USD'"),
            "deposits": one(
                "SELECT SUM(delta_micro) FROM asset_entries WHERE kind='deposit' AND asset='USD'"
            ),
            "negative": one(
                "SELECT COUNT(*) FROM accounts WHERE balance_micro < locked_micro"
                " OR locked_micro < 0"
            ),
            "ait_locks": connection.execute(
                text(
                    "SELECT a.address, a.locked_micro, COALESCE(SUM(o.locked_micro), 0)"
                    " FROM accounts a LEFT JOIN exchange_orders o ON o.owner = a.address"
                    " AND o.side = 'sell' AND o.status IN ('open', 'partially_filled')"
                    " GROUP BY a.address, a.locked_micro"
                )
            ).all(),
            "usd_locks": connection.execute(
                text(
                    "SELECT b.address, b.locked_micro, COALESCE(SUM(o.locked_micro), 0)"
                    " FROM asset_balances b LEFT JOIN exchange_orders o ON o.owner = b.address"
                    " AND o.side = 'buy' AND o.status IN ('open', 'partially_filled')"
                    " GROUP BY b.address, b.locked_micro"
                )
            ).all(),
            "closed_locks": one(
                "SELECT COUNT(*) FROM exchange_orders WHERE locked_micro <> 0"
                " AND status NOT IN ('open', 'partially_filled')"
            ),
        }

    found = await read(coordinator.runtime.engine, sums)
    assert found["ait"] == found["minted"]
    assert found["usd"] == found["usd_entries"] == found["deposits"]
    assert found["negative"] == 0
    assert found["closed_locks"] == 0
    for address, locked, by_orders in found["ait_locks"] + found["usd_locks"]:
        assert locked == by_orders, address
    while await seal_once(coordinator.runtime) is not None:
        coordinator.clock.advance(1)
    keys = KeyRing.from_document(ok(await coordinator.http.get("/v1/keys")))
    report = await verify_chain(HttpChainSource(coordinator.http), keys)
    assert report.ok, report


async def test_markets_are_listed_with_their_sizes_and_fees(coordinator: Coordinator) -> None:
    markets = ok(await coordinator.http.get("/v1/exchange/markets"))
    assert markets == [
        {
            "market": "AIT-USD",
            "base": "AIT",
            "quote": "USD",
            "tick_size": 0.0001,
            "lot_size": 0.01,
            "maker_fee": 0.001,
            "taker_fee": 0.002,
        }
    ]


async def test_a_deposit_shows_in_the_account(coordinator: Coordinator) -> None:
    alice, headers = await trader(coordinator)
    assert (await me(coordinator, headers))["assets"] == {"USD": {"balance": 0, "locked": 0}}
    body = await deposit(coordinator, alice, 250.5)
    assert body["balance"] == 250.5 and body["deposit_id"].startswith("dep_")
    account = await me(coordinator, headers)
    assert account["assets"] == {"USD": {"balance": 250.5, "locked": 0}}
    assert account["locked"] == 0
    _, other = await trader(coordinator)
    response = await coordinator.http.post(
        "/v1/admin/deposits", json={"address": alice, "asset": "USD", "amount": 1}, headers=other
    )
    assert_error(response, 403)
    response = await coordinator.http.post(
        "/v1/admin/deposits",
        json={"address": alice, "asset": "EUR", "amount": 1},
        headers=coordinator.admin_headers,
    )
    assert_error(response, 400, "unknown_asset")
    response = await coordinator.http.post(
        "/v1/admin/deposits",
        json={"address": "client_" + "0" * 32, "asset": "USD", "amount": 1},
        headers=coordinator.admin_headers,
    )
    assert_error(response, 404, "account_not_found")
    await check_books(coordinator)


async def test_a_crossing_order_fills_at_the_makers_price_and_settles_both_legs(
    coordinator: Coordinator,
) -> None:
    seller, seller_headers = await trader(coordinator)
    buyer, buyer_headers = await trader(coordinator, usd=100)
    ask = await order(coordinator, seller_headers, side="sell", price="2.5", amount="10")
    assert ask["status"] == "open" and ask["fills"] == []
    # 10 AIT plus the highest fee it may pay (0.2 %) is locked, and not spendable.
    assert ask["locked"] == 10.02
    assert (await me(coordinator, seller_headers))["locked"] == 10.02
    transfer = await coordinator.http.post(
        "/v1/transfers",
        json={"to": buyer, "amount": GRANT - 10, "nonce": 1},
        headers=seller_headers,
    )
    assert_error(transfer, 402, "insufficient_funds")
    assert (await book(coordinator))["asks"] == [[2.5, 10.0]]

    bid = await order(coordinator, buyer_headers, side="buy", price="3", amount="4")
    assert bid["status"] == "filled" and bid["filled"] == 4.0 and bid["remaining"] == 0
    [fill] = bid["fills"]
    assert fill["price"] == 2.5 and fill["amount"] == 4.0 and fill["quote_amount"] == 10.0
    assert fill["liquidity"] == "taker" and fill["fee"] == 0.008  # taker 0.2 % of 4 AIT
    buyer_account = await me(coordinator, buyer_headers)
    # It locked 4 x 3 = 12 USD, paid 10 and got the rest back.
    assert buyer_account["assets"] == {"USD": {"balance": 90.0, "locked": 0}}
    assert buyer_account["balance"] == GRANT + 4 - 0.008
    seller_account = await me(coordinator, seller_headers)
    assert seller_account["balance"] == GRANT - 4 - 0.004  # maker 0.1 %
    assert seller_account["assets"]["USD"] == {"balance": 10.0, "locked": 0}
    assert seller_account["locked"] == round(10.02 - 4.004, 6)
    treasury = ok(await coordinator.http.get("/v1/accounts/treasury"))
    assert treasury["balance"] == 0.012

    txs = ok(await coordinator.http.get("/v1/explorer/transactions?type=trade_fill"))
    [tx] = [record["transaction"] for record in txs]
    assert tx["from"] == seller and tx["to"] == buyer
    assert tx["amount"] == 3.992 and tx["fee"] == 0.012 and tx["quote_amount"] == 10.0
    assert tx["ref"] == fill["trade_id"]
    assert (await book(coordinator))["asks"] == [[2.5, 6.0]]
    ticker = ok(await coordinator.http.get(f"/v1/exchange/ticker?market={MARKET}"))
    assert ticker["last"] == 2.5 and ticker["ask"] == 2.5 and ticker["bid"] is None
    assert ticker["volume_24h"] == 4.0 and ticker["change_24h"] == 0
    trades = ok(await coordinator.http.get(f"/v1/exchange/trades?market={MARKET}"))
    assert [(t["price"], t["amount"], t["side"]) for t in trades] == [(2.5, 4.0, "buy")]
    mine = ok(await coordinator.http.get("/v1/exchange/trades?mine=true", headers=seller_headers))
    assert [(t["side"], t["liquidity"], t["fee"]) for t in mine] == [("sell", "maker", 0.004)]
    orders = ok(await coordinator.http.get("/v1/exchange/orders", headers=seller_headers))
    [listed] = orders["orders"]
    assert listed["status"] == "partially_filled" and listed["filled"] == 4.0
    assert [f["liquidity"] for f in listed["fills"]] == ["maker"]
    await check_books(coordinator)


async def test_price_time_priority_partial_fills_and_a_market_sweep(
    coordinator: Coordinator,
) -> None:
    makers = [await trader(coordinator) for _ in range(3)]
    _, buyer = await trader(coordinator, usd=1000)
    first = await order(coordinator, makers[0][1], side="sell", price="2", amount="1")
    second = await order(coordinator, makers[1][1], side="sell", price="2", amount="1")
    cheaper = await order(coordinator, makers[2][1], side="sell", price="1.5", amount="1")
    swept = await order(coordinator, buyer, side="buy", type="market", amount="2.5")
    fills = [(f["price"], f["amount"]) for f in swept["fills"]]
    assert fills == [(1.5, 1.0), (2.0, 1.0), (2.0, 0.5)]
    assert swept["status"] == "filled" and swept["time_in_force"] == "ioc"
    assert (await book(coordinator))["asks"] == [[2.0, 0.5]]
    statuses = [
        ok(await coordinator.http.get(f"/v1/exchange/orders/{o['order_id']}", headers=h))["status"]
        for o, h in ((first, makers[0][1]), (second, makers[1][1]), (cheaper, makers[2][1]))
    ]
    assert statuses == ["filled", "partially_filled", "filled"]
    # A market order the book cannot fill: what is there fills, the rest is cancelled
    # (a closed order is "cancelled" with what it filled; partially_filled is working).
    rest = await order(coordinator, buyer, side="buy", type="market", amount="3")
    assert rest["status"] == "cancelled" and rest["filled"] == 0.5
    empty = await order(coordinator, buyer, side="buy", type="market", amount="1")
    assert empty["status"] == "cancelled" and empty["filled"] == 0
    await check_books(coordinator)


async def test_time_in_force_and_self_trade_prevention(coordinator: Coordinator) -> None:
    _, alice = await trader(coordinator, usd=100)
    _, bob = await trader(coordinator, usd=100)
    ask = await order(coordinator, alice, side="sell", price="2", amount="1")
    post = await order(
        coordinator, bob, side="buy", price="2", amount="1", time_in_force="post_only"
    )
    assert post["status"] == "rejected" and post["locked"] == 0
    # Every batch that changed the market raised its counter here and in memory alike
    # (a lag would make the next batch rebuild the book).
    state = coordinator.runtime.exchange.markets[MARKET]
    stored = await read(coordinator.runtime.engine, exchange_queries.market_sequence, MARKET)
    assert state.sequence == stored
    resting_bid = await order(
        coordinator, bob, side="buy", price="1", amount="1", time_in_force="post_only"
    )
    assert resting_bid["status"] == "open"
    ioc = await order(coordinator, bob, side="buy", price="2", amount="3", time_in_force="ioc")
    assert ioc["status"] == "cancelled" and ioc["filled"] == 1.0 and ioc["locked"] == 0
    # Alice's resting ask meets her own bid: her ask is cancelled, not traded with.
    own_ask = await order(coordinator, alice, side="sell", price="1.5", amount="1")
    own_bid = await order(coordinator, alice, side="buy", price="1.6", amount="1")
    assert own_bid["status"] == "open" and own_bid["fills"] == []
    cancelled = ok(
        await coordinator.http.get(f"/v1/exchange/orders/{own_ask['order_id']}", headers=alice)
    )
    assert cancelled["status"] == "cancelled" and cancelled["locked"] == 0
    assert ask["order_id"] != own_ask["order_id"]
    assert (await book(coordinator))["bids"] == [[1.6, 1.0], [1.0, 1.0]]
    await check_books(coordinator)


async def test_bad_orders_are_clear_errors_that_lock_nothing(coordinator: Coordinator) -> None:
    _, alice = await trader(coordinator, usd=10)
    _, bob = await trader(coordinator)
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"side": "sell", "price": "2", "amount": "0"}, 422, None),
        ({"side": "sell", "price": "2", "amount": "-1"}, 422, None),
        ({"side": "sell", "price": "2.00001", "amount": "1"}, 422, "off_tick"),
        ({"side": "sell", "price": "2", "amount": "1.001"}, 422, "off_lot"),
        ({"side": "sell", "amount": "1"}, 422, "price_required"),
        ({"side": "sell", "type": "market", "price": "2", "amount": "1"}, 422, None),
        ({"side": "sell", "price": "2", "amount": "1", "market": "AIT-EUR"}, 404, None),
        ({"side": "sell", "price": "2", "amount": "1", "extra": 1}, 422, None),
        ({"side": "sell", "price": "2", "amount": str(GRANT)}, 402, "insufficient_funds"),
        ({"side": "buy", "price": "2", "amount": "6"}, 402, "insufficient_funds"),
    ]
    for fields, status, code in cases:
        payload = {"market": MARKET, "type": "limit", **fields}
        response = await coordinator.http.post("/v1/exchange/orders", json=payload, headers=alice)
        assert_error(response, status, code)
    assert (await me(coordinator, alice))["locked"] == 0
    assert (await me(coordinator, alice))["assets"]["USD"] == {"balance": 10.0, "locked": 0}
    response = await coordinator.http.post(
        "/v1/exchange/orders", json={"market": MARKET, "side": "buy", "amount": 1, "price": 1}
    )
    assert_error(response, 401)
    # Cancelling: another's order is unknown to you (404), a closed one is 409.
    mine = await order(coordinator, alice, side="buy", price="1", amount="1")
    assert_error(
        await coordinator.http.delete(f"/v1/exchange/orders/{mine['order_id']}", headers=bob), 404
    )
    assert_error(await coordinator.http.delete("/v1/exchange/orders/ord_nothing", headers=bob), 404)
    cancelled = ok(
        await coordinator.http.delete(f"/v1/exchange/orders/{mine['order_id']}", headers=alice)
    )
    assert cancelled["status"] == "cancelled" and cancelled["locked"] == 0
    again = await coordinator.http.delete(f"/v1/exchange/orders/{mine['order_id']}", headers=alice)
    assert_error(again, 409, "order_not_open")
    assert (await me(coordinator, alice))["assets"]["USD"] == {"balance": 10.0, "locked": 0}
    await check_books(coordinator)


async def test_many_traders_at_once_never_overspend(coordinator: Coordinator) -> None:
    traders = [await trader(coordinator, usd=50) for _ in range(8)]
    rng = random.Random(17)

    async def trade(headers: dict[str, str], count: int) -> list[int]:
        statuses = []
        for _ in range(count):
            side = rng.choice(["buy", "sell"])
            fields: dict[str, Any] = {"side": side, "amount": str(rng.randint(1, 400) / 100)}
            if rng.random() < 0.15:
                fields["type"] = "market"
            else:
                fields["price"] = str(rng.randint(90, 110) / 100)
                fields["time_in_force"] = rng.choice(["gtc", "gtc", "ioc", "post_only"])
            payload = {"market": MARKET, "type": "limit", **fields}
            response = await coordinator.http.post(
                "/v1/exchange/orders", json=payload, headers=headers
            )
            statuses.append(response.status_code)
        return statuses

    results = await asyncio.gather(*(trade(headers, 25) for _, headers in traders))
    codes = {code for statuses in results for code in statuses}
    assert codes <= {201, 402}, codes
    assert 201 in codes
    trades = ok(await coordinator.http.get(f"/v1/exchange/trades?market={MARKET}&limit=1000"))
    assert trades, "random crossing orders must have traded"
    snapshot = await book(coordinator, depth=1000)
    bids, asks = snapshot["bids"], snapshot["asks"]
    assert not bids or not asks or bids[0][0] < asks[0][0]
    await check_books(coordinator)


async def test_a_restart_rebuilds_the_same_book_and_two_coordinators_share_it(
    coordinator: Coordinator, tmp_path: Path, backend: str
) -> None:
    traders = [await trader(coordinator, usd=100) for _ in range(4)]
    rng = random.Random(3)
    for index in range(40):
        _, headers = traders[index % 4]
        side = rng.choice(["buy", "sell"])
        price = str(rng.randint(95, 105) / 100)
        await order(coordinator, headers, side=side, price=price, amount="1")
    before = await book(coordinator, depth=1000)
    state = coordinator.runtime.exchange.markets[MARKET]
    resting_before = [(o.order_id, o.remaining_lots) for o in state.book.resting()]

    # A second coordinator on the same database builds the same book at start-up...
    other = create_app(
        make_settings(tmp_path, backend, client_grant=GRANT),
        clock=coordinator.clock,
        run_sweeper=False,
    )
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://other") as http:
            other_state = other.state.runtime.exchange.markets[MARKET]
            assert [(o.order_id, o.remaining_lots) for o in other_state.book.resting()] == (
                resting_before
            )
            rebuilt = ok(await http.get(f"/v1/exchange/orderbook?market={MARKET}&depth=1000"))
            assert rebuilt == before
            # ...and orders placed on either are matched against the one book.
            _, headers = traders[0]
            best_ask = before["asks"][0][0]
            taken = ok(
                await http.post(
                    "/v1/exchange/orders",
                    json={
                        "market": MARKET,
                        "side": "buy",
                        "price": best_ask,
                        "amount": 0.5,
                        "time_in_force": "ioc",
                    },
                    headers=traders[1][1],
                ),
                201,
            )
            assert taken["filled"] in (0.5, 0.0)  # 0 only if the best ask was its own
            again = await order(coordinator, headers, side="sell", price="5", amount="1")
            assert again["status"] == "open"
            # The other catches up (its follower does this every poll interval).
            await exchange.refresh(other.state.runtime, other_state)
            ours = await book(coordinator, depth=1000)
            theirs = ok(await http.get(f"/v1/exchange/orderbook?market={MARKET}&depth=1000"))
            assert theirs == ours
    await check_books(coordinator)


async def test_fills_and_book_changes_are_public_events(coordinator: Coordinator) -> None:
    _, seller = await trader(coordinator)
    _, buyer = await trader(coordinator, usd=100)
    async with serve_in_loop(coordinator.app) as base, event_socket(base + "/ws") as ws:
        assert (await ws.subscribe("trades", "orderbook"))["subscribed"] == [
            "trades",
            "orderbook",
        ]
        await order(coordinator, seller, side="sell", price="2", amount="3")
        rested = await ws.next_event()
        assert rested["channel"] == "orderbook" and rested["type"] == "orderbook.update"
        assert rested["data"]["asks"] == [[2.0, 3.0]] and rested["data"]["bids"] == []
        filled = await order(coordinator, buyer, side="buy", price="2", amount="1")
        trade = await ws.next_event()
        assert trade["channel"] == "trades" and trade["type"] == "trade"
        assert trade["data"] == {
            "trade_id": filled["fills"][0]["trade_id"],
            "market": MARKET,
            "price": 2.0,
            "amount": 1.0,
            "side": "buy",
            "timestamp": trade["data"]["timestamp"],
        }
        level = await ws.next_event()
        assert level["data"]["asks"] == [[2.0, 2.0]]
        assert level["data"]["sequence"] == (await book(coordinator))["sequence"]
        assert level["seq"] > trade["seq"] > rested["seq"]


async def test_a_batch_the_database_refuses_is_matched_again_or_leaves_nothing(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, seller = await trader(coordinator)
    _, buyer = await trader(coordinator, usd=100)
    await order(coordinator, seller, side="sell", price="2", amount="3")
    real_insert = exchange_queries.insert_trades
    failures = {"left": 1}

    def refusing(connection: Connection, rows: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("INSERT INTO exchange_trades", {}, RuntimeError("deadlock"))
        real_insert(connection, rows)

    monkeypatch.setattr(exchange_queries, "insert_trades", refusing)
    # Refused once (a deadlock, say): the batch is matched again and commits once.
    filled = await order(coordinator, buyer, side="buy", price="2", amount="1")
    assert filled["status"] == "filled" and len(filled["fills"]) == 1
    trades = ok(await coordinator.http.get(f"/v1/exchange/trades?market={MARKET}"))
    assert [t["trade_id"] for t in trades] == [filled["fills"][0]["trade_id"]]
    assert (await book(coordinator))["asks"] == [[2.0, 2.0]]
    # Refused every time: 503, nothing written, and the book is as it was.
    failures["left"] = 10
    response = await coordinator.http.post(
        "/v1/exchange/orders",
        json={"market": MARKET, "side": "buy", "type": "limit", "price": "2", "amount": "1"},
        headers=buyer,
    )
    assert_error(response, 503, "database_unavailable")
    assert (await book(coordinator))["asks"] == [[2.0, 2.0]]
    assert (await me(coordinator, buyer))["assets"]["USD"] == {"balance": 98.0, "locked": 0}
    failures["left"] = 0
    again = await order(coordinator, buyer, side="buy", price="2", amount="1")
    assert again["status"] == "filled"
    await check_books(coordinator)
