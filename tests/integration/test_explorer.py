"""The public Explorer API and the receipt bundle (DESIGN.md sections 3 and 6).

A small chain is built through HTTP (clients, a miner, mints, a transfer, paid and
cancelled jobs), sealed with ``seal_once``, and then read back through the explorer
only, as an outside verifier would: every block hash is recomputed from its header,
every block signature checked with the key from ``GET /v1/keys``, every transaction
id recomputed from its document, and every inclusion proof checked by the verifier
written below from RFC 6962 and RFC 9162 (not ``aitbc.domain``), against the header's
``tx_root``. Prompts and results carry a unique marker that no public response may
contain.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, select, text

from aitbc.domain.canonical import canonical_bytes
from aitbc.domain.ledger import transaction_id
from aitbc.domain.money import to_micro
from aitbc.schemas import (
    AddressDetail,
    Block,
    BlockDetail,
    InclusionProof,
    NetworkStats,
    ReceiptBundle,
    ReceiptProof,
    ReceiptSummary,
    TransactionRecord,
)
from aitbc.services.ledger import seal_once
from aitbc.storage import db, ledger_queries
from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, claim_ok, complete, ok

PREFIXES = ("/v1/explorer", "/explorer")
V1 = "/v1/explorer"
MARKER = f"xplr{uuid.uuid4().hex}"
PROMPT = f"Tell me the secret {MARKER}-prompt"
RESULT = f"The secret is {MARKER}-result"
ZERO_HASH = "0" * 64
EXAMPLE_TIME = "2026-02-13T10:00:00Z"


# --- an independent verifier: RFC 6962 trees, RFC 9162 proofs, RFC 8032 signatures -----


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 section 2.1 defines it (recursive)."""
    n = len(leaves)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return _sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:]))


def rfc6962_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1 (recursive)."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*rfc6962_path(m, leaves[:k]), rfc6962_root(leaves[k:])]
    return [*rfc6962_path(m - k, leaves[k:]), rfc6962_root(leaves[:k])]


