"""Signed receipts over the ASGI app (DESIGN.md sections 2 and 3): what completion
returns, offline verification against the public key list, pricing at claim time,
receipt reads and their visibility, miner keys and signatures, coordinator key
rotation, the key file, and a restart keeping the key."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import rfc8785
from sqlalchemy import text

from aitbc.api import create_app
from aitbc.domain.receipts import miner_statement, sign_miner_statement, text_hash, verify_receipt
from aitbc.domain.signing import KeyRing, SigningKey, b64url_encode
from aitbc.errors import VerificationFailed
from tests.conftest import Coordinator, make_settings
from tests.integration.helpers import MODEL, assert_error, claim_ok, complete, get_job, ok

T0 = int(datetime(2026, 2, 13, 10, 0, 0, tzinfo=UTC).timestamp())  # the FakeClock's start
USAGE = {"prompt_tokens": 3, "completion_tokens": 2}
RECEIPT_MEMBERS = {
    "receipt_id",
    "job_id",
    "provider",
    "client",
    "units",
    "unit_type",
    "price",
    "unit_price",
    "model",
    "started_at",
    "completed_at",
    "usage",
    "input_hash",
    "result_hash",
    "signature",
}
KEY_MEMBERS = {"key_id", "alg", "public_key", "owner", "status", "valid_from", "valid_until"}
MINER_KEY = SigningKey.from_seed(bytes(range(32)))
MINER_KEY_2 = SigningKey.from_seed(bytes(range(1, 33)))
STRANGER_KEY = SigningKey.from_seed(b"\x07" * 32)


# --- helpers ---------------------------------------------------------------------------


async def keys_document(coordinator: Coordinator, owner: str | None = None) -> dict[str, Any]:
    """``GET /v1/keys`` without any API key (the list is public)."""
    params = {"owner": owner} if owner is not None else None
    body: dict[str, Any] = ok(await coordinator.http.get("/v1/keys", params=params))
    assert set(body) == {"keys"}, body
    for entry in body["keys"]:
        assert set(entry) == KEY_MEMBERS, entry
        assert entry["alg"] == "ed25519"
    return body


async def keyring(coordinator: Coordinator, owner: str | None = None) -> KeyRing:
    return KeyRing.from_document(await keys_document(coordinator, owner))


def receipt_of(response: httpx.Response) -> dict[str, Any]:
    """A receipt response: 200, JSON, and its body exactly the RFC 8785 bytes."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    receipt: dict[str, Any] = response.json()
    assert response.content == rfc8785.dumps(receipt)
    return receipt


def miner_signature(
    key: SigningKey, job_id: str, miner_id: str, result: str, units: int
) -> dict[str, str]:
    return sign_miner_statement(key, miner_statement(job_id, miner_id, text_hash(result), units))


async def complete_signed(
    coordinator: Coordinator,
    job_id: str,
    miner_id: str,
    headers: dict[str, str],
    signature: dict[str, str] | None,
    result: str = "Hello!",
    usage: dict[str, int] | None = None,
) -> httpx.Response:
    payload: dict[str, Any] = {"miner_id": miner_id, "result": result, "usage": usage or USAGE}
    if signature is not None:
        payload["miner_signature"] = signature
    return await coordinator.http.post(f"/v1/jobs/{job_id}/complete", json=payload, headers=headers)


async def run_job(
    coordinator: Coordinator,
    client: dict[str, str],
    miner_id: str,
    miner: dict[str, str],
    result: str | None = None,
    usage: dict[str, int] | None = None,
    seconds: float = 1,
    **job: Any,
) -> tuple[str, httpx.Response]:
    """Submit, claim, let ``seconds`` pass, complete: the job id and the completion.

    The default result has one byte per completion token charged, the least the
    coordinator accepts for that usage."""
    usage = usage or USAGE
    if result is None:
        result = "x" * max(6, usage["completion_tokens"])
    submitted = await coordinator.submit(client, **job)
    await claim_ok(coordinator, submitted["job_id"], miner_id, miner)
    coordinator.clock.advance(seconds)
    response = await complete(
        coordinator, submitted["job_id"], miner_id, miner, result=result, usage=usage
    )
    return submitted["job_id"], response


