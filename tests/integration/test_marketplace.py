"""The compute marketplace over HTTP (issue 17; DESIGN.md section 7), on both
databases: offers listed, filtered, changed and withdrawn; trades that escrow their
amount and never oversell an offer, even with many buyers at once; jobs on a trade
that run only on its miner at its price and draw on it; the unused rest refunded at
expiry exactly once. After each test the books balance and the chain verifies.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, claim_ok, complete, ok, sweep
from tests.integration.test_exchange import check_books

GRANT = 100.0
MINER = "market-miner"
OTHER = "other-miner"
MODEL = "smollm2-135m"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"client_grant": GRANT}


def later(coordinator: Coordinator, hours: float = 1) -> str:
    return (coordinator.clock() + timedelta(hours=hours)).isoformat()


async def offer(
    coordinator: Coordinator, miner: dict[str, str], status: int = 201, **fields: Any
) -> dict[str, Any]:
    payload = {
        "miner_id": MINER,
        "models": [MODEL],
        "price": 2,
        "capacity_tokens": 10_000,
        "valid_until": later(coordinator),
        **fields,
    }
    response = await coordinator.http.post("/v1/marketplace/offers", json=payload, headers=miner)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def buy(coordinator: Coordinator, client: dict[str, str], offer_id: str, tokens: int) -> Any:
    return await coordinator.http.post(
        "/v1/marketplace/trades", json={"offer_id": offer_id, "tokens": tokens}, headers=client
    )


async def me(coordinator: Coordinator, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    return body


async def test_offers_are_listed_filtered_changed_and_withdrawn(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner(MINER, price=0.5)
    cheap = await offer(coordinator, miner, price=1, gpu_type="RTX 4090", vram_gb=24, region="eu")
    dear = await offer(coordinator, miner, price=3, models=["llama3.2"], region="us")
    assert cheap["status"] == "open" and cheap["remaining_tokens"] == 10_000
    listed = ok(await coordinator.http.get("/v1/marketplace/offers"))
    assert [o["offer_id"] for o in listed["offers"]] == [cheap["offer_id"], dear["offer_id"]]
    assert listed["total"] == 2 and listed["has_more"] is False
    by_price = ok(await coordinator.http.get("/v1/marketplace/offers?sort=-price&limit=1"))
    assert [o["offer_id"] for o in by_price["offers"]] == [dear["offer_id"]]
    assert by_price["has_more"] is True
    for query, expected in (
        ("model=llama3.2", [dear]),
        ("gpu_type=4090", [cheap]),
        ("min_vram_gb=16", [cheap]),
        ("max_price=2", [cheap]),
        ("region=us", [dear]),
    ):
        found = ok(await coordinator.http.get(f"/v1/marketplace/offers?{query}"))
        assert [o["offer_id"] for o in found["offers"]] == [o["offer_id"] for o in expected]
    changed = ok(
        await coordinator.http.patch(
            f"/v1/marketplace/offers/{cheap['offer_id']}",
            json={"price": 1.5, "capacity_tokens": 20_000},
            headers=miner,
        )
    )
    assert changed["price"] == 1.5 and changed["remaining_tokens"] == 20_000
    other = await coordinator.new_miner(OTHER)
    assert_error(
        await coordinator.http.patch(
            f"/v1/marketplace/offers/{cheap['offer_id']}", json={"price": 9}, headers=other
        ),
        404,
    )
    _, client = await coordinator.new_client()
    assert_error(
        await coordinator.http.post("/v1/marketplace/offers", json={}, headers=client), 422
    )
    forged = await coordinator.http.post(
        "/v1/marketplace/offers",
        json={
            "miner_id": OTHER,
            "models": [MODEL],
            "price": 1,
            "capacity_tokens": 1,
            "valid_until": later(coordinator),
        },
        headers=miner,
    )
    assert_error(forged, 403)
    await offer(coordinator, miner, 400, valid_until=later(coordinator, -1))
    withdrawn = ok(
        await coordinator.http.delete(f"/v1/marketplace/offers/{dear['offer_id']}", headers=miner)
    )
    assert withdrawn["status"] == "withdrawn"
    assert_error(await buy(coordinator, client, dear["offer_id"], 10), 409, "offer_withdrawn")
    coordinator.clock.advance(2 * 3600)
    assert_error(await buy(coordinator, client, cheap["offer_id"], 10), 409, "offer_expired")
    assert ok(await coordinator.http.get("/v1/marketplace/offers"))["offers"] == []
    closed = ok(await coordinator.http.get("/v1/marketplace/offers?include_closed=true"))
    assert sorted(o["status"] for o in closed["offers"]) == ["expired", "withdrawn"]
    await check_books(coordinator)


async def test_a_trade_escrows_its_amount_and_its_jobs_run_on_its_miner_at_its_price(
    coordinator: Coordinator,
) -> None:
    miner = await coordinator.new_miner(MINER, price=5)  # dearer than the offer
    other = await coordinator.new_miner(OTHER, price=0.1)
    made = await offer(coordinator, miner, price=2, capacity_tokens=5_000)
    client_id, client = await coordinator.new_client()
    response = await buy(coordinator, client, made["offer_id"], 4_000)
    assert response.status_code == 201, response.text
    trade = response.json()
    assert trade["amount"] == 8.0 and trade["status"] == "active" and trade["miner_id"] == MINER
    assert (await me(coordinator, client))["balance"] == GRANT - 8
    assert (await me(coordinator, client))["held"] == 8.0
    assert (
        ok(await coordinator.http.get(f"/v1/marketplace/offers/{made['offer_id']}"))[
            "remaining_tokens"
        ]
        == 1_000
    )
    assert_error(await buy(coordinator, client, made["offer_id"], 1_001), 409, "sold_out")
    holds = ok(
        await coordinator.http.get(
            f"/v1/explorer/transactions?address={client_id}&type=escrow_hold"
        )
    )
    assert [h["transaction"]["ref"] for h in holds] == [trade["trade_id"]]

    job = await coordinator.submit(client, trade_id=trade["trade_id"], params={"max_tokens": 100})
    assert job["trade_id"] == trade["trade_id"] and job["max_price"] == 2.0
    # Another miner, cheaper, is not offered it nor may claim it; the trade's miner
    # may, at the trade's price (above its own, below what it posts now).
    waiting = asyncio.create_task(
        coordinator.http.get(f"/v1/jobs/available?miner_id={OTHER}&wait=0.5", headers=other)
    )
    await asyncio.sleep(0.05)
    second = await coordinator.submit(client, trade_id=trade["trade_id"], params={"max_tokens": 10})
    assert (await waiting).json() is None
    polled = ok(
        await coordinator.http.get(f"/v1/jobs/available?miner_id={MINER}&wait=0", headers=miner)
    )
    assert polled["job_id"] in (job["job_id"], second["job_id"])
    ok(await coordinator.http.post(f"/v1/jobs/{second['job_id']}/cancel", headers=client))
    refused = await coordinator.claim(job["job_id"], OTHER, other)
    assert refused.status_code == 409, refused.text
    await claim_ok(coordinator, job["job_id"], MINER, miner)
    receipt = ok(await complete(coordinator, job["job_id"], MINER, miner))
    assert receipt["unit_price"] == 2.0
    units = receipt["units"]
    price = receipt["price"]
    after = ok(
        await coordinator.http.get(f"/v1/marketplace/trades/{trade['trade_id']}", headers=client)
    )
    assert after["used_tokens"] == units and after["paid"] == price and after["reserved"] == 0
    # The client paid nothing beyond the trade; its held is the trade's rest.
    account = await me(coordinator, client)
    assert account["balance"] == GRANT - 8
    assert round(account["held"], 6) == round(8 - price, 6)
    seller_view = ok(
        await coordinator.http.get(f"/v1/marketplace/trades/{trade['trade_id']}", headers=miner)
    )
    assert seller_view["trade_id"] == trade["trade_id"]
    assert_error(
        await coordinator.http.get(f"/v1/marketplace/trades/{trade['trade_id']}", headers=other),
        404,
    )
    await check_books(coordinator)


async def test_jobs_on_a_trade_are_bounded_by_it_and_the_rest_is_refunded_once(
    coordinator: Coordinator,
) -> None:
    miner = await coordinator.new_miner(MINER, price=1)
    made = await offer(coordinator, miner, price=1, capacity_tokens=2_000)
    _, client = await coordinator.new_client()
    _, stranger = await coordinator.new_client()
    trade = (await buy(coordinator, client, made["offer_id"], 1_000)).json()
    trade_id = trade["trade_id"]
    # Another client cannot use it; a job that may cost more than is left is 409;
    # a job naming a model the trade does not cover is 400; no max_price with a trade.
    response = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi", "model": MODEL, "trade_id": trade_id}, headers=stranger
    )
    assert_error(response, 404, "trade_not_found")
    big = await coordinator.http.post(
        "/v1/jobs",
        json={"prompt": "hi", "model": MODEL, "trade_id": trade_id, "params": {"max_tokens": 900}},
        headers=client,
    )
    assert_error(big, 409, "trade_exhausted")
    wrong_model = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi", "model": "llama3.2", "trade_id": trade_id}, headers=client
    )
    assert_error(wrong_model, 400, "model_not_in_trade")
    priced = await coordinator.http.post(
        "/v1/jobs",
        json={"prompt": "hi", "model": MODEL, "trade_id": trade_id, "max_price": 1},
        headers=client,
    )
    assert_error(priced, 400, "max_price_with_trade")
    # A cancelled job gives its reservation back.
    job = await coordinator.submit(client, trade_id=trade_id, params={"max_tokens": 200})
    reserved = ok(await coordinator.http.get(f"/v1/marketplace/trades/{trade_id}", headers=client))
    assert reserved["reserved"] > 0
    ok(await coordinator.http.post(f"/v1/jobs/{job['job_id']}/cancel", headers=client))
    released = ok(await coordinator.http.get(f"/v1/marketplace/trades/{trade_id}", headers=client))
    assert released["reserved"] == 0 and released["paid"] == 0
    # At expiry the whole amount comes back, once.
    balance_before = (await me(coordinator, client))["balance"]
    coordinator.clock.advance(2 * 3600)
    assert_error(
        await coordinator.http.post(
            "/v1/jobs", json={"prompt": "hi", "model": MODEL, "trade_id": trade_id}, headers=client
        ),
        409,
        "trade_expired",
    )
    counts = await sweep(coordinator)
    assert counts["trades_expired"] == 1
    assert (await sweep(coordinator))["trades_expired"] == 0
    expired = ok(await coordinator.http.get(f"/v1/marketplace/trades/{trade_id}", headers=client))
    assert expired["status"] == "expired" and expired["refunded"] == 1.0
    account = await me(coordinator, client)
    assert account["balance"] == balance_before + 1.0 and account["held"] == 0
    await check_books(coordinator)


async def test_many_buyers_at_once_never_oversell_an_offer(coordinator: Coordinator) -> None:
    miner = await coordinator.new_miner(MINER, price=1)
    made = await offer(coordinator, miner, price=1, capacity_tokens=5_000)
    buyers = [await coordinator.new_client() for _ in range(12)]

    async def attempt(headers: dict[str, str]) -> list[int]:
        codes = []
        for _ in range(4):
            codes.append((await buy(coordinator, headers, made["offer_id"], 300)).status_code)
        return codes

    results = await asyncio.gather(*(attempt(headers) for _, headers in buyers))
    codes = [code for batch in results for code in batch]
    assert set(codes) <= {201, 409}, codes
    assert codes.count(201) == 5_000 // 300  # 16 trades fit, the rest are sold out
    after = ok(await coordinator.http.get(f"/v1/marketplace/offers/{made['offer_id']}"))
    assert after["remaining_tokens"] == 5_000 - 16 * 300
    assert after["status"] == "open"
    last = await buy(coordinator, buyers[0][1], made["offer_id"], after["remaining_tokens"])
    assert last.status_code == 201
    sold = ok(await coordinator.http.get(f"/v1/marketplace/offers/{made['offer_id']}"))
    assert sold["remaining_tokens"] == 0 and sold["status"] == "sold_out"
    await check_books(coordinator)


async def test_money_is_conserved_across_jobs_trades_orders_and_fees(
    coordinator: Coordinator,
) -> None:
    miner = await coordinator.new_miner(MINER, price=1)
    made = await offer(coordinator, miner, price=1, capacity_tokens=50_000)
    clients = [await coordinator.new_client() for _ in range(4)]
    for client_id, _ in clients:
        ok(
            await coordinator.http.post(
                "/v1/admin/deposits",
                json={"address": client_id, "asset": "USD", "amount": 100},
                headers=coordinator.admin_headers,
            ),
            201,
        )

    async def busy(headers: dict[str, str]) -> None:
        trade = (await buy(coordinator, headers, made["offer_id"], 5_000)).json()
        job = await coordinator.submit(
            headers, trade_id=trade["trade_id"], params={"max_tokens": 50}
        )
        plain = await coordinator.submit(headers, params={"max_tokens": 50})
        for order in (
            {"side": "sell", "price": "1.0", "amount": "3"},
            {"side": "buy", "price": "1.01", "amount": "2"},
            {"side": "buy", "type": "market", "amount": "0.5"},
        ):
            await coordinator.http.post(
                "/v1/exchange/orders", json={"market": "AIT-USD", **order}, headers=headers
            )
        for job_id in (job["job_id"], plain["job_id"]):
            await claim_ok(coordinator, job_id, MINER, miner)
            ok(await complete(coordinator, job_id, MINER, miner))

    for _, headers in clients:
        await busy(headers)
    coordinator.clock.advance(2 * 3600)
    assert (await sweep(coordinator))["trades_expired"] == len(clients)
    await check_books(coordinator)