def rfc9162_verify(
    leaf: bytes, leaf_index: int, tree_size: int, path: list[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2, for the leaf data ``leaf`` (a raw transaction id)."""
    if leaf_index >= tree_size:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = _sha256(b"\x00" + leaf)
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _sha256(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def verify_signature(keys: dict[str, Any], signature: dict[str, Any], data: bytes) -> None:
    """An Ed25519 signature object over ``data`` by a pinned coordinator key."""
    assert set(signature) == {"alg", "key_id", "sig"}, signature
    assert signature["alg"] == "ed25519"
    (key,) = [entry for entry in keys["keys"] if entry["key_id"] == signature["key_id"]]
    assert key["owner"] == "coordinator"
    raw = b64url_decode(key["public_key"])
    assert hashlib.sha256(raw).hexdigest()[:16] == key["key_id"]
    # Raises InvalidSignature when it does not match.
    Ed25519PublicKey.from_public_bytes(raw).verify(b64url_decode(signature["sig"]), data)


def check_block(block: dict[str, Any], keys: dict[str, Any]) -> None:
    """A Block: its hash is its header's, its signature the sealer's, its fields agree."""
    header = block["header"]
    assert set(header) == {
        "height",
        "prev_hash",
        "timestamp",
        "tx_root",
        "state_root",
        "tx_count",
        "sealer",
    }
    assert hashlib.sha256(canonical_bytes(header)).hexdigest() == block["hash"]
    assert block["height"] == header["height"]
    assert block["transactions"] == header["tx_count"]
    assert block["signature"]["key_id"] == header["sealer"]
    verify_signature(keys, block["signature"], canonical_bytes(header))
    iso = block["timestamp"]
    assert isinstance(iso, str) and iso.endswith("Z") and len(iso) == len(EXAMPLE_TIME), iso
    assert datetime.fromisoformat(iso.replace("Z", "+00:00")) == datetime.fromtimestamp(
        header["timestamp"], UTC
    )


def check_proof(proof: dict[str, Any], header: dict[str, Any], block_hash: str) -> None:
    """An inclusion proof against a header already checked."""
    assert set(proof) == {
        "tx_id",
        "block_height",
        "block_hash",
        "leaf_index",
        "tree_size",
        "audit_path",
        "tx_root",
    }
    assert proof["block_height"] == header["height"]
    assert proof["block_hash"] == block_hash
    assert proof["tx_root"] == header["tx_root"]
    assert proof["tree_size"] == header["tx_count"]
    assert rfc9162_verify(
        bytes.fromhex(proof["tx_id"]),
        proof["leaf_index"],
        proof["tree_size"],
        [bytes.fromhex(node) for node in proof["audit_path"]],
        bytes.fromhex(header["tx_root"]),
    )


# --- the chain under test -----------------------------------------------------------------


@dataclass
class Chain:
    """What was built, to compare the explorer's answers with."""

    client_a: str
    headers_a: dict[str, str]
    client_b: str
    headers_b: dict[str, str]
    miner: str
    miner_headers: dict[str, str]
    job_ids: list[str] = field(default_factory=list)
    sealed_receipts: list[dict[str, Any]] = field(default_factory=list)
    pending_receipt: dict[str, Any] = field(default_factory=dict)


async def run_job(coordinator: Coordinator, chain: Chain, headers: dict[str, str]) -> Any:
    coordinator.clock.advance(1)  # jobs are listed newest first by creation time
    job = await coordinator.submit(headers, prompt=PROMPT)
    chain.job_ids.append(job["job_id"])
    await claim_ok(coordinator, job["job_id"], chain.miner, chain.miner_headers)
    return ok(
        await complete(
            coordinator,
            job["job_id"],
            chain.miner,
            chain.miner_headers,
            result=RESULT,
            usage={"prompt_tokens": 5, "completion_tokens": 4},
        )
    )


async def mint(coordinator: Coordinator, address: str, amount: str) -> None:
    ok(
        await coordinator.http.post(
            "/v1/admin/mint",
            json={"address": address, "amount": amount},
            headers=coordinator.admin_headers,
        ),
        201,
    )


@pytest.fixture
async def chain(coordinator: Coordinator) -> Chain:
    """Blocks 0 (genesis), 1 and 2 sealed, and a paid job's transactions pending."""
    client_a, headers_a = await coordinator.new_client()
    client_b, headers_b = await coordinator.new_client()
    miner_headers = await coordinator.new_miner("m1", price="0.2")
    built = Chain(client_a, headers_a, client_b, headers_b, "m1", miner_headers)
    # Block 1: odd sizes make audit paths with carried-up nodes.
    for amount in ("1", "2.5", "0.000001", "7"):
        await mint(coordinator, client_a, amount)
    built.sealed_receipts.append(await run_job(coordinator, built, headers_a))
    ok(
        await coordinator.http.post(
            "/v1/transfers", json={"to": client_b, "amount": "1.5", "nonce": 1}, headers=headers_a
        ),
        201,
    )
    coordinator.clock.advance(1)
    cancelled = await coordinator.submit(headers_a, prompt=PROMPT)
    built.job_ids.append(cancelled["job_id"])
    ok(await coordinator.http.post(f"/v1/jobs/{cancelled['job_id']}/cancel", headers=headers_a))
    first = await seal_once(coordinator.runtime)
    assert first is not None and first.height == 1
    # Block 2.
    built.sealed_receipts.append(await run_job(coordinator, built, headers_b))
    second = await seal_once(coordinator.runtime)
    assert second is not None and second.height == 2
    # Pending: a third job's hold, receipt, release and refund.
    built.pending_receipt = await run_job(coordinator, built, headers_a)
    return built


async def get(coordinator: Coordinator, path: str, **params: Any) -> Any:
    return ok(await coordinator.http.get(path, params=params or None))


async def keys_of(coordinator: Coordinator) -> dict[str, Any]:
    body: dict[str, Any] = await get(coordinator, "/v1/keys")
    return body


async def same_under_both_prefixes(coordinator: Coordinator, path: str, **params: Any) -> Any:
    """The body of ``path`` under ``/v1/explorer``, checked equal under ``/explorer``."""
    responses = [
        await coordinator.http.get(prefix + path, params=params or None) for prefix in PREFIXES
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
    assert responses[0].content == responses[1].content
    return responses[0].json()


async def all_transactions(coordinator: Coordinator, **filters: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = await get(
        coordinator, f"{V1}/transactions", limit=1000, **filters
    )
    return records


# --- blocks -------------------------------------------------------------------------------


async def test_blocks_newest_first_hashed_and_signed(
    coordinator: Coordinator, chain: Chain
) -> None:
    keys = await keys_of(coordinator)
    blocks = await same_under_both_prefixes(coordinator, "/blocks")
    assert [block["height"] for block in blocks] == [2, 1, 0]
    for block in blocks:
        assert set(block) == {"height", "hash", "timestamp", "transactions", "header", "signature"}
        Block.model_validate(block)
        check_block(block, keys)
    # Hash-chained down to genesis.
    for newer, older in itertools.pairwise(blocks):
        assert newer["header"]["prev_hash"] == older["hash"]
        assert newer["header"]["timestamp"] >= older["header"]["timestamp"]
    assert blocks[-1]["header"]["prev_hash"] == ZERO_HASH
    assert blocks[-1]["header"]["tx_root"] == hashlib.sha256(b"").hexdigest()
    # The header is served exactly as hashed: its bytes in the body are canonical.
    raw = (await coordinator.http.get(f"{V1}/blocks")).content
    for block in blocks:
        assert b'"header":' + canonical_bytes(block["header"]) in raw


async def test_blocks_page_with_limit_and_before(coordinator: Coordinator, chain: Chain) -> None:
    everything = await get(coordinator, f"{V1}/blocks", limit=1000)
    walked: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 1}
        if before is not None:
            params["before"] = before
        page = await same_under_both_prefixes(coordinator, "/blocks", **params)
        if not page:
            break
        assert len(page) == 1
        walked.extend(page)
        before = page[-1]["height"]
    assert walked == everything
    assert await get(coordinator, f"{V1}/blocks", before=2) == everything[1:]
    assert await get(coordinator, f"{V1}/blocks", before=0) == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"before": -1}, {"limit": "x"}):
        for prefix in PREFIXES:
            assert_error(await coordinator.http.get(f"{prefix}/blocks", params=bad), 422)


async def test_one_block_by_height_or_hash(coordinator: Coordinator, chain: Chain) -> None:
    keys = await keys_of(coordinator)
    for listed in await get(coordinator, f"{V1}/blocks"):
        by_height = await same_under_both_prefixes(coordinator, f"/blocks/{listed['height']}")
        by_hash = await same_under_both_prefixes(coordinator, f"/blocks/{listed['hash']}")
        assert by_height == by_hash
        assert by_hash == (await get(coordinator, f"{V1}/blocks/{listed['hash'].upper()}"))
        assert {name: value for name, value in by_height.items() if name != "tx_ids"} == listed
        BlockDetail.model_validate(by_height)
        check_block(by_height, keys)
        tx_ids = by_height["tx_ids"]
        assert len(tx_ids) == listed["transactions"]
        root = rfc6962_root([bytes.fromhex(tx_id) for tx_id in tx_ids])
        assert root.hex() == listed["header"]["tx_root"]


async def test_unknown_and_malformed_blocks(coordinator: Coordinator, chain: Chain) -> None:
    for prefix in PREFIXES:
        for missing in ("3", "9999999999999999", "ab" * 32):
            for suffix in ("", "/transactions"):
                response = await coordinator.http.get(f"{prefix}/blocks/{missing}{suffix}")
                assert_error(response, 404, "block_not_found")
        for bad in ("-1", "x", "12345678901234567890", "ab" * 31, "g" * 64, "1.5"):
            for suffix in ("", "/transactions"):
                assert_error(await coordinator.http.get(f"{prefix}/blocks/{bad}{suffix}"), 422)


async def test_block_transactions_exactly_as_hashed(coordinator: Coordinator, chain: Chain) -> None:
    for height in (0, 1, 2):
        detail = await get(coordinator, f"{V1}/blocks/{height}")
        response = await coordinator.http.get(f"{V1}/blocks/{height}/transactions")
        assert response.status_code == 200
        legacy = await coordinator.http.get(f"/explorer/blocks/{height}/transactions")
        assert legacy.content == response.content
        by_hash = await coordinator.http.get(f"{V1}/blocks/{detail['hash']}/transactions")
        assert by_hash.content == response.content
        documents = response.json()
        # Each element is the canonical text of the transaction: what its id hashes.
        assert response.content == b"[" + b",".join(map(canonical_bytes, documents)) + b"]"
        assert [transaction_id(document) for document in documents] == detail["tx_ids"]
        assert [document["id"] for document in documents] == detail["tx_ids"]
        root = rfc6962_root([bytes.fromhex(document["id"]) for document in documents])
        assert root.hex() == detail["header"]["tx_root"]
        for document in documents:
            assert document["timestamp"] <= detail["header"]["timestamp"]
    first = (await coordinator.http.get(f"{V1}/blocks/1/transactions")).json()
    kinds = [document["type"] for document in first]
    assert kinds.count("mint") == 2 + 4  # the two grants and four mints
    assert {"escrow_hold", "receipt", "escrow_release", "escrow_refund", "transfer"} <= set(kinds)


# --- transactions -------------------------------------------------------------------------


async def test_transactions_newest_first_with_their_place(
    coordinator: Coordinator, chain: Chain
) -> None:
    records = await same_under_both_prefixes(coordinator, "/transactions", limit=1000)
    sealed: list[str] = []
    for height in (0, 1, 2):
        sealed.extend((await get(coordinator, f"{V1}/blocks/{height}"))["tx_ids"])
    pending = [record for record in records if record["block_height"] is None]
    assert len(pending) == 4  # the pending job's hold, receipt, release and refund
    assert all(record["position"] is None for record in pending)
    # Newest first: the pending ones, then the chain from its tip back.
    assert [record["transaction"]["id"] for record in records[len(pending) :]] == sealed[::-1]
    assert records[: len(pending)] == [
        record for record in records if record["block_height"] is None
    ]
    for record in records:
        assert set(record) == {"transaction", "block_height", "position"}
        TransactionRecord.model_validate(record)
        assert transaction_id(record["transaction"]) == record["transaction"]["id"]
    # The default page is 20.
    assert len(await get(coordinator, f"{V1}/transactions")) == min(20, len(records))


async def test_transactions_page_by_transaction_id(coordinator: Coordinator, chain: Chain) -> None:
    everything = await all_transactions(coordinator)
    walked: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = await same_under_both_prefixes(coordinator, "/transactions", **params)
        if not page:
            break
        assert len(page) <= 3
        walked.extend(page)
        params["before"] = page[-1]["transaction"]["id"]
    assert walked == everything
    missing = {"before": "cd" * 32}
    assert_error(
        await coordinator.http.get(f"{V1}/transactions", params=missing),
        404,
        "transaction_not_found",
    )
    for bad in ({"before": "xyz"}, {"limit": 0}, {"limit": 1001}, {"type": "bogus"}):
        for prefix in PREFIXES:
            assert_error(await coordinator.http.get(f"{prefix}/transactions", params=bad), 422)


async def test_transactions_of_an_address_and_a_type(
    coordinator: Coordinator, chain: Chain
) -> None:
    everything = await all_transactions(coordinator)
    for address in (chain.client_a, chain.client_b, chain.miner, "escrow", "treasury"):
        expected = [
            record
            for record in everything
            if address in (record["transaction"]["from"], record["transaction"]["to"])
        ]
        assert expected or address == "treasury"
        assert await all_transactions(coordinator, address=address) == expected
        # Paged, the address's transactions come in the same order.
        walked: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 2, "address": address}
        while page := await get(coordinator, f"{V1}/transactions", **params):
            walked.extend(page)
            params["before"] = page[-1]["transaction"]["id"]
        assert walked == expected
    for kind in ("mint", "transfer", "escrow_hold", "escrow_release", "receipt"):
        expected = [record for record in everything if record["transaction"]["type"] == kind]
        assert expected
        assert await all_transactions(coordinator, type=kind) == expected
    both = await all_transactions(coordinator, address=chain.client_a, type="mint")
    assert both and all(
        record["transaction"]["to"] == chain.client_a and record["transaction"]["type"] == "mint"
        for record in both
    )
    assert await all_transactions(coordinator, address="nobody") == []


