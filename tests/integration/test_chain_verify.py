"""``aitbc.sdk.chain`` against a real coordinator, through its public HTTP API only.

A chain is built over HTTP (clients with their grants, miners, paid and cancelled
jobs with receipts, plain and signed transfers, a key rotation) and sealed with
``seal_once``; the verifier, given an ``httpx.AsyncClient`` on the app and the keys
of ``GET /v1/keys``, finds it sound. Then the database is tampered with directly
(SQL ``UPDATE``/``DELETE`` on transactions, blocks and receipts), on SQLite and
PostgreSQL, and the verifier names the block and the reason.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from aitbc.domain.canonical import canonical_bytes
from aitbc.domain.ledger import TxType, sign_transaction, transaction_body, transaction_id
from aitbc.domain.signing import KeyRing, SigningKey
from aitbc.domain.timestamps import unix_seconds
from aitbc.sdk.chain import ChainReport, HttpChainSource, VerifiedCopy, verify_chain
from aitbc.services.ledger import seal_once
from tests.conftest import Coordinator
from tests.integration.helpers import claim_ok, complete, ok

ALICE_KEY = SigningKey.from_seed(bytes(range(100, 132)))


@dataclass
class Built:
    """What the chain holds, for the tests to aim their tampering."""

    alice: str
    bob: str
    miner: str
    receipt_ids: list[str]
    tip: int


async def seal(coordinator: Coordinator) -> int:
    block = await seal_once(coordinator.runtime)
    assert block is not None
    coordinator.clock.advance(5)
    return block.height


async def paid_job(coordinator: Coordinator, client: dict[str, str], miner: dict[str, str]) -> str:
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    receipt = ok(await complete(coordinator, job["job_id"], "m1", miner))
    receipt_id: str = receipt["receipt_id"]
    return receipt_id


async def signed_transfer(
    coordinator: Coordinator, sender: str, headers: dict[str, str], to: str, nonce: int
) -> None:
    now = unix_seconds(coordinator.clock())
    body = transaction_body(
        tx_type=TxType.TRANSFER,
        sender=sender,
        recipient=to,
        amount_micro=250_000,
        fee_micro=0,
        ref=None,
        timestamp=now,
        extra={"nonce": nonce},
    )
    payload = {
        "to": to,
        "amount": "0.25",
        "nonce": nonce,
        "timestamp": now,
        "signature": sign_transaction(body, ALICE_KEY),
    }
    ok(await coordinator.http.post("/v1/transfers", json=payload, headers=headers), 201)


async def register_key(coordinator: Coordinator, headers: dict[str, str]) -> None:
    body = {"public_key": ALICE_KEY.public_key_b64}
    ok(await coordinator.http.post("/v1/accounts/me/keys", json=body, headers=headers), 201)


async def build_chain(coordinator: Coordinator) -> Built:
    """Genesis and six blocks: grants; paid jobs; transfers (one signed); a cancelled
    job; a rotation of the coordinator's key; more jobs under the new key."""
    http = coordinator.http
    alice, alice_headers = await coordinator.new_client()
    bob, bob_headers = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.2")
    await seal(coordinator)  # 1: the grants
    receipts = [await paid_job(coordinator, alice_headers, miner) for _ in range(3)]
    receipts.append(await paid_job(coordinator, bob_headers, miner))
    await seal(coordinator)  # 2: holds, receipts, releases, refunds
    transfer = {"to": bob, "amount": "1.5", "nonce": 1}
    ok(await http.post("/v1/transfers", json=transfer, headers=alice_headers), 201)
    back = {"to": alice, "amount": "0.5", "nonce": 77}
    ok(await http.post("/v1/transfers", json=back, headers=bob_headers), 201)
    # A key registered in the same second as an unsigned transfer would make that
    # transfer look unsigned (test_a_key_registered_in_the_second_of_a_transfer).
    coordinator.clock.advance(1)
    await register_key(coordinator, alice_headers)
    coordinator.clock.advance(1)
    await signed_transfer(coordinator, alice, alice_headers, bob, 2)
    await seal(coordinator)  # 3: transfers
    job = await coordinator.submit(bob_headers)
    ok(await http.post(f"/v1/jobs/{job['job_id']}/cancel", headers=bob_headers))
    pay = {"to": alice, "amount": "0.0001", "nonce": 1}
    ok(await http.post("/v1/transfers", json=pay, headers=miner), 201)
    await seal(coordinator)  # 4: a cancelled job, the miner pays
    ok(await http.post("/v1/admin/keys/rotate", headers=coordinator.admin_headers), 201)
    coordinator.clock.advance(1)
    receipts.append(await paid_job(coordinator, bob_headers, miner))
    await signed_transfer(coordinator, alice, alice_headers, bob, 3)
    tip = await seal(coordinator)  # 5: sealed by the new key
    return Built(alice, bob, "m1", receipts, tip)


