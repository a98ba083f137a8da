"""The sealer: genesis at start-up, pending transactions sealed into signed,
hash-chained blocks whose state root is the replay of every balance (issue 14)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from aitbc.domain.canonical import canonical_bytes, sha256_hex
from aitbc.domain.ledger import (
    GENESIS_PREV_HASH,
    LedgerState,
    Transaction,
    state_root,
    tx_root,
    verify_block_signature,
)
from aitbc.domain.signing import KeyRing
from aitbc.services.ledger import seal_once
from tests.conftest import Coordinator
from tests.integration.helpers import claim_ok, complete, ok


async def rows(coordinator: Coordinator, sql: str) -> list[Any]:
    async with coordinator.runtime.engine.connect() as connection:
        result = await connection.run_sync(lambda sync: list(sync.execute(text(sql)).all()))
    return result


async def run_a_paid_job(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.2")
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    ok(await complete(coordinator, job["job_id"], "m1", miner))


async def test_genesis_exists_after_start(coordinator: Coordinator) -> None:
    blocks = await rows(coordinator, "SELECT height, header, signature FROM blocks")
    assert len(blocks) == 1
    header = json.loads(blocks[0].header)
    assert header["height"] == 0 and header["prev_hash"] == GENESIS_PREV_HASH
    assert header["tx_count"] == 0
    assert header["tx_root"] == sha256_hex(b"") == header["state_root"]
    keys = KeyRing.from_document(ok(await coordinator.http.get("/v1/keys")))
    verify_block_signature(header, json.loads(blocks[0].signature), keys)


async def test_a_block_seals_what_is_pending_and_replays_to_its_state_root(
    coordinator: Coordinator,
) -> None:
    await run_a_paid_job(coordinator)
    block = await seal_once(coordinator.runtime)
    assert block is not None and block.height == 1 and block.tx_count == 5
    header = json.loads(block.header)
    assert sha256_hex(canonical_bytes(header)) == block.hash
    genesis = (await rows(coordinator, "SELECT hash FROM blocks WHERE height = 0"))[0]
    assert header["prev_hash"] == genesis.hash
    keys = KeyRing.from_document(ok(await coordinator.http.get("/v1/keys")))
    verify_block_signature(header, json.loads(block.signature), keys)
    sealed = await rows(
        coordinator,
        "SELECT id, document, position FROM ledger_transactions "
        "WHERE block_height = 1 ORDER BY position",
    )
    assert [row.position for row in sealed] == list(range(5))
    assert header["tx_root"] == tx_root([row.id for row in sealed])
    state = LedgerState()
    for row in sealed:
        state.apply(Transaction.parse(json.loads(row.document)))
    assert header["state_root"] == state_root(state.balances)
    # The sealed balances are the live ones once nothing is pending.
    live = {
        row.address: row.balance_micro
        for row in await rows(coordinator, "SELECT address, balance_micro FROM accounts")
        if row.balance_micro
    }
    assert state.balances == live
    chain = {
        row.address: row.balance_micro
        for row in await rows(coordinator, "SELECT address, balance_micro FROM chain_balances")
    }
    assert chain == live
    # Nothing pending: no empty block.
    assert await seal_once(coordinator.runtime) is None


async def test_blocks_chain_and_state_carries_over(coordinator: Coordinator) -> None:
    await run_a_paid_job(coordinator)
    first = await seal_once(coordinator.runtime)
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client)
    ok(await coordinator.http.post(f"/v1/jobs/{job['job_id']}/cancel", headers=client))
    # A sealer that lost its cached state reads the sealed balances back.
    coordinator.runtime.sealed_state = None
    second = await seal_once(coordinator.runtime)
    assert first is not None and second is not None
    assert json.loads(second.header)["prev_hash"] == first.hash
    assert second.tx_count == 3  # the grant, the hold and its refund
    state = LedgerState()
    for row in await rows(
        coordinator,
        "SELECT document FROM ledger_transactions ORDER BY block_height, position",
    ):
        state.apply(Transaction.parse(json.loads(row.document)))
    assert json.loads(second.header)["state_root"] == state.state_root()


@pytest.mark.parametrize("settings_overrides", [{"seal_empty_blocks": True}])
async def test_empty_blocks_when_configured(coordinator: Coordinator) -> None:
    block = await seal_once(coordinator.runtime)
    assert block is not None and block.tx_count == 0
    header = json.loads(block.header)
    assert header["tx_root"] == sha256_hex(b"")


async def test_a_failed_seal_leaves_no_half_block(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aitbc.storage import ledger_queries

    await run_a_paid_job(coordinator)

    def broken(*_args: Any) -> None:
        raise RuntimeError("killed mid-block")

    monkeypatch.setattr(ledger_queries, "write_chain_balances", broken)
    with pytest.raises(RuntimeError):
        await seal_once(coordinator.runtime)
    assert len(await rows(coordinator, "SELECT height FROM blocks")) == 1
    pending = await rows(
        coordinator, "SELECT id FROM ledger_transactions WHERE block_height IS NULL"
    )
    assert len(pending) == 5
    monkeypatch.undo()
    coordinator.runtime.sealed_state = None
    block = await seal_once(coordinator.runtime)
    assert block is not None and block.height == 1 and block.tx_count == 5