async def test_one_transaction_and_its_proof(coordinator: Coordinator, chain: Chain) -> None:
    keys = await keys_of(coordinator)
    for height in (1, 2):
        block = await get(coordinator, f"{V1}/blocks/{height}")
        check_block(block, keys)
        leaves = [bytes.fromhex(tx_id) for tx_id in block["tx_ids"]]
        documents = (await coordinator.http.get(f"{V1}/blocks/{height}/transactions")).json()
        for position, tx_id in enumerate(block["tx_ids"]):
            record = await same_under_both_prefixes(coordinator, f"/transactions/{tx_id}")
            assert record == {
                "transaction": documents[position],
                "block_height": height,
                "position": position,
            }
            response = await coordinator.http.get(f"{V1}/transactions/{tx_id}")
            assert b'"transaction":' + canonical_bytes(documents[position]) in response.content
            proof = await same_under_both_prefixes(coordinator, f"/transactions/{tx_id}/proof")
            InclusionProof.model_validate(proof)
            assert proof["tx_id"] == tx_id and proof["leaf_index"] == position
            check_proof(proof, block["header"], block["hash"])
            # The audit path is RFC 6962's PATH, computed here from scratch.
            expected_path = [node.hex() for node in rfc6962_path(position, leaves)]
            assert proof["audit_path"] == expected_path
            # A proof for another leaf, or a tampered path, does not verify.
            if len(leaves) > 1:
                other = leaves[(position + 1) % len(leaves)]
                assert not rfc9162_verify(
                    other,
                    position,
                    proof["tree_size"],
                    [bytes.fromhex(node) for node in proof["audit_path"]],
                    bytes.fromhex(block["header"]["tx_root"]),
                )