async def coordinator_keys(coordinator: Coordinator) -> KeyRing:
    return KeyRing.from_document(ok(await coordinator.http.get("/v1/keys")))


async def verify(coordinator: Coordinator, **options: Any) -> ChainReport:
    source = HttpChainSource(coordinator.http)
    return await verify_chain(source, await coordinator_keys(coordinator), **options)


async def sql(coordinator: Coordinator, statement: str, **params: Any) -> list[Any]:
    def work(connection: Connection) -> list[Any]:
        result = connection.execute(text(statement), params)
        return list(result.all()) if result.returns_rows else []

    async with coordinator.runtime.engine.begin() as connection:
        return await connection.run_sync(work)


async def transaction_row(coordinator: Coordinator, where: str, **params: Any) -> Any:
    columns = "seq, id, document, block_height, position"
    where = f"WHERE {where} ORDER BY seq LIMIT 1"
    query = f"SELECT {columns} FROM ledger_transactions {where}"  # noqa: S608 - constants
    rows = await sql(coordinator, query, **params)
    assert rows, where
    return rows[0]


def expect_failure(report: ChainReport, height: int, code: str) -> None:
    assert report.failure is not None, "the tampering was not noticed"
    assert (report.failure.height, report.failure.error_code) == (height, code), report.failure
    assert report.height == height - 1
    assert report.blocks_checked == height


# --- a sound chain ------------------------------------------------------------------------


async def test_a_chain_built_over_http_verifies(coordinator: Coordinator) -> None:
    built = await build_chain(coordinator)
    report = await verify(coordinator)
    assert report.ok, report.failure
    assert report.height == built.tip == 5 and report.blocks_checked == 6
    stats = ok(await coordinator.http.get("/v1/explorer/stats"))
    assert report.transactions_checked == stats["total_transactions"]
    assert report.receipts_checked == len(built.receipt_ids) == 5
    assert report.supply_micro == round(stats["total_supply"] * 1_000_000)
    assert report.fees_micro == round(stats["total_fees"] * 1_000_000)
    # As many accounts hold money in the replay as in the coordinator's books.
    (funded,) = await sql(coordinator, "SELECT COUNT(*) AS n FROM accounts WHERE balance_micro > 0")
    assert report.accounts == funded.n
    tip = ok(await coordinator.http.get("/v1/explorer/blocks", params={"limit": 1}))[0]
    assert report.block_hash == tip["hash"]
    assert report.state_root == tip["header"]["state_root"]


async def test_verification_works_under_the_old_prefix_and_with_few_blocks_in_flight(
    coordinator: Coordinator,
) -> None:
    await build_chain(coordinator)
    source = HttpChainSource(coordinator.http, prefix="/explorer")
    report = await verify_chain(source, await coordinator_keys(coordinator), window=1)
    assert report.ok, report.failure


async def test_pinned_keys_without_the_rotated_key_stop_at_its_first_block(
    coordinator: Coordinator,
) -> None:
    old_keys = await coordinator_keys(coordinator)
    await build_chain(coordinator)
    report = await verify_chain(HttpChainSource(coordinator.http), old_keys)
    expect_failure(report, 5, "unknown_key")


