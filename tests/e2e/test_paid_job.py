"""A client pays for a job that ``aitbc miner`` runs on the bundled model, and it is all
on the chain (issue 14): the hold, the miner's share, the treasury's fee, the refund
and the receipt's anchor; ``aitbc chain verify`` passes from outside through the public
API; SIGKILL and a restart of the coordinator lose nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.domain.canonical import canonical_bytes, sha256_hex
from aitbc.domain.money import to_micro
from aitbc.domain.payment import fee_micro
from tests.e2e import test_miner_daemon
from tests.e2e.processes import AITBC, clean_env
from tests.e2e.test_miner_daemon import Market

pytestmark = pytest.mark.e2e
# A coordinator, a client account on it, and the miners a test starts.
market = test_miner_daemon.market

SEAL_TIMEOUT_SECONDS = 20.0
VERIFY_TIMEOUT_SECONDS = 120


def micro(value: Any) -> int:
    return to_micro(str(value))


def balance(market: Market, address: str) -> int:
    return micro(market.get(f"/v1/accounts/{address}", headers={})["balance"])


def chain_verify(market: Market, keys_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AITBC, "chain", "verify", "--url", market.coordinator.base_url, "--keys", keys_file],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=VERIFY_TIMEOUT_SECONDS,
        check=False,
    )


def sealed_proof(market: Market, receipt_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + SEAL_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{market.coordinator.base_url}/v1/explorer/receipts/{receipt_id}/proof", timeout=10
        )
        if response.status_code == 200:
            proof: dict[str, Any] = response.json()
            return proof
        time.sleep(0.2)
    market.fail(f"receipt {receipt_id} was not sealed in {SEAL_TIMEOUT_SECONDS} s")
    raise AssertionError  # unreachable: fail raises


def test_a_paid_job_is_on_the_chain_and_survives_a_restart(
    market: Market,
    tmp_path: Path,
) -> None:
    me = market.get("/v1/accounts/me")
    client_id, granted = me["address"], micro(me["balance"])
    market.start_miner()
    job = market.run("Name a colour.", max_tokens=16, seed=7)
    receipt = market.get(f"/v1/jobs/{job['job_id']}/receipt")
    price = micro(receipt["price"])
    fee = fee_micro(price, 500)
    assert price > 0
    assert balance(market, client_id) == granted - price
    assert balance(market, job["miner_id"]) == price - fee
    assert balance(market, "treasury") == fee
    assert balance(market, "escrow") == 0
    assert market.get("/v1/accounts/me")["held"] == 0

    evidence = sealed_proof(market, receipt["receipt_id"])
    assert evidence["receipt"] == receipt
    height = evidence["proof"]["block_height"]
    documents = market.get(f"/v1/explorer/blocks/{height}/transactions", headers={})
    mine = [doc for doc in documents if doc["ref"] in (job["job_id"], sha256_hex_of(receipt))]
    kinds = {doc["type"]: doc for doc in mine}
    assert kinds["receipt"]["receipt_id"] == receipt["receipt_id"]
    assert micro(kinds["escrow_release"]["amount"]) == price - fee
    assert micro(kinds["escrow_release"]["fee"]) == fee
    assert kinds["escrow_release"]["to"] == job["miner_id"]
    assert kinds["escrow_refund"]["to"] == client_id

    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps(market.get("/v1/keys", headers={})))
    verified = chain_verify(market, keys_file)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)

    before = {
        address: balance(market, address)
        for address in (client_id, job["miner_id"], "treasury", "escrow")
    }
    blocks_before = market.get("/v1/explorer/blocks", params={"limit": 1000}, headers={})
    market.coordinator.kill()
    market.coordinator.start()
    after = {address: balance(market, address) for address in before}
    assert after == before
    blocks_after = market.get("/v1/explorer/blocks", params={"limit": 1000}, headers={})
    assert blocks_after[-len(blocks_before) :] == blocks_before
    verified = chain_verify(market, keys_file)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)


def sha256_hex_of(receipt: dict[str, Any]) -> str:
    """The hash a receipt transaction's ``ref`` holds: of the receipt's canonical bytes."""
    return sha256_hex(canonical_bytes(receipt))