async def test_pending_unknown_and_malformed_transactions(
    coordinator: Coordinator, chain: Chain
) -> None:
    records = await all_transactions(coordinator)
    pending = next(record for record in records if record["block_height"] is None)
    tx_id = pending["transaction"]["id"]
    for prefix in PREFIXES:
        record = ok(await coordinator.http.get(f"{prefix}/transactions/{tx_id}"))
        assert record == {
            "transaction": pending["transaction"],
            "block_height": None,
            "position": None,
        }
        response = await coordinator.http.get(f"{prefix}/transactions/{tx_id}/proof")
        assert_error(response, 409, "not_sealed")
        for suffix in ("", "/proof"):
            missing = await coordinator.http.get(f"{prefix}/transactions/{'ef' * 32}{suffix}")
            assert_error(missing, 404, "transaction_not_found")
            for bad in ("abc", "ef" * 33, "zz" * 32):
                response = await coordinator.http.get(f"{prefix}/transactions/{bad}{suffix}")
                assert_error(response, 422)
    # Once sealed, the proof exists.
    await seal_once(coordinator.runtime)
    proof = ok(await coordinator.http.get(f"{V1}/transactions/{tx_id}/proof"))
    block = await get(coordinator, f"{V1}/blocks/{proof['block_height']}")
    check_proof(proof, block["header"], block["hash"])