async def test_a_key_registered_in_the_second_of_a_transfer(coordinator: Coordinator) -> None:
    alice, alice_headers = await coordinator.new_client()
    bob, _bob_headers = await coordinator.new_client()
    del alice
    transfer = {"to": bob, "amount": "1", "nonce": 1}
    ok(await coordinator.http.post("/v1/transfers", json=transfer, headers=alice_headers), 201)
    await register_key(coordinator, alice_headers)  # same (fake) second
    await seal(coordinator)
    report = await verify(coordinator)
    assert report.ok, report.failure


# --- tampering in the database ------------------------------------------------------------

Tamper = Callable[[Coordinator, Built], Awaitable[tuple[int, str]]]


async def changed_amount(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    row = await transaction_row(coordinator, "type = 'transfer' AND sender = :s", s=built.alice)
    document = json.loads(row.document)
    document["amount"] = 1000.0
    await sql(
        coordinator,
        "UPDATE ledger_transactions SET document = :d WHERE seq = :q",
        d=json.dumps(document),
        q=row.seq,
    )
    return row.block_height, "bad_transaction_id"


async def changed_amount_new_id(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    row = await transaction_row(coordinator, "type = 'escrow_release'")
    document = json.loads(row.document)
    document["amount"] = document["amount"] * 2
    document["id"] = transaction_id(document)
    await sql(
        coordinator,
        "UPDATE ledger_transactions SET document = :d, id = :i WHERE seq = :q",
        d=canonical_bytes(document).decode(),
        i=document["id"],
        q=row.seq,
    )
    return row.block_height, "tx_root_mismatch"


async def changed_header(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    (row,) = await sql(coordinator, "SELECT header FROM blocks WHERE height = 3")
    header = json.loads(row.header)
    header["state_root"] = "ab" * 32
    await sql(coordinator, "UPDATE blocks SET header = :h WHERE height = 3", h=json.dumps(header))
    return 3, "bad_signature"


async def changed_signature(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    (block2,) = await sql(coordinator, "SELECT signature FROM blocks WHERE height = 2")
    await sql(coordinator, "UPDATE blocks SET signature = :s WHERE height = 4", s=block2.signature)
    return 4, "bad_signature"


async def swapped_positions(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    rows = await sql(
        coordinator,
        "SELECT seq, position FROM ledger_transactions WHERE block_height = 2 "
        "AND position IN (1, 2) ORDER BY position",
    )
    first, second = rows
    for row, position in ((first, second.position), (second, first.position)):
        await sql(
            coordinator,
            "UPDATE ledger_transactions SET position = :p WHERE seq = :q",
            p=position,
            q=row.seq,
        )
    return 2, "tx_root_mismatch"


async def deleted_transaction(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    row = await transaction_row(coordinator, "block_height = 3 AND position = 1")
    await sql(coordinator, "DELETE FROM ledger_transactions WHERE seq = :q", q=row.seq)
    return 3, "tx_count_mismatch"


async def moved_transaction(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    row = await transaction_row(coordinator, "block_height = 4 AND position = 0")
    await sql(
        coordinator,
        "UPDATE ledger_transactions SET block_height = 5, position = 99 WHERE seq = :q",
        q=row.seq,
    )
    return 4, "tx_count_mismatch"


async def deleted_block(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    await sql(coordinator, "DELETE FROM blocks WHERE height = 3")
    return 3, "block_missing"


async def changed_receipt(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    receipt_id = built.receipt_ids[1]
    (row,) = await sql(coordinator, "SELECT document FROM receipts WHERE id = :r", r=receipt_id)
    receipt = json.loads(row.document)
    receipt["units"] += 1
    await sql(
        coordinator,
        "UPDATE receipts SET document = :d WHERE id = :r",
        d=canonical_bytes(receipt).decode(),
        r=receipt_id,
    )
    return 2, "receipt_hash_mismatch"


async def deleted_receipt(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    await sql(coordinator, "DELETE FROM receipts WHERE id = :r", r=built.receipt_ids[-1])
    return 5, "receipt_missing"


async def unsigned_transfer(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    # A signed transfer with its signature stripped: the id does not cover it, so only
    # the rule "a sender with a key must sign" catches it.
    row = await transaction_row(
        coordinator, "type = 'transfer' AND sender = :s AND nonce = 2", s=built.alice
    )
    document = json.loads(row.document)
    del document["signature"]
    await sql(
        coordinator,
        "UPDATE ledger_transactions SET document = :d WHERE seq = :q",
        d=canonical_bytes(document).decode(),
        q=row.seq,
    )
    return row.block_height, "missing_signature"


async def changed_balance(coordinator: Coordinator, built: Built) -> tuple[int, str]:
    """A balance changed where the sealer keeps them: the next block it seals carries
    a state root no replay of the chain gives."""
    await sql(
        coordinator,
        "UPDATE chain_balances SET balance_micro = balance_micro + 1000000 WHERE address = :a",
        a=built.alice,
    )
    coordinator.runtime.sealed_state = None  # as after a restart: read them back
    _client, headers = await coordinator.new_client()
    payment = {"to": built.bob, "amount": "1", "nonce": 9}
    ok(await coordinator.http.post("/v1/transfers", json=payment, headers=headers), 201)
    return await seal(coordinator), "state_root_mismatch"


TAMPERS: list[Tamper] = [
    changed_amount,
    changed_amount_new_id,
    changed_header,
    changed_signature,
    swapped_positions,
    deleted_transaction,
    moved_transaction,
    deleted_block,
    changed_receipt,
    deleted_receipt,
    unsigned_transfer,
    changed_balance,
]


@pytest.mark.parametrize("tamper", TAMPERS, ids=[tamper.__name__ for tamper in TAMPERS])
async def test_tampering_in_the_database_names_the_block_and_the_reason(
    coordinator: Coordinator, tamper: Tamper
) -> None:
    built = await build_chain(coordinator)
    assert (await verify(coordinator)).ok
    height, code = await tamper(coordinator, built)
    expect_failure(await verify(coordinator), height, code)


# --- the local copy -----------------------------------------------------------------------


async def test_a_verified_copy_resumes_and_notices_rewritten_history(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    built = await build_chain(coordinator)
    keys = await coordinator_keys(coordinator)
    source = HttpChainSource(coordinator.http)
    copy = VerifiedCopy(tmp_path / "copy", "http://testserver")
    first = await verify_chain(source, keys, copy=copy)
    assert first.ok and first.height == built.tip
    copy.close()

    # New blocks: the next run checks only those.
    _client, headers = await coordinator.new_client()
    payment = {"to": built.alice, "amount": "1", "nonce": 5}
    ok(await coordinator.http.post("/v1/transfers", json=payment, headers=headers), 201)
    await seal(coordinator)
    copy = VerifiedCopy(tmp_path / "copy", "http://testserver")
    requests_before = source.requests
    second = await verify_chain(source, keys, copy=copy)
    assert second.ok, second.failure
    assert second.resumed_from == built.tip + 1 and second.height == built.tip + 1
    assert second.checked_this_run == 2  # the grant and the transfer
    assert second.transactions_checked == first.transactions_checked + 2
    assert source.requests - requests_before <= 5

    # The last verified block replaced in the database: the copy notices.
    (row,) = await sql(coordinator, "SELECT header FROM blocks WHERE height = :h", h=second.height)
    header = json.loads(row.header)
    header["timestamp"] += 1
    await sql(
        coordinator,
        "UPDATE blocks SET header = :d WHERE height = :h",
        d=json.dumps(header),
        h=second.height,
    )
    third = await verify_chain(source, keys, copy=copy)
    assert third.failure is not None
    assert (third.failure.height, third.failure.error_code) == (second.height, "history_rewritten")
    copy.close()
