"""Paying for jobs and moving AIT (issue 14; DESIGN.md section 6).

Submit holds the most a job can cost or answers 402 with nothing written; completion
pays exactly the receipt's price (the miner's share plus the treasury's fee) and
refunds the rest; every other end refunds the whole hold, once. Transfers are
nonce-protected, signed when the sender registered a key, and never double-spend.
After every test the books balance: the live balances add up to what was minted,
escrow holds exactly the unfinished jobs' holds, and each account's ``held`` is the
sum of its unfinished jobs' holds.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sqlalchemy import text

from aitbc.domain.ledger import TxType, sign_transaction, transaction_body
from aitbc.domain.money import price_for_units, to_micro
from aitbc.domain.payment import job_hold_micro
from aitbc.domain.signing import SigningKey
from tests.conftest import Coordinator
from tests.integration.helpers import (
    assert_error,
    claim_ok,
    complete,
    fail,
    get_job,
    ok,
    sweep,
)

GRANT = 100.0
PROMPT = "Say hello"


async def account(coordinator: Coordinator, headers: dict[str, str]) -> dict[str, Any]:
    """``{address, balance, held}`` of the caller; jobs never lock funds (only the
    exchange's open orders do), so ``locked`` and the off-chain assets are zero."""
    body: dict[str, Any] = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    assert body.pop("locked") == 0
    assert body.pop("assets") == {"USD": {"balance": 0, "locked": 0}}
    return body


async def balance_of(coordinator: Coordinator, address: str) -> float:
    body = ok(await coordinator.http.get(f"/v1/accounts/{address}"))
    balance: float = body["balance"]
    return balance


async def check_books(coordinator: Coordinator) -> None:
    """Money is neither created nor destroyed: balances add up to the mints, escrow
    holds exactly the unfinished jobs' holds, and so does each client's ``held``."""

    def read(connection: Any) -> tuple[int, int, int, int, list[tuple[str, int, int]]]:
        total = connection.execute(text("SELECT SUM(balance_micro) FROM accounts")).scalar()
        minted = connection.execute(
            text("SELECT SUM(amount_micro) FROM ledger_transactions WHERE type = 'mint'")
        ).scalar()
        escrow = connection.execute(
            text("SELECT balance_micro FROM accounts WHERE address = 'escrow'")
        ).scalar()
        unfinished = connection.execute(
            text(
                "SELECT COALESCE(SUM(held_micro), 0) FROM jobs "
                "WHERE status IN ('pending', 'running')"
            )
        ).scalar()
        per_client = connection.execute(
            text(
                "SELECT a.address, a.held_micro, COALESCE(SUM(j.held_micro), 0) "
                "FROM accounts a LEFT JOIN jobs j ON j.client_id = a.address "
                "AND j.status IN ('pending', 'running') GROUP BY a.address, a.held_micro"
            )
        ).all()
        return (
            int(total or 0),
            int(minted or 0),
            int(escrow),
            int(unfinished),
            [tuple(row) for row in per_client],
        )

    async with coordinator.runtime.engine.connect() as connection:
        total, minted, escrow, unfinished, per_client = await connection.run_sync(read)
    assert total == minted
    assert escrow == unfinished
    for address, held, holds in per_client:
        assert held == holds, address


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The default starting grant (the shared test settings raise it)."""
    return {"client_grant": GRANT}


def expected_hold(prompt: str = PROMPT, max_tokens: int = 256, max_price: str = "1") -> float:
    return job_hold_micro(prompt, max_tokens, to_micro(max_price)) / 1_000_000


async def test_a_new_client_gets_the_starting_grant(coordinator: Coordinator) -> None:
    client_id, client = await coordinator.new_client()
    assert await account(coordinator, client) == {
        "address": client_id,
        "balance": GRANT,
        "held": 0.0,
    }
    assert await balance_of(coordinator, client_id) == GRANT
    await check_books(coordinator)


async def test_submit_holds_the_most_the_job_can_cost(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client, max_price="0.5", params={"max_tokens": 100})
    hold = expected_hold(max_tokens=100, max_price="0.5")
    assert job["held"] == hold > 0
    assert await account(coordinator, client) == {
        "address": job["client_id"],
        "balance": pytest.approx(GRANT - hold, abs=1e-9),
        "held": hold,
    }
    assert await balance_of(coordinator, "escrow") == hold
    await check_books(coordinator)


async def test_completion_pays_the_receipt_price_and_refunds_the_rest(
    coordinator: Coordinator,
) -> None:
    client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.2")
    job = await coordinator.submit(client, max_price="0.5")
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    receipt = ok(
        await complete(
            coordinator,
            job["job_id"],
            "m1",
            miner,
            usage={"prompt_tokens": 3, "completion_tokens": 2},
        )
    )
    price = price_for_units(5, to_micro("0.2"))
    assert to_micro(str(receipt["price"])) == price
    fee = (2 * price * 500 + 10_000) // 20_000
    assert to_micro(str(await balance_of(coordinator, "m1"))) == price - fee
    assert to_micro(str(await balance_of(coordinator, "treasury"))) == fee
    assert to_micro(str(await balance_of(coordinator, client_id))) == to_micro("100") - price
    assert await balance_of(coordinator, "escrow") == 0
    assert (await get_job(coordinator, job["job_id"], client))["held"] == 0
    assert (await account(coordinator, client))["held"] == 0
    # A re-sent completion returns the same receipt and pays nothing twice.
    again = ok(await complete(coordinator, job["job_id"], "m1", miner))
    assert again == receipt
    assert to_micro(str(await balance_of(coordinator, "m1"))) == price - fee
    await check_books(coordinator)


async def test_the_ledger_records_hold_release_refund_and_receipt(
    coordinator: Coordinator,
) -> None:
    client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.2")
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    receipt = ok(await complete(coordinator, job["job_id"], "m1", miner))

    def rows(connection: Any) -> list[Any]:
        return list(
            connection.execute(
                text(
                    "SELECT type, sender, recipient, ref, document "
                    "FROM ledger_transactions ORDER BY seq"
                )
            ).all()
        )

    async with coordinator.runtime.engine.connect() as connection:
        stored = await connection.run_sync(rows)
    types = [row.type for row in stored]
    assert types == ["mint", "escrow_hold", "receipt", "escrow_release", "escrow_refund"]
    assert stored[0].recipient == client_id
    assert stored[1].sender == client_id and stored[1].recipient == "escrow"
    assert stored[1].ref == job["job_id"]
    anchor = json.loads(stored[2].document)
    assert anchor["receipt_id"] == receipt["receipt_id"]
    assert anchor["from"] is None and anchor["to"] is None and anchor["amount"] == 0
    release = json.loads(stored[3].document)
    assert release["to"] == "m1" and release["ref"] == job["job_id"]
    assert to_micro(str(release["amount"])) + to_micro(str(release["fee"])) == to_micro(
        str(receipt["price"])
    )


async def test_short_funds_are_402_and_nothing_is_written(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    response = await coordinator.http.post(
        "/v1/jobs",
        json={"prompt": PROMPT, "max_price": "1000", "params": {"max_tokens": 4096}},
        headers=client,
    )
    body = assert_error(response, 402, "insufficient_funds")
    assert "100" in body["detail"]
    listed = ok(await coordinator.http.get("/v1/jobs", headers=client))
    assert listed["total"] == 0
    assert await account(coordinator, client) == {
        "address": _client_id,
        "balance": GRANT,
        "held": 0.0,
    }
    await check_books(coordinator)


@pytest.mark.parametrize("settings_overrides", [{"client_grant": 0}])
async def test_the_grant_can_be_turned_off(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    assert (await account(coordinator, client))["balance"] == 0
    response = await coordinator.http.post("/v1/jobs", json={"prompt": PROMPT}, headers=client)
    assert_error(response, 402, "insufficient_funds")
    # Free jobs (a max_price of 0) need no funds.
    job = await coordinator.submit(client, max_price="0")
    assert job["held"] == 0


async def test_cancel_refunds_the_whole_hold_once(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client)
    ok(await coordinator.http.post(f"/v1/jobs/{job['job_id']}/cancel", headers=client))
    assert_error(
        await coordinator.http.post(f"/v1/jobs/{job['job_id']}/cancel", headers=client), 409
    )
    assert await account(coordinator, client) == {
        "address": job["client_id"],
        "balance": GRANT,
        "held": 0.0,
    }
    await check_books(coordinator)


async def test_failure_timeout_and_lapsed_leases_refund(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    failed = await coordinator.submit(client)
    await claim_ok(coordinator, failed["job_id"], "m1", miner)
    ok(await fail(coordinator, failed["job_id"], "m1", miner, retryable=False))
    timed_out = await coordinator.submit(client, timeout_seconds=5)
    lapsing = await coordinator.submit(client)
    for _ in range(coordinator.runtime.settings.max_attempts):
        await claim_ok(coordinator, lapsing["job_id"], "m1", miner)
        coordinator.clock.advance(coordinator.runtime.settings.lease_seconds + 1)
        await sweep(coordinator)
    for job in (failed, timed_out, lapsing):
        ended = await get_job(coordinator, job["job_id"], client)
        assert ended["status"] == "failed", ended
        assert ended["held"] == 0
    assert await account(coordinator, client) == {
        "address": failed["client_id"],
        "balance": GRANT,
        "held": 0.0,
    }
    await check_books(coordinator)


async def test_a_retryable_failure_keeps_the_hold(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    requeued = ok(await fail(coordinator, job["job_id"], "m1", miner, retryable=True))
    assert requeued["status"] == "pending" and requeued["held"] == job["held"]
    await check_books(coordinator)


# --- transfers and mints ---------------------------------------------------------------


async def transfer(coordinator: Coordinator, headers: dict[str, str], **body: Any) -> Any:
    return await coordinator.http.post("/v1/transfers", json=body, headers=headers)


async def test_transfers_move_money_and_refuse_replays(coordinator: Coordinator) -> None:
    alice_id, alice = await coordinator.new_client()
    bob_id, _bob = await coordinator.new_client()
    tx = ok(await transfer(coordinator, alice, to=bob_id, amount="12.5", nonce=1), 201)
    assert tx["type"] == "transfer" and tx["from"] == alice_id and tx["to"] == bob_id
    assert tx["amount"] == 12.5 and tx["fee"] == 0 and tx["nonce"] == 1
    assert await balance_of(coordinator, alice_id) == 87.5
    assert await balance_of(coordinator, bob_id) == 112.5
    assert_error(
        await transfer(coordinator, alice, to=bob_id, amount="1", nonce=1), 409, "nonce_reused"
    )
    # The very same transfer again, in the same second: the same transaction id (on
    # PostgreSQL the id's unique index may object first): a replay all the same.
    assert_error(
        await transfer(coordinator, alice, to=bob_id, amount="12.5", nonce=1), 409, "nonce_reused"
    )
    assert_error(
        await transfer(coordinator, alice, to=bob_id, amount="88", nonce=2),
        402,
        "insufficient_funds",
    )
    assert_error(
        await transfer(coordinator, alice, to="client_" + "0" * 32, amount="1", nonce=3),
        404,
        "account_not_found",
    )
    assert_error(await transfer(coordinator, alice, to=alice_id, amount="1", nonce=4), 400)
    assert_error(await transfer(coordinator, alice, to="escrow", amount="1", nonce=5), 400)
    assert_error(await transfer(coordinator, alice, to=bob_id, amount="0", nonce=6), 422)
    assert_error(await transfer(coordinator, alice, to=bob_id, amount="-1", nonce=7), 422)
    assert_error(await transfer(coordinator, alice, to=bob_id, amount="0.0000001", nonce=8), 422)
    # The nonce of a refused transfer was not used up.
    ok(await transfer(coordinator, alice, to=bob_id, amount="1", nonce=2), 201)
    # A miner can pay too, from what it earned.
    await check_books(coordinator)


async def test_a_sender_with_a_key_must_sign(coordinator: Coordinator) -> None:
    alice_id, alice = await coordinator.new_client()
    bob_id, _bob = await coordinator.new_client()
    key = SigningKey.from_seed(bytes(range(32)))
    ok(
        await coordinator.http.post(
            "/v1/accounts/me/keys", json={"public_key": key.public_key_b64}, headers=alice
        ),
        201,
    )
    keys = ok(await coordinator.http.get("/v1/keys", params={"owner": alice_id}))
    assert [entry["key_id"] for entry in keys["keys"]] == [key.key_id]
    assert_error(
        await transfer(coordinator, alice, to=bob_id, amount="1", nonce=1), 422, "missing_signature"
    )
    now = int(time.time())
    coordinator.clock.now = coordinator.clock.now.fromtimestamp(
        now, tz=coordinator.clock.now.tzinfo
    )
    body = transaction_body(
        tx_type=TxType.TRANSFER,
        sender=alice_id,
        recipient=bob_id,
        amount_micro=1_000_000,
        fee_micro=0,
        ref=None,
        timestamp=now,
        extra={"nonce": 1},
    )
    signature = sign_transaction(body, key)
    # A signature over other terms (another amount) is refused.
    assert_error(
        await transfer(
            coordinator, alice, to=bob_id, amount="2", nonce=1, timestamp=now, signature=signature
        ),
        422,
        "bad_signature",
    )
    tx = ok(
        await transfer(
            coordinator, alice, to=bob_id, amount="1", nonce=1, timestamp=now, signature=signature
        ),
        201,
    )
    assert tx["signature"] == signature
    assert await balance_of(coordinator, bob_id) == 101


async def test_concurrent_transfers_never_double_spend(coordinator: Coordinator) -> None:
    alice_id, alice = await coordinator.new_client()
    bob_id, _bob = await coordinator.new_client()
    responses = await asyncio.gather(
        *(transfer(coordinator, alice, to=bob_id, amount="30", nonce=n) for n in range(10))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 3 + [402] * 7, statuses
    assert await balance_of(coordinator, alice_id) == 10
    assert await balance_of(coordinator, bob_id) == 190
    await check_books(coordinator)


async def test_concurrent_submits_never_overspend(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    # Each job holds a little over 40 AIT: only two fit in the grant.
    responses = await asyncio.gather(
        *(
            coordinator.http.post(
                "/v1/jobs",
                json={"prompt": PROMPT, "max_price": "100", "params": {"max_tokens": 130}},
                headers=client,
            )
            for _ in range(8)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 2 + [402] * 6, statuses
    await check_books(coordinator)


async def test_admin_mints(coordinator: Coordinator) -> None:
    client_id, client = await coordinator.new_client()
    tx = ok(
        await coordinator.http.post(
            "/v1/admin/mint",
            json={"address": client_id, "amount": "5"},
            headers=coordinator.admin_headers,
        ),
        201,
    )
    assert tx["type"] == "mint" and tx["from"] is None and tx["amount"] == 5
    assert await balance_of(coordinator, client_id) == GRANT + 5
    assert_error(
        await coordinator.http.post(
            "/v1/admin/mint", json={"address": client_id, "amount": "5"}, headers=client
        ),
        403,
    )
    assert_error(
        await coordinator.http.post(
            "/v1/admin/mint",
            json={"address": "nobody", "amount": "5"},
            headers=coordinator.admin_headers,
        ),
        404,
    )
    await check_books(coordinator)


async def test_miner_ids_cannot_take_ledger_addresses(coordinator: Coordinator) -> None:
    for miner_id in ("treasury", "escrow", "client_" + "a" * 32):
        response = await coordinator.http.post(
            "/v1/miners/register", json={"miner_id": miner_id, "capabilities": ["m"]}
        )
        assert_error(response, 422)


async def test_a_job_no_miner_meets_stays_pending_and_says_why(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.5")
    cheap = await coordinator.submit(client, max_price="0.1")
    assert cheap["estimated_cost"] is None
    assert "max_price" in cheap["estimate_note"] and "0.5" in cheap["estimate_note"]
    nobody = await coordinator.submit(client, model="no-such-model")
    assert nobody["estimated_cost"] is None and "no-such-model" in nobody["estimate_note"]
    fine = await coordinator.submit(client, max_price="0.5")
    assert fine["estimated_cost"] is not None and fine["estimate_note"] is None
    # The miner is offered only the job it may take; the cheap one stays pending.
    offered = ok(
        await coordinator.http.get("/v1/jobs/available", params={"miner_id": "m1"}, headers=miner)
    )
    assert offered["job_id"] == fine["job_id"]
    assert (await get_job(coordinator, cheap["job_id"], client))["status"] == "pending"


async def test_the_keys_of_several_accounts_in_one_request(coordinator: Coordinator) -> None:
    ids = []
    for seed in (1, 2):
        client_id, headers = await coordinator.new_client()
        key = SigningKey.from_seed(bytes([seed]) * 32)
        ok(
            await coordinator.http.post(
                "/v1/accounts/me/keys", json={"public_key": key.public_key_b64}, headers=headers
            ),
            201,
        )
        ids.append((client_id, key.key_id))
    both = ok(await coordinator.http.get("/v1/keys", params={"owner": [i for i, _ in ids]}))
    assert sorted((entry["owner"], entry["key_id"]) for entry in both["keys"]) == sorted(ids)
    one = ok(await coordinator.http.get("/v1/keys", params={"owner": ids[0][0]}))
    assert [entry["key_id"] for entry in one["keys"]] == [ids[0][1]]
    too_many = await coordinator.http.get("/v1/keys", params={"owner": ["a"] * 101})
    assert_error(too_many, 422)
    assert_error(await coordinator.http.get("/v1/keys", params={"owner": "bad owner"}), 422)