# --- receipts -----------------------------------------------------------------------------


async def test_receipt_proof_anchors_the_signed_receipt(
    coordinator: Coordinator, chain: Chain
) -> None:
    keys = await keys_of(coordinator)
    for receipt in chain.sealed_receipts:
        receipt_id = receipt["receipt_id"]
        body = await same_under_both_prefixes(coordinator, f"/receipts/{receipt_id}/proof")
        assert set(body) == {"receipt", "proof"}
        ReceiptProof.model_validate(body)
        assert body["receipt"] == receipt
        # The receipt is served as stored: the same bytes as GET /v1/receipts/{id}.
        stored = await coordinator.http.get(f"/v1/receipts/{receipt_id}", headers=chain.headers_a)
        if stored.status_code == 404:
            stored = await coordinator.http.get(
                f"/v1/receipts/{receipt_id}", headers=chain.headers_b
            )
        raw = (await coordinator.http.get(f"{V1}/receipts/{receipt_id}/proof")).content
        assert raw.startswith(b'{"receipt":' + stored.content + b",")
        receipt_hash = hashlib.sha256(canonical_bytes(receipt)).hexdigest()
        assert hashlib.sha256(stored.content).hexdigest() == receipt_hash
        signed = {name: value for name, value in receipt.items() if name != "signature"}
        verify_signature(keys, receipt["signature"], canonical_bytes(signed))
        proof = body["proof"]
        record = await get(coordinator, f"{V1}/transactions/{proof['tx_id']}")
        anchor = record["transaction"]
        assert anchor["type"] == "receipt" and anchor["receipt_id"] == receipt_id
        assert anchor["ref"] == receipt_hash
        assert transaction_id(anchor) == proof["tx_id"]
        block = await get(coordinator, f"{V1}/blocks/{proof['block_height']}")
        check_block(block, keys)
        check_proof(proof, block["header"], block["hash"])
        assert proof["leaf_index"] == record["position"]
    pending = chain.pending_receipt["receipt_id"]
    for prefix in PREFIXES:
        response = await coordinator.http.get(f"{prefix}/receipts/{pending}/proof")
        assert_error(response, 409, "not_sealed")
        response = await coordinator.http.get(f"{prefix}/receipts/rcpt_nope/proof")
        assert_error(response, 404, "receipt_not_found")
        assert_error(await coordinator.http.get(f"{prefix}/receipts/{'r' * 65}/proof"), 422)


async def test_receipt_summaries_page_newest_first(coordinator: Coordinator, chain: Chain) -> None:
    summaries = await same_under_both_prefixes(coordinator, "/receipts")
    receipts = [*chain.sealed_receipts, chain.pending_receipt][::-1]
    assert [summary["receipt_id"] for summary in summaries] == [
        receipt["receipt_id"] for receipt in receipts
    ]
    records = await all_transactions(coordinator, type="receipt")
    anchors = {record["transaction"]["receipt_id"]: record for record in records}
    for summary, receipt in zip(summaries, receipts, strict=True):
        ReceiptSummary.model_validate(summary)
        for name in ("job_id", "client", "provider", "model", "units", "unit_type", "price"):
            assert summary[name] == receipt[name]
        for name in ("unit_price", "started_at", "completed_at", "input_hash", "result_hash"):
            assert summary[name] == receipt[name]
        assert summary["receipt_hash"] == hashlib.sha256(canonical_bytes(receipt)).hexdigest()
        anchor = anchors[receipt["receipt_id"]]
        assert summary["tx_id"] == anchor["transaction"]["id"]
        assert summary["block_height"] == anchor["block_height"]
        assert "signature" not in summary and "usage" not in summary
    assert summaries[0]["block_height"] is None
    assert [summary["block_height"] for summary in summaries[1:]] == [2, 1]
    # Paging by receipt id, and filters.
    walked: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1}
    while page := await same_under_both_prefixes(coordinator, "/receipts", **params):
        walked.extend(page)
        params["before"] = page[-1]["receipt_id"]
    assert walked == summaries
    only_b = await get(coordinator, f"{V1}/receipts", client=chain.client_b)
    assert [summary["client"] for summary in only_b] == [chain.client_b]
    assert len(await get(coordinator, f"{V1}/receipts", provider="m1")) == 3
    assert await get(coordinator, f"{V1}/receipts", provider="m2") == []
    missing = await coordinator.http.get(f"{V1}/receipts", params={"before": "rcpt_nope"})
    assert_error(missing, 404, "receipt_not_found")
    for bad in ({"limit": 0}, {"limit": 1001}, {"client": "bad address"}):
        assert_error(await coordinator.http.get(f"{V1}/receipts", params=bad), 422)


