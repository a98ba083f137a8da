"""Two real ``aitbc serve`` processes sealing one PostgreSQL database's chain (issue 14):
both run their sealer every 50 ms while transactions arrive through both, and the
chain that results is one chain: heights without gaps or repeats, each block linked
to the one before, every transaction in exactly one block, and the replay of every
balance matching each block's state root. The advisory lock lets one seal at a time.

Needs ``AITBC_TEST_DATABASE_URL``; the database's public schema is emptied first.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.domain.canonical import canonical_bytes, sha256_hex
from aitbc.domain.ledger import (
    GENESIS_PREV_HASH,
    LedgerState,
    Transaction,
    tx_root,
    verify_block_signature,
)
from aitbc.domain.signing import KeyRing, SigningKey
from aitbc.settings import to_async_url
from tests.conftest import PG_URL, reset_postgres
from tests.e2e.processes import free_port, spawn_serve, stop_process, wait_healthy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (AITBC_TEST_DATABASE_URL)"),
]

CLIENTS_PER_SERVER = 20
TRANSFERS_PER_CLIENT = 3
SETTLE_SECONDS = 30.0


def register_and_transfer(base_url: str, index: int) -> int:
    """A client registered through ``base_url`` (its grant is one mint), then a few
    transfers to the treasury; how many transactions it made."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        response = http.post("/v1/clients/register", json={"name": f"c{index}"})
        assert response.status_code == 201, response.text
        key = response.json()["api_key"]
        for nonce in range(TRANSFERS_PER_CLIENT):
            sent = http.post(
                "/v1/transfers",
                json={"to": "treasury", "amount": "0.5", "nonce": nonce},
                headers={"X-Api-Key": key},
            )
            assert sent.status_code == 201, sent.text
    return 1 + TRANSFERS_PER_CLIENT


def all_blocks(base_url: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    before: int | None = None
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if before is not None:
                params["before"] = before
            page = http.get("/v1/explorer/blocks", params=params).json()
            if not page:
                break
            blocks.extend(page)
            before = page[-1]["height"]
            if before == 0:
                break
    return sorted(blocks, key=lambda block: block["height"])


def test_two_coordinators_seal_one_chain(tmp_path: Path) -> None:
    assert PG_URL is not None
    asyncio.run(reset_postgres(to_async_url(PG_URL)))
    key_file = tmp_path / "coordinator.pem"  # one key for both, as a deployment has
    key_file.write_bytes(SigningKey.from_seed(bytes(range(32))).to_pem())
    key_file.chmod(0o600)
    servers = []
    try:
        for name in ("a", "b"):
            port = free_port()
            log_path = tmp_path / f"{name}.log"
            process = spawn_serve(
                port,
                tmp_path / name,
                log_path,
                tmp_path,
                AITBC_DATABASE_URL=PG_URL,
                AITBC_ADMIN_KEY="e2e-two-sealers",
                AITBC_SIGNING_KEY_FILE=str(key_file),
                AITBC_BLOCK_INTERVAL_SECONDS="0.05",
                AITBC_RATE_LIMIT="",
            )
            url = f"http://127.0.0.1:{port}"
            wait_healthy(process, url, lambda path=log_path: path.read_text(errors="replace"))
            servers.append((process, url))
        urls = [url for _process, url in servers]
        with ThreadPoolExecutor(max_workers=8) as pool:
            made = sum(
                pool.map(
                    lambda index: register_and_transfer(urls[index % 2], index),
                    range(2 * CLIENTS_PER_SERVER),
                )
            )
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            stats = httpx.get(urls[0] + "/v1/explorer/stats", timeout=10).json()
            if stats["pending_transactions"] == 0:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        assert stats["total_transactions"] == made

        keys = KeyRing.from_document(httpx.get(urls[1] + "/v1/keys", timeout=10).json())
        blocks = all_blocks(urls[1])
        assert [block["height"] for block in blocks] == list(range(len(blocks)))
        assert len(blocks) > 2  # the work was spread over several beats
        state = LedgerState()
        seen: set[str] = set()
        previous_hash = GENESIS_PREV_HASH
        with httpx.Client(base_url=urls[0], timeout=30) as http:
            for block in blocks:
                header = block["header"]
                assert sha256_hex(canonical_bytes(header)) == block["hash"]
                assert header["prev_hash"] == previous_hash
                verify_block_signature(header, block["signature"], keys)
                body = http.get(f"/v1/explorer/blocks/{block['height']}/transactions")
                transactions = [Transaction.parse(doc) for doc in json.loads(body.content)]
                assert header["tx_count"] == len(transactions)
                assert header["tx_root"] == tx_root([tx.id for tx in transactions])
                for transaction in transactions:
                    assert transaction.id not in seen  # in exactly one block
                    seen.add(transaction.id)
                    state.apply(transaction)
                assert header["state_root"] == state.state_root()
                previous_hash = block["hash"]
        assert len(seen) == made
    finally:
        for process, _url in servers:
            stop_process(process)