async def register(
    coordinator: Coordinator, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    """``POST /v1/miners/register`` serving MODEL, with ``headers`` (none: a new miner)."""
    payload: dict[str, Any] = {"capabilities": [MODEL], **body}
    return await coordinator.http.post("/v1/miners/register", json=payload, headers=headers)


def failure_code(receipt: dict[str, Any], keys: KeyRing, **kwargs: Any) -> str:
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(receipt, keys, **kwargs)
    return caught.value.error_code


# --- what completion returns -----------------------------------------------------------


async def test_complete_returns_a_canonical_receipt_that_verifies_offline(
    coordinator: Coordinator,
) -> None:
    client_id, client = await coordinator.new_client()
    # 20 tokens at 0.123425 AIT per 1,000 = 2468.5 µAIT: halves round up, to 2469.
    miner = await coordinator.new_miner("m1", price=0.123425)
    prompt = "Übersetze: ¡hola, 世界!"
    result = "Grüße aus der Welt 🌍"
    job = await coordinator.submit(client, prompt=prompt)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    coordinator.clock.advance(42)
    response = await complete(
        coordinator,
        job["job_id"],
        "m1",
        miner,
        result=result,
        usage={"prompt_tokens": 12, "completion_tokens": 8},
    )
    receipt = receipt_of(response)

    assert set(receipt) == RECEIPT_MEMBERS  # no miner_signature: m1 registered no key
    assert receipt["receipt_id"]
    assert receipt["job_id"] == job["job_id"]
    assert receipt["provider"] == "m1"
    assert receipt["client"] == client_id
    assert receipt["model"] == MODEL
    assert receipt["usage"] == {"prompt_tokens": 12, "completion_tokens": 8}
    assert receipt["units"] == 20
    assert receipt["unit_type"] == "tokens"
    assert receipt["unit_price"] == 0.123425
    assert receipt["price"] == 0.002469
    assert receipt["started_at"] == T0
    assert receipt["completed_at"] == T0 + 42
    assert receipt["input_hash"] == text_hash(prompt)
    assert receipt["result_hash"] == text_hash(result)
    # Independently of the project's helper: SHA-256 of the UTF-8 bytes, lowercase hex.
    assert receipt["input_hash"] == hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    assert receipt["result_hash"] == hashlib.sha256(result.encode("utf-8")).hexdigest()

    # A verifier with nothing but the public key list (fetched without an API key).
    keys = await keyring(coordinator)
    downloaded = ok(
        await coordinator.http.get(f"/v1/jobs/{job['job_id']}/download", headers=client)
    )["result"]
    assert downloaded == result
    verified = verify_receipt(receipt, keys, result=downloaded, prompt=prompt)
    assert verified.result_checked
    assert verified.key.owner == "coordinator"
    assert verified.key.key_id == receipt["signature"]["key_id"]
    assert receipt["signature"]["alg"] == "ed25519"

    assert failure_code(receipt, keys, result=result + " ") == "result_hash_mismatch"
    assert failure_code(receipt, keys, prompt="Say hello") == "input_hash_mismatch"
    tampered = {**receipt, "price": 0.002468}
    assert failure_code(tampered, keys) == "bad_signature"
    assert failure_code(receipt, KeyRing()) == "unknown_key"


async def test_price_rounds_half_up_and_no_usage_costs_nothing(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.000025)
    cases = [
        # (prompt, completion) -> price in AIT; 25 µAIT per 1,000 tokens
        ((10, 10), 0.000001),  # 0.5 µAIT: half up (half-even or floor would give 0)
        ((30, 30), 0.000002),  # 1.5 µAIT
        ((10, 9), 0),  # 0.475 µAIT rounds down
        ((20, 2000), 0.000051),  # 50.5 µAIT
        ((40, 19), 0.000001),  # 1.475 µAIT rounds down
    ]
    keys = await keyring(coordinator)
    for (prompt_tokens, completion_tokens), price in cases:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        _job_id, response = await run_job(
            coordinator, client, "m1", miner, usage=usage, params={"max_tokens": 2000}
        )
        receipt = receipt_of(response)
        assert receipt["units"] == prompt_tokens + completion_tokens
        assert receipt["unit_price"] == 0.000025
        assert receipt["price"] == price, (usage, receipt)
        verify_receipt(receipt, keys)

    # No usage reported: nothing is metered, nothing is charged.
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    response = await coordinator.http.post(
        f"/v1/jobs/{job['job_id']}/complete",
        json={"miner_id": "m1", "result": "Hello!"},
        headers=miner,
    )
    receipt = receipt_of(response)
    assert receipt["units"] == 0
    assert receipt["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert receipt["unit_price"] == 0.000025
    assert receipt["price"] == 0
    verify_receipt(receipt, keys, result="Hello!")


async def test_price_is_the_miners_price_at_claim(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.5)
    first = await coordinator.submit(client, params={"max_tokens": 1000}, max_price=2)
    await claim_ok(coordinator, first["job_id"], "m1", miner)

    update = await register(coordinator, miner, miner_id="m1", price=1.25)
    assert update.status_code == 204, update.text

    usage = {"prompt_tokens": 50, "completion_tokens": 750}
    first_receipt = receipt_of(
        await complete(coordinator, first["job_id"], "m1", miner, result="x" * 750, usage=usage)
    )
    assert first_receipt["unit_price"] == 0.5
    assert first_receipt["price"] == 0.4

    _job_id, response = await run_job(
        coordinator, client, "m1", miner, usage=usage, params={"max_tokens": 1000}, max_price=2
    )
    second_receipt = receipt_of(response)
    assert second_receipt["unit_price"] == 1.25
    assert second_receipt["price"] == 1.0
    keys = await keyring(coordinator)
    verify_receipt(first_receipt, keys)
    verify_receipt(second_receipt, keys)


async def test_usage_above_max_tokens_is_refused_and_the_job_stays_running(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.25)
    job = await coordinator.submit(client, params={"max_tokens": 10})
    await claim_ok(coordinator, job["job_id"], "m1", miner)

    too_many = await complete(
        coordinator,
        job["job_id"],
        "m1",
        miner,
        usage={"prompt_tokens": 1, "completion_tokens": 11},
    )
    assert_error(too_many, 422, "usage_exceeds_max_tokens")
    after = await get_job(coordinator, job["job_id"], client)
    assert after["status"] == "running"
    assert after["miner_id"] == "m1"
    assert after["result"] is None
    assert_error(
        await coordinator.http.get(f"/v1/jobs/{job['job_id']}/receipt", headers=client),
        404,
        "receipt_not_found",
    )

    # Exactly max_tokens is fine (prompt tokens do not count against it).
    usage = {"prompt_tokens": 60, "completion_tokens": 10}
    receipt = receipt_of(await complete(coordinator, job["job_id"], "m1", miner, usage=usage))
    assert receipt["units"] == 70
    assert (await get_job(coordinator, job["job_id"], client))["status"] == "completed"

    # Without params, max_tokens defaults to 256 and bounds usage too.
    job = await coordinator.submit(client)
    assert job["params"]["max_tokens"] == 256
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    usage = {"prompt_tokens": 1, "completion_tokens": 257}
    response = await complete(coordinator, job["job_id"], "m1", miner, usage=usage)
    assert_error(response, 422, "usage_exceeds_max_tokens")


# --- reading receipts ------------------------------------------------------------------


async def test_job_receipt_appears_at_completion_for_those_allowed(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    _other_id, other_client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.25)
    other_miner = await coordinator.new_miner("m2")
    job = await coordinator.submit(client)
    url = f"/v1/jobs/{job['job_id']}/receipt"

    for headers in (client, coordinator.admin_headers):
        assert_error(await coordinator.http.get(url, headers=headers), 404, "receipt_not_found")
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    for headers in (client, miner, coordinator.admin_headers):
        assert_error(await coordinator.http.get(url, headers=headers), 404, "receipt_not_found")

    completion = await complete(coordinator, job["job_id"], "m1", miner)
    receipt_of(completion)
    for headers in (client, miner, coordinator.admin_headers):
        fetched = await coordinator.http.get(url, headers=headers)
        receipt_of(fetched)
        assert fetched.content == completion.content

    for headers in (other_client, other_miner):
        assert_error(await coordinator.http.get(url, headers=headers), 404, "job_not_found")
    assert_error(await coordinator.http.get(url), 401)
    missing = await coordinator.http.get("/v1/jobs/job_missing/receipt", headers=client)
    assert_error(missing, 404, "job_not_found")

    # Completing again with the same result returns the very same receipt.
    again = await complete(coordinator, job["job_id"], "m1", miner)
    assert again.content == completion.content

    # A cancelled job never gets one.
    cancelled = await coordinator.submit(client)
    ok(await coordinator.http.post(f"/v1/jobs/{cancelled['job_id']}/cancel", headers=client))
    response = await coordinator.http.get(f"/v1/jobs/{cancelled['job_id']}/receipt", headers=client)
    assert_error(response, 404, "receipt_not_found")


async def test_receipt_by_id_visibility(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    _other_id, other_client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    other_miner = await coordinator.new_miner("m2")
    _job_id, completion = await run_job(coordinator, client, "m1", miner)
    receipt = receipt_of(completion)
    url = f"/v1/receipts/{receipt['receipt_id']}"

    for headers in (client, miner, coordinator.admin_headers):
        fetched = await coordinator.http.get(url, headers=headers)
        receipt_of(fetched)
        assert fetched.content == completion.content
    for headers in (other_client, other_miner):
        assert_error(await coordinator.http.get(url, headers=headers), 404, "receipt_not_found")
    missing = await coordinator.http.get("/v1/receipts/rcpt_missing", headers=client)
    assert_error(missing, 404, "receipt_not_found")
    assert_error(await coordinator.http.get(url), 401)


async def test_receipt_list_is_newest_first_and_scoped_to_the_caller(
    coordinator: Coordinator,
) -> None:
    c1, client1 = await coordinator.new_client()
    c2, client2 = await coordinator.new_client()
    miner1 = await coordinator.new_miner("m1")
    miner2 = await coordinator.new_miner("m2")
    # Completed one second apart, in this order: (client, miner).
    plan = [(client1, "m1"), (client2, "m1"), (client1, "m2"), (client2, "m2"), (client1, "m1")]
    miners = {"m1": miner1, "m2": miner2}
    receipts: list[dict[str, Any]] = []
    for client, miner_id in plan:
        _job_id, response = await run_job(coordinator, client, miner_id, miners[miner_id])
        receipts.append(receipt_of(response))
    newest_first = receipts[::-1]

    async def listed(headers: dict[str, str], **params: Any) -> list[str]:
        response = await coordinator.http.get("/v1/receipts", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, list)
        assert response.content == rfc8785.dumps(body)
        return [receipt["receipt_id"] for receipt in body]

    def ids(client_id: str | None = None, provider: str | None = None) -> list[str]:
        return [
            r["receipt_id"]
            for r in newest_first
            if client_id in (None, r["client"]) and provider in (None, r["provider"])
        ]

    admin = coordinator.admin_headers
    assert await listed(admin) == ids()
    assert await listed(admin, client=c1) == ids(client_id=c1)
    assert await listed(admin, provider="m2") == ids(provider="m2")
    assert await listed(admin, client=c2, provider="m1") == ids(client_id=c2, provider="m1")
    assert await listed(admin, client="nobody") == []

    assert await listed(client1) == ids(client_id=c1)
    assert await listed(client1, client=c1) == ids(client_id=c1)
    assert await listed(client1, client=c2) == []
    assert await listed(client1, provider="m2") == ids(client_id=c1, provider="m2")
    assert await listed(client2) == ids(client_id=c2)

    assert await listed(miner1) == ids(provider="m1")
    assert await listed(miner1, provider="m2") == []
    assert await listed(miner1, client=c1) == ids(client_id=c1, provider="m1")
    assert await listed(miner2) == ids(provider="m2")

    assert await listed(admin, limit=2) == ids()[:2]
    assert await listed(admin, limit=2, offset=2) == ids()[2:4]
    assert await listed(admin, limit=2, offset=4) == ids()[4:]
    assert await listed(admin, offset=5) == []
    assert await listed(client1, limit=1, offset=1) == ids(client_id=c1)[1:2]

    # Every listed receipt is the stored canonical document.
    body = ok(await coordinator.http.get("/v1/receipts", headers=admin))
    assert body == newest_first

    for params in ({"limit": 101}, {"limit": 0}, {"limit": "many"}, {"offset": -1}):
        response = await coordinator.http.get("/v1/receipts", params=params, headers=client1)
        assert_error(response, 422)
    assert_error(await coordinator.http.get("/v1/receipts"), 401)
    assert len(ok(await coordinator.http.get("/v1/receipts?limit=100", headers=admin))) == 5


# --- miner keys and signatures ---------------------------------------------------------


async def test_miner_signature_is_required_and_checked(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.25, public_key=MINER_KEY.public_key_b64)
    await coordinator.new_miner("m2", public_key=MINER_KEY_2.public_key_b64)
    document = await keys_document(coordinator, owner="m1")
    assert document["keys"] == [
        {
            "key_id": MINER_KEY.key_id,
            "alg": "ed25519",
            "public_key": MINER_KEY.public_key_b64,
            "owner": "m1",
            "status": "current",
            "valid_from": "2026-02-13T10:00:00Z",
            "valid_until": None,
        }
    ]
    # Miner keys are not coordinator keys.
    coordinator_keys = (await keys_document(coordinator))["keys"]
    assert [entry["owner"] for entry in coordinator_keys] == ["coordinator"]
    assert (await keys_document(coordinator, owner="m-unknown"))["keys"] == []
    assert (await keys_document(coordinator, owner="coordinator")) == {"keys": coordinator_keys}

    job = await coordinator.submit(client)
    job_id = job["job_id"]
    await claim_ok(coordinator, job_id, "m1", miner)
    result = "Hello!"
    units = USAGE["prompt_tokens"] + USAGE["completion_tokens"]

    attempts = [
        (None, "miner_signature_required"),
        (miner_signature(MINER_KEY, job_id, "m1", "Goodbye!", units), "bad_miner_signature"),
        (miner_signature(MINER_KEY, job_id, "m1", result, units + 1), "bad_miner_signature"),
        (miner_signature(MINER_KEY, "job_other", "m1", result, units), "bad_miner_signature"),
        (miner_signature(STRANGER_KEY, job_id, "m1", result, units), "unknown_miner_key"),
        # m2's registered key is not m1's.
        (miner_signature(MINER_KEY_2, job_id, "m1", result, units), "unknown_miner_key"),
    ]
    for signature, code in attempts:
        response = await complete_signed(coordinator, job_id, "m1", miner, signature, result)
        assert_error(response, 422, code)
        assert (await get_job(coordinator, job_id, client))["status"] == "running"

    signature = miner_signature(MINER_KEY, job_id, "m1", result, units)
    receipt = receipt_of(await complete_signed(coordinator, job_id, "m1", miner, signature))
    assert set(receipt) == RECEIPT_MEMBERS | {"miner_signature"}
    assert receipt["miner_signature"] == signature
    assert receipt["miner_signature"]["key_id"] == MINER_KEY.key_id

    keys = await keyring(coordinator)
    miner_keys = await keyring(coordinator, owner="m1")
    verified = verify_receipt(receipt, keys, miner_keys=miner_keys, result=result)
    assert verified.miner_key is not None
    assert verified.miner_key.key_id == MINER_KEY.key_id
    # Against another miner's keys, the miner signature is not accepted.
    other_keys = await keyring(coordinator, owner="m2")
    assert failure_code(receipt, keys, miner_keys=other_keys) == "unknown_miner_key"


async def test_new_miner_key_retires_the_old_one(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", public_key=MINER_KEY.public_key_b64)
    units = USAGE["prompt_tokens"] + USAGE["completion_tokens"]

    first = await coordinator.submit(client)
    await claim_ok(coordinator, first["job_id"], "m1", miner)
    signature = miner_signature(MINER_KEY, first["job_id"], "m1", "Hello!", units)
    first_receipt = receipt_of(
        await complete_signed(coordinator, first["job_id"], "m1", miner, signature)
    )

    coordinator.clock.advance(60)
    # The same key again changes nothing.
    same = await register(coordinator, miner, miner_id="m1", public_key=MINER_KEY.public_key_b64)
    assert same.status_code == 204, same.text
    assert len((await keys_document(coordinator, owner="m1"))["keys"]) == 1

    update = await register(
        coordinator, miner, miner_id="m1", public_key=MINER_KEY_2.public_key_b64
    )
    assert update.status_code == 204, update.text
    entries = (await keys_document(coordinator, owner="m1"))["keys"]
    by_id = {entry["key_id"]: entry for entry in entries}
    assert set(by_id) == {MINER_KEY.key_id, MINER_KEY_2.key_id}
    assert by_id[MINER_KEY.key_id]["status"] == "retired"
    assert by_id[MINER_KEY.key_id]["valid_from"] == "2026-02-13T10:00:00Z"
    assert by_id[MINER_KEY.key_id]["valid_until"] == "2026-02-13T10:01:00Z"
    assert by_id[MINER_KEY_2.key_id]["status"] == "current"
    assert by_id[MINER_KEY_2.key_id]["valid_from"] == "2026-02-13T10:01:00Z"
    assert by_id[MINER_KEY_2.key_id]["valid_until"] is None

    # A retired key cannot come back.
    back = await register(coordinator, miner, miner_id="m1", public_key=MINER_KEY.public_key_b64)
    assert_error(back, 409, "key_retired")

    second = await coordinator.submit(client)
    await claim_ok(coordinator, second["job_id"], "m1", miner)
    old = miner_signature(MINER_KEY, second["job_id"], "m1", "Hello!", units)
    response = await complete_signed(coordinator, second["job_id"], "m1", miner, old)
    assert_error(response, 422, "unknown_miner_key")
    response = await complete_signed(coordinator, second["job_id"], "m1", miner, None)
    assert_error(response, 422, "miner_signature_required")
    new = miner_signature(MINER_KEY_2, second["job_id"], "m1", "Hello!", units)
    second_receipt = receipt_of(
        await complete_signed(coordinator, second["job_id"], "m1", miner, new)
    )
    assert second_receipt["miner_signature"]["key_id"] == MINER_KEY_2.key_id

    # A re-send of the first result, signed with the now retired key (e.g. from the
    # miner's outbox), gets the receipt it was issued, byte for byte...
    resent = await complete_signed(coordinator, first["job_id"], "m1", miner, signature)
    assert receipt_of(resent) == first_receipt
    # ...while a different result under the retired key is still refused.
    forged = miner_signature(MINER_KEY, first["job_id"], "m1", "Bye!", units)
    response = await coordinator.http.post(
        f"/v1/jobs/{first['job_id']}/complete",
        json={"miner_id": "m1", "result": "Bye!", "usage": USAGE, "miner_signature": forged},
        headers=miner,
    )
    assert_error(response, 422, "unknown_miner_key")

    # Both receipts verify against the miner's published keys, retired ones included.
    keys = await keyring(coordinator)
    miner_keys = await keyring(coordinator, owner="m1")
    for receipt in (first_receipt, second_receipt):
        verify_receipt(receipt, keys, miner_keys=miner_keys, result="Hello!")


async def test_a_key_belongs_to_one_miner(coordinator: Coordinator) -> None:
    await coordinator.new_miner("m1", public_key=MINER_KEY.public_key_b64)
    taken = await register(coordinator, miner_id="m2", public_key=MINER_KEY.public_key_b64)
    assert_error(taken, 409, "key_in_use")
    # The refused registration left nothing behind: m2 can register without the key.
    m2 = await coordinator.new_miner("m2", price=0.1)
    assert (await keys_document(coordinator, owner="m2"))["keys"] == []

    # Nor can an existing miner take it over; its other changes are not applied either.
    update = await register(
        coordinator, m2, miner_id="m2", price=9, public_key=MINER_KEY.public_key_b64
    )
    assert_error(update, 409, "key_in_use")
    miners = ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers))
    assert {m["miner_id"]: m["price"] for m in miners}["m2"] == 0.1

    # The coordinator's own key cannot be registered as a miner's.
    own = (await keys_document(coordinator))["keys"][0]["public_key"]
    response = await register(coordinator, miner_id="m3", public_key=own)
    assert_error(response, 409, "key_in_use")
    assert (await keys_document(coordinator, owner="m1"))["keys"][0]["key_id"] == MINER_KEY.key_id


async def test_malformed_keys_and_reserved_ids_are_refused(coordinator: Coordinator) -> None:
    good = MINER_KEY.public_key_b64
    malformed: list[Any] = [
        "abc",
        good + "=",
        good[:-1] + "+",
        good[:-1] + "B",  # 43 characters, but non-zero padding bits
        "A" * 44,
        "",
        42,
    ]
    for public_key in malformed:
        response = await register(coordinator, miner_id="m1", public_key=public_key)
        assert_error(response, 422)
    # The refused registrations created nothing.
    assert (await register(coordinator, miner_id="m1")).status_code == 201
    assert (await keys_document(coordinator, owner="m1"))["keys"] == []

    for miner_id in ("coordinator", "Coordinator", "COORDINATOR"):
        response = await register(
            coordinator, miner_id=miner_id, public_key=STRANGER_KEY.public_key_b64
        )
        assert_error(response, 422)
        assert_error(await register(coordinator, miner_id=miner_id), 422)
    # Only the coordinator's own key is listed as the coordinator's.
    entries = (await keys_document(coordinator))["keys"]
    assert [entry["key_id"] for entry in entries] == [coordinator.runtime.signing_key().key_id]


# --- the coordinator's key -------------------------------------------------------------


async def test_rotation_by_admin_keeps_old_receipts_verifiable(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.25)
    for headers in (client, miner):
        response = await coordinator.http.post("/v1/admin/keys/rotate", headers=headers)
        assert_error(response, 403)
    assert_error(await coordinator.http.post("/v1/admin/keys/rotate"), 401)
    before = await keys_document(coordinator)
    [old_entry] = before["keys"]
    assert old_entry["status"] == "current"
    assert old_entry["valid_from"] == "2026-02-13T10:00:00Z"
    assert old_entry["valid_until"] is None

    _job_id, response = await run_job(coordinator, client, "m1", miner, seconds=5)
    first = receipt_of(response)
    assert first["signature"]["key_id"] == old_entry["key_id"]

    coordinator.clock.advance(10)
    rotated = await coordinator.http.post(
        "/v1/admin/keys/rotate", headers=coordinator.admin_headers
    )
    new_entry = ok(rotated, 201)
    assert set(new_entry) == KEY_MEMBERS
    assert new_entry["key_id"] != old_entry["key_id"]
    assert new_entry["owner"] == "coordinator"
    assert new_entry["status"] == "current"
    assert new_entry["valid_from"] == "2026-02-13T10:00:15Z"
    assert new_entry["valid_until"] is None
    assert KeyRing.from_document([new_entry]).get(new_entry["key_id"]) is not None

    _job_id, response = await run_job(coordinator, client, "m1", miner, seconds=5)
    second = receipt_of(response)
    assert second["signature"]["key_id"] == new_entry["key_id"]
    assert second["completed_at"] == T0 + 20

    after = await keys_document(coordinator)
    by_id = {entry["key_id"]: entry for entry in after["keys"]}
    assert set(by_id) == {old_entry["key_id"], new_entry["key_id"]}
    assert by_id[old_entry["key_id"]]["status"] == "retired"
    # Retired at the rotation plus the overlap in-flight completions may still use.
    assert by_id[old_entry["key_id"]]["valid_until"] == "2026-02-13T10:01:15Z"
    assert by_id[old_entry["key_id"]]["public_key"] == old_entry["public_key"]
    assert by_id[new_entry["key_id"]] == new_entry

    keys = KeyRing.from_document(after)
    assert verify_receipt(first, keys).key.key_id == old_entry["key_id"]
    assert verify_receipt(second, keys).key.key_id == new_entry["key_id"]
    # Pinning only the old key: the new receipt is by an unknown key.
    old_only = KeyRing.from_document(before)
    assert failure_code(second, old_only) == "unknown_key"
    # The stored first receipt is unchanged (still signed by the retired key).
    stored = await coordinator.http.get(f"/v1/receipts/{first['receipt_id']}", headers=client)
    assert stored.content == rfc8785.dumps(first)


async def test_key_file_is_private_and_follows_rotation(coordinator: Coordinator) -> None:
    path = coordinator.runtime.settings.resolved_signing_key_file()
    assert path.name == "coordinator_ed25519.pem"
    assert path.parent == coordinator.runtime.settings.data_dir
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [entry] = (await keys_document(coordinator))["keys"]
    assert SigningKey.from_pem(path.read_bytes()).key_id == entry["key_id"]

    new_entry = ok(
        await coordinator.http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers),
        201,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = SigningKey.from_pem(path.read_bytes())
    assert on_disk.key_id == new_entry["key_id"]
    assert on_disk.public_key_b64 == new_entry["public_key"]
    # No temporary file is left behind next to it.
    assert [p.name for p in path.parent.iterdir() if "ed25519" in p.name] == [path.name]


async def _restart(
    tmp_path: Path, coordinator: Coordinator, miner_id: str
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """Start a second app on the same data dir and database: its signing key id, its
    ``GET /v1/keys``, and a receipt it issues for a job run by a new miner."""
    app = create_app(
        make_settings(tmp_path, coordinator.backend), clock=coordinator.clock, run_sweeper=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            restarted = Coordinator(
                app=app, http=http, clock=coordinator.clock, backend=coordinator.backend
            )
            _client_id, client = await restarted.new_client()
            miner = await restarted.new_miner(miner_id)
            _job_id, response = await run_job(restarted, client, miner_id, miner)
            return (
                restarted.runtime.signing_key().key_id,
                (await keys_document(restarted))["keys"],
                receipt_of(response),
            )


async def test_restart_keeps_the_signing_key_also_after_rotation(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    [entry] = (await keys_document(coordinator))["keys"]
    key_id, keys, receipt = await _restart(tmp_path, coordinator, "m-restart-1")
    assert key_id == entry["key_id"]
    assert keys == [entry]
    assert receipt["signature"]["key_id"] == entry["key_id"]
    verify_receipt(receipt, await keyring(coordinator))

    coordinator.clock.advance(30)
    new_entry = ok(
        await coordinator.http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers),
        201,
    )
    coordinator.clock.advance(30)
    key_id, keys, receipt = await _restart(tmp_path, coordinator, "m-restart-2")
    assert key_id == new_entry["key_id"]
    assert keys == (await keys_document(coordinator))["keys"]
    assert [(k["key_id"], k["status"]) for k in keys] == [
        (entry["key_id"], "retired"),
        (new_entry["key_id"], "current"),
    ]
    assert receipt["signature"]["key_id"] == new_entry["key_id"]
    verify_receipt(receipt, KeyRing.from_document({"keys": keys}))


# --- regressions of bugs found in review ----------------------------------------------


async def test_rotation_whose_key_file_cannot_be_written_changes_nothing(
    coordinator: Coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aitbc.services import keys as key_service

    before = await keys_document(coordinator)
    [entry] = before["keys"]

    def disk_full(path: Path, key: SigningKey) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(key_service, "_stage_private", disk_full)
    coordinator.clock.advance(10)
    transport = httpx.ASGITransport(app=coordinator.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers)
    assert_error(response, 500)
    monkeypatch.undo()

    # A failed rotation leaves the published keys and the signer as they were...
    assert await keys_document(coordinator) == before
    assert coordinator.runtime.signing_key().key_id == entry["key_id"]
    # ...so the coordinator can still restart on its data dir.
    key_id, _keys, _receipt = await _restart(tmp_path, coordinator, "m-restart")
    assert key_id == entry["key_id"]


async def test_receipt_price_beyond_total_supply_is_never_signed(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    # A job that could cost more than the whole supply cannot even be held for.
    response = await coordinator.http.post(
        "/v1/jobs",
        json={"prompt": "Say hello", "params": {"max_tokens": 32_768}, "max_price": 1_000_000_000},
        headers=client,
    )
    assert_error(response, 402, "insufficient_funds")
    # A job from before prices were bound and paid for (no max_price, no hold) could
    # still be claimed at any price: the highest registration accepts (total supply
    # per 1,000 tokens), with the most tokens a completion may report.
    miner = await coordinator.new_miner("m1", price=1_000_000_000)
    job = await coordinator.submit(client, params={"max_tokens": 32_768}, max_price=0)

    def make_legacy(connection: Any) -> None:
        connection.execute(
            text("UPDATE jobs SET max_price_micro = NULL, held_micro = NULL WHERE id = :id"),
            {"id": job["job_id"]},
        )

    async with coordinator.runtime.engine.begin() as connection:
        await connection.run_sync(make_legacy)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    long_result = "x" * 32_768
    # More prompt tokens than the prompt can hold is refused outright...
    usage = {"prompt_tokens": 10_000_000, "completion_tokens": 32_768}
    response = await complete(
        coordinator, job["job_id"], "m1", miner, result=long_result, usage=usage
    )
    assert_error(response, 422, "usage_exceeds_prompt")
    # ...so are more completion tokens than the result can hold (an empty result
    # billed at max_tokens)...
    usage = {"prompt_tokens": 3, "completion_tokens": 32_768}
    response = await complete(coordinator, job["job_id"], "m1", miner, result="", usage=usage)
    assert_error(response, 422, "usage_exceeds_result")
    # ...and a price beyond the total supply is never signed.
    response = await complete(
        coordinator, job["job_id"], "m1", miner, result=long_result, usage=usage
    )
    assert_error(response, 422, "price_exceeds_supply")
    assert (await get_job(coordinator, job["job_id"], client))["status"] == "running"


async def test_receipts_completed_in_the_same_second_are_listed_newest_first(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Receipt ids that happen to come out in descending order (random ids may do so).
    counter = iter(range(99, 0, -1))
    original = coordinator.runtime.new_id

    def new_id(prefix: str) -> str:
        return f"rcpt_{next(counter):032x}" if prefix == "rcpt" else original(prefix)

    monkeypatch.setattr(coordinator.runtime, "new_id", new_id)
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    completed = []
    for _ in range(3):
        _job_id, response = await run_job(coordinator, client, "m1", miner, seconds=0)
        completed.append(receipt_of(response)["receipt_id"])
    listed = ok(await coordinator.http.get("/v1/receipts", headers=client))
    assert [receipt["receipt_id"] for receipt in listed] == completed[::-1]


async def test_a_configured_key_file_is_the_signing_key(tmp_path: Path, backend: str) -> None:
    """``AITBC_SIGNING_KEY_FILE``: an operator's own key (outside the data dir) signs."""
    from aitbc.settings import to_async_url
    from tests.conftest import PG_URL, FakeClock, reset_postgres

    if backend == "postgresql" and PG_URL:
        await reset_postgres(to_async_url(PG_URL))
    own = SigningKey.from_seed(bytes(range(100, 132)))
    key_file = tmp_path / "secrets" / "coordinator.pem"
    key_file.parent.mkdir()
    key_file.write_bytes(own.to_pem())
    key_file.chmod(0o600)
    settings = make_settings(tmp_path, backend, signing_key_file=key_file)
    app = create_app(settings, clock=FakeClock(), run_sweeper=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            coordinator = Coordinator(app=app, http=http, clock=FakeClock(), backend=backend)
            [entry] = (await keys_document(coordinator))["keys"]
            assert entry["key_id"] == own.key_id
            assert entry["public_key"] == own.public_key_b64
            _client_id, client = await coordinator.new_client()
            miner = await coordinator.new_miner("m1")
            _job_id, response = await run_job(coordinator, client, "m1", miner)
            receipt = receipt_of(response)
            assert receipt["signature"]["key_id"] == own.key_id
    # Nothing was generated in the data dir.
    assert not (settings.data_dir / "coordinator_ed25519.pem").exists()


async def test_a_small_order_miner_key_is_refused(coordinator: Coordinator) -> None:
    """The identity point's one signature verifies for every message: refused."""
    identity_point = b64url_encode(bytes([1]) + bytes(31))
    response = await register(coordinator, miner_id="m-weak", public_key=identity_point)
    assert_error(response, 422, "invalid_public_key")


async def test_concurrent_rotations_leave_one_current_key(coordinator: Coordinator) -> None:
    """Rotations are serialized: each retires the key before it, one stays current."""
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    _job_id, first = await run_job(coordinator, client, "m1", miner)
    rotations = await asyncio.gather(
        *(
            coordinator.http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers)
            for _ in range(3)
        )
    )
    assert [response.status_code for response in rotations] == [201, 201, 201]
    _job_id, last = await run_job(coordinator, client, "m1", miner)
    keys = (await keys_document(coordinator))["keys"]
    assert sorted(key["status"] for key in keys) == ["current", "retired", "retired", "retired"]
    [current] = [key for key in keys if key["status"] == "current"]
    assert coordinator.runtime.signing_key().key_id == current["key_id"]
    key_file = coordinator.runtime.settings.resolved_signing_key_file()
    assert SigningKey.from_pem(key_file.read_bytes()).key_id == current["key_id"]
    assert not [p for p in key_file.parent.iterdir() if p.name.endswith(".tmp")]
    pinned = KeyRing.from_document({"keys": keys})
    verify_receipt(receipt_of(first), pinned)
    assert receipt_of(last)["signature"]["key_id"] == current["key_id"]
    verify_receipt(receipt_of(last), pinned)


async def test_a_rotation_whose_database_step_fails_changes_nothing(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aitbc.errors import ServiceUnavailable
    from aitbc.services import keys as key_service

    before = await keys_document(coordinator)
    key_file = coordinator.runtime.settings.resolved_signing_key_file()
    file_before = key_file.read_bytes()

    async def unavailable(*_args: Any, **_kwargs: Any) -> None:
        raise ServiceUnavailable("down", error_code="database_unavailable")

    monkeypatch.setattr(key_service, "transaction", unavailable)
    response = await coordinator.http.post(
        "/v1/admin/keys/rotate", headers=coordinator.admin_headers
    )
    assert_error(response, 503, "database_unavailable")
    monkeypatch.undo()
    assert await keys_document(coordinator) == before
    assert coordinator.runtime.signing_key().key_id == before["keys"][0]["key_id"]
    assert key_file.read_bytes() == file_before
    assert not [p for p in key_file.parent.iterdir() if p.name.endswith(".tmp")]


async def test_a_configured_key_file_that_is_missing_stops_start_up(tmp_path: Path) -> None:
    from aitbc.errors import InvalidRequest
    from tests.conftest import FakeClock

    settings = make_settings(tmp_path, "sqlite", signing_key_file=tmp_path / "typo.pem")
    app = create_app(settings, clock=FakeClock(), run_sweeper=False)
    with pytest.raises(InvalidRequest, match="does not exist"):
        async with app.router.lifespan_context(app):
            pass
    assert not (tmp_path / "typo.pem").exists()