# --- stats and addresses ------------------------------------------------------------------


async def test_stats_are_real(coordinator: Coordinator, chain: Chain) -> None:
    stats = await same_under_both_prefixes(coordinator, "/stats")
    NetworkStats.model_validate(stats)
    records = await all_transactions(coordinator)
    minted = sum(
        round(record["transaction"]["amount"] * 1_000_000)
        for record in records
        if record["transaction"]["type"] == "mint"
    )
    fees = sum(round(record["transaction"]["fee"] * 1_000_000) for record in records)
    assert fees > 0
    assert stats == {
        "total_jobs": 4,
        "active_miners": 1,
        "total_receipts": 3,
        "block_height": 2,
        "total_supply": minted / 1_000_000,
        "total_fees": fees / 1_000_000,
        "total_miners": 1,
        "total_transactions": len(records),
        "pending_transactions": 4,
    }
    grant = to_micro(coordinator.runtime.settings.client_grant)
    assert minted == 2 * grant + to_micro("10.500001")
    # A miner not heard from for long is no longer active.
    coordinator.clock.advance(coordinator.runtime.settings.miner_offline_after_seconds + 1)
    assert (await get(coordinator, f"{V1}/stats"))["active_miners"] == 0


async def test_address_pages(coordinator: Coordinator, chain: Chain) -> None:
    everything = await all_transactions(coordinator)
    summaries = await get(coordinator, f"{V1}/receipts")
    for address in (chain.client_a, chain.client_b, chain.miner, "escrow", "treasury"):
        page = await same_under_both_prefixes(coordinator, f"/address/{address}")
        AddressDetail.model_validate(page)
        assert set(page) == {
            "address",
            "balance",
            "transaction_count",
            "transactions",
            "jobs",
            "receipts",
        }
        account = ok(await coordinator.http.get(f"/v1/accounts/{address}"))
        assert page["address"] == address and page["balance"] == account["balance"]
        mine = [
            record
            for record in everything
            if address in (record["transaction"]["from"], record["transaction"]["to"])
        ]
        assert page["transaction_count"] == len(mine)
        assert page["transactions"] == mine[:20]
        assert page["receipts"] == [
            summary for summary in summaries if address in (summary["client"], summary["provider"])
        ]
        for job in page["jobs"]:
            assert set(job) == {
                "job_id",
                "status",
                "model",
                "client_id",
                "miner_id",
                "priority",
                "created_at",
                "started_at",
                "completed_at",
                "usage",
            }
            assert address in (job["client_id"], job["miner_id"])
    client_a = await get(coordinator, f"{V1}/address/{chain.client_a}")
    # Job 0 completed, 1 cancelled, 3 completed (job 2 was client B's): newest first.
    assert [(job["job_id"], job["status"]) for job in client_a["jobs"]] == [
        (chain.job_ids[3], "completed"),
        (chain.job_ids[1], "cancelled"),
        (chain.job_ids[0], "completed"),
    ]
    miner = await get(coordinator, f"{V1}/address/{chain.miner}")
    assert [job["job_id"] for job in miner["jobs"]] == [
        chain.job_ids[3],
        chain.job_ids[2],
        chain.job_ids[0],
    ]
    assert miner["jobs"][0]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4}
    limited = await get(coordinator, f"{V1}/address/{chain.client_a}", limit=1)
    assert len(limited["transactions"]) == len(limited["jobs"]) == len(limited["receipts"]) == 1
    for prefix in PREFIXES:
        assert_error(
            await coordinator.http.get(f"{prefix}/address/nobody"), 404, "account_not_found"
        )
        assert_error(await coordinator.http.get(f"{prefix}/address/bad%20address"), 422)
        assert_error(
            await coordinator.http.get(f"{prefix}/address/{chain.miner}", params={"limit": 0}),
            422,
        )


async def test_a_running_job_shows_on_its_miners_page(
    coordinator: Coordinator, chain: Chain
) -> None:
    coordinator.clock.advance(1)
    job = await coordinator.submit(chain.headers_b, prompt=PROMPT)
    await claim_ok(coordinator, job["job_id"], chain.miner, chain.miner_headers)
    miner = await get(coordinator, f"{V1}/address/{chain.miner}")
    assert miner["jobs"][0]["job_id"] == job["job_id"]
    assert miner["jobs"][0]["status"] == "running"


# --- the receipt bundle ---------------------------------------------------------------------


def check_bundle_offline(bundle: dict[str, Any], keys: dict[str, Any]) -> None:
    """Everything a verifier with only the bundle and its pinned keys can check."""
    assert set(bundle) == {"receipt", "transaction", "proof", "block"}
    receipt, tx, proof = bundle["receipt"], bundle["transaction"], bundle["proof"]
    header, signature = bundle["block"]["header"], bundle["block"]["signature"]
    assert set(bundle["block"]) == {"header", "signature"}
    signed = {name: value for name, value in receipt.items() if name != "signature"}
    verify_signature(keys, receipt["signature"], canonical_bytes(signed))
    assert tx["type"] == "receipt" and tx["receipt_id"] == receipt["receipt_id"]
    assert tx["ref"] == hashlib.sha256(canonical_bytes(receipt)).hexdigest()
    unhashed = {name: value for name, value in tx.items() if name not in ("id", "signature")}
    assert hashlib.sha256(canonical_bytes(unhashed)).hexdigest() == tx["id"] == proof["tx_id"]
    assert signature["key_id"] == header["sealer"]
    verify_signature(keys, signature, canonical_bytes(header))
    check_proof(proof, header, hashlib.sha256(canonical_bytes(header)).hexdigest())
    assert tx["timestamp"] <= header["timestamp"]


async def test_receipt_bundle_checks_offline(coordinator: Coordinator, chain: Chain) -> None:
    keys = await keys_of(coordinator)
    first, second = chain.sealed_receipts
    cases = [
        (first, chain.headers_a),
        (first, chain.miner_headers),
        (first, coordinator.admin_headers),
        (second, chain.headers_b),
    ]
    for receipt, headers in cases:
        response = await coordinator.http.get(
            f"/v1/receipts/{receipt['receipt_id']}/bundle", headers=headers
        )
        bundle = ok(response)
        ReceiptBundle.model_validate(bundle)
        assert bundle["receipt"] == receipt
        check_bundle_offline(bundle, keys)
        stored = await coordinator.http.get(
            f"/v1/receipts/{receipt['receipt_id']}", headers=headers
        )
        assert response.content.startswith(b'{"receipt":' + stored.content + b",")
        # Tampering with anything is caught.
        forged = json.loads(response.content)
        forged["receipt"]["price"] = forged["receipt"]["price"] + 1
        with pytest.raises(Exception):  # noqa: B017 - any check may fail first
            check_bundle_offline(forged, keys)
    # Visibility is the receipt's: another client does not see it; no key is 401.
    hidden = await coordinator.http.get(
        f"/v1/receipts/{first['receipt_id']}/bundle", headers=chain.headers_b
    )
    assert_error(hidden, 404, "receipt_not_found")
    assert_error(await coordinator.http.get(f"/v1/receipts/{first['receipt_id']}/bundle"), 401)
    assert_error(
        await coordinator.http.get("/v1/receipts/rcpt_nope/bundle", headers=chain.headers_a),
        404,
        "receipt_not_found",
    )
    pending = chain.pending_receipt["receipt_id"]
    response = await coordinator.http.get(f"/v1/receipts/{pending}/bundle", headers=chain.headers_a)
    assert_error(response, 409, "not_sealed")
    await seal_once(coordinator.runtime)
    bundle = ok(
        await coordinator.http.get(f"/v1/receipts/{pending}/bundle", headers=chain.headers_a)
    )
    check_bundle_offline(bundle, keys)
    assert bundle["proof"]["block_height"] == 3


# --- privacy and access -------------------------------------------------------------------


async def test_no_public_view_holds_a_prompt_or_a_result(
    coordinator: Coordinator, chain: Chain
) -> None:
    # The marker is really there, in what only the job's client may read.
    private = ok(
        await coordinator.http.get(f"/v1/jobs/{chain.job_ids[0]}", headers=chain.headers_a)
    )
    assert MARKER in private["prompt"] and MARKER in private["result"]
    paths = [
        "/blocks?limit=1000",
        "/transactions?limit=1000",
        "/receipts?limit=1000",
        "/stats",
    ]
    for height in (0, 1, 2):
        paths += [f"/blocks/{height}", f"/blocks/{height}/transactions"]
    for record in await all_transactions(coordinator):
        tx_id = record["transaction"]["id"]
        paths.append(f"/transactions/{tx_id}")
        if record["block_height"] is not None:
            paths.append(f"/transactions/{tx_id}/proof")
    for receipt in chain.sealed_receipts:
        paths.append(f"/receipts/{receipt['receipt_id']}/proof")
    for address in (chain.client_a, chain.client_b, chain.miner, "escrow", "treasury"):
        paths.append(f"/address/{address}")
    bodies: list[bytes] = []
    for prefix in PREFIXES:
        for path in paths:
            response = await coordinator.http.get(prefix + path)
            assert response.status_code == 200, (path, response.text)
            bodies.append(response.content)
    for receipt in chain.sealed_receipts:
        response = await coordinator.http.get(
            f"/v1/receipts/{receipt['receipt_id']}/bundle", headers=coordinator.admin_headers
        )
        bodies.append(ok(response) and response.content)
    for body in bodies:
        assert MARKER.encode() not in body


async def test_the_explorer_needs_no_key(coordinator: Coordinator, chain: Chain) -> None:
    # Public like GET /v1/keys: the same bytes for anyone, with a key or without.
    for prefix in PREFIXES:
        anonymous = await coordinator.http.get(f"{prefix}/blocks")
        assert anonymous.status_code == 200
        for headers in (chain.headers_a, chain.miner_headers, coordinator.admin_headers):
            with_key = await coordinator.http.get(f"{prefix}/blocks", headers=headers)
            assert with_key.content == anonymous.content


async def test_both_prefixes_are_documented(coordinator: Coordinator, chain: Chain) -> None:
    paths = ok(await coordinator.http.get("/openapi.json"))["paths"]
    for prefix in PREFIXES:
        for path in (
            "/blocks",
            "/blocks/{height_or_hash}",
            "/blocks/{height_or_hash}/transactions",
            "/transactions",
            "/transactions/{tx_id}",
            "/transactions/{tx_id}/proof",
            "/receipts",
            "/receipts/{receipt_id}/proof",
            "/stats",
            "/address/{address}",
        ):
            assert prefix + path in paths
    assert "/v1/receipts/{receipt_id}/bundle" in paths


# --- the queries behind the hot routes use their indexes (SQLite's planner) ------------------


def _plan(connection: Connection, statement: Any) -> str:
    sql = str(statement.compile(connection, compile_kwargs={"literal_binds": True}))
    rows = connection.execute(text("EXPLAIN QUERY PLAN " + sql)).all()
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_address_pages_scan_indexes_not_the_ledger(coordinator: Coordinator) -> None:
    T = ledger_queries.T
    statement = ledger_queries._newest_first(
        ledger_queries.TRANSACTIONS,
        [[T.sender == "escrow", T.seq < 100], [T.recipient == "escrow", T.seq < 100]],
        20,
    )
    plan = await db.read(coordinator.runtime.engine, _plan, statement)
    assert "ix_ledger_transactions_sender_seq" in plan, plan
    assert "ix_ledger_transactions_recipient_seq" in plan, plan
    assert "SCAN ledger_transactions" not in plan, plan
    block = select(T.id).where(T.block_height == 5).order_by(T.position)
    plan = await db.read(coordinator.runtime.engine, _plan, block)
    assert "ix_ledger_transactions_block" in plan and "TEMP B-TREE" not in plan, plan


async def test_a_blocks_receipts_in_one_request(coordinator: Coordinator, chain: Chain) -> None:
    for height, expected in ((1, chain.sealed_receipts[0]), (2, chain.sealed_receipts[1])):
        response = await coordinator.http.get(f"/v1/explorer/blocks/{height}/receipts")
        assert response.status_code == 200, response.text
        receipts = json.loads(response.content)
        assert receipts == [expected]
        transactions = json.loads(
            (await coordinator.http.get(f"/v1/explorer/blocks/{height}/transactions")).content
        )
        anchors = [tx for tx in transactions if tx["type"] == "receipt"]
        # Each receipt is served as signed: its hash is its anchor's ref.
        raw = response.content.decode()
        assert [a["ref"] for a in anchors] == [
            hashlib.sha256(canonical_bytes(receipt)).hexdigest() for receipt in receipts
        ]
        assert raw.startswith("[") and json.loads(raw) == receipts
    assert json.loads((await coordinator.http.get("/explorer/blocks/0/receipts")).content) == []
    missing = await coordinator.http.get("/v1/explorer/blocks/99/receipts")
    assert missing.status_code == 404
