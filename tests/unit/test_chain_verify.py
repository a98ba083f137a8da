"""The chain verifier's core (``aitbc.sdk.chain.ChainVerifier``) over chains built in
memory with the domain's own functions, and its driver over an in-memory source.

A sound chain passes; every tamper is found at the block it is in, with its reason:
a changed amount, a replay that would go negative, a changed header member, a bad or
unpinned signature, reordered or dropped transactions, a broken ``prev_hash``, a
reused nonce, a receipt that no longer hashes to its anchor, and more.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.domain.canonical import canonical_bytes
from aitbc.domain.ledger import (
    ESCROW,
    GENESIS_PREV_HASH,
    TREASURY,
    LedgerState,
    Transaction,
    TxType,
    block_hash,
    block_header,
    finish_transaction,
    inclusion_proof,
    sign_block,
    sign_transaction,
    transaction_body,
    transaction_id,
    tx_root,
)
from aitbc.domain.receipts import ReceiptTerms, receipt_body, sign_receipt
from aitbc.domain.signing import KeyRing, PublicKey, SigningKey
from aitbc.sdk.chain import (
    BadBlock,
    BlockData,
    BlockListing,
    ChainReport,
    ChainSourceError,
    ChainVerifier,
    CopyError,
    HttpChainSource,
    ReceiptEvidence,
    VerifiedCopy,
    follow_chain,
    verify_chain,
)

SEALER = SigningKey.from_seed(bytes(32))
NEXT_SEALER = SigningKey.from_seed(bytes(range(1, 33)))
STRANGER = SigningKey.from_seed(bytes(range(2, 34)))
ALICE_KEY = SigningKey.from_seed(bytes(range(64, 96)))
KEYS = KeyRing([PublicKey.of(SEALER, "coordinator")])
ALICE = "client_" + "a" * 32
BOB = "client_" + "b" * 32
MINER = "miner-01"
T0 = 1_760_000_000


# --- building chains ----------------------------------------------------------------------


def tx(
    tx_type: TxType,
    sender: str | None,
    recipient: str | None,
    micro: int,
    *,
    fee: int = 0,
    ref: str | None = None,
    at: int = T0,
    extra: dict[str, Any] | None = None,
    key: SigningKey | None = None,
) -> dict[str, Any]:
    body = transaction_body(
        tx_type=tx_type,
        sender=sender,
        recipient=recipient,
        amount_micro=micro,
        fee_micro=fee,
        ref=ref,
        timestamp=at,
        extra=extra,
    )
    signature = sign_transaction(body, key) if key is not None else None
    # Through JSON, as a verifier reads it.
    document: dict[str, Any] = json.loads(json.dumps(finish_transaction(body, signature)))
    return document


def mint(address: str, micro: int, *, at: int = T0) -> dict[str, Any]:
    return tx(TxType.MINT, None, address, micro, ref=f"grant:{address}:{micro}:{at}", at=at)


def transfer(
    sender: str, recipient: str, micro: int, nonce: int, *, at: int = T0, **kw: Any
) -> dict[str, Any]:
    return tx(TxType.TRANSFER, sender, recipient, micro, at=at, extra={"nonce": nonce}, **kw)


class Chain:
    """Blocks sealed with the domain's functions, and the receipts they anchor."""

    def __init__(self, sealer: SigningKey = SEALER, genesis_at: int = T0) -> None:
        self.sealer = sealer
        self.blocks: list[BlockData] = []
        self.state = LedgerState()
        self.receipts: dict[str, dict[str, Any]] = {}
        self.seal([], at=genesis_at)

    @property
    def tip(self) -> BlockData:
        return self.blocks[-1]

    def seal(
        self,
        documents: list[dict[str, Any]],
        *,
        at: int | None = None,
        sealer: SigningKey | None = None,
        replay: bool = True,
        **header_changes: Any,
    ) -> BlockData:
        """The next block over ``documents``; ``replay=False`` signs the previous
        state root without applying them (for transactions the replay refuses)."""
        sealer = sealer or self.sealer
        height = len(self.blocks)
        previous = None if not self.blocks else self.blocks[-1].header
        state = self.state.copy()
        if replay:
            for document in documents:
                state.apply(Transaction.parse(document))
        ids = [document["id"] for document in documents]
        timestamp = at if at is not None else max([T0, *(d["timestamp"] for d in documents)])
        header = block_header(
            height=height,
            prev_hash=GENESIS_PREV_HASH if previous is None else block_hash(previous),
            timestamp=timestamp,
            tx_root=tx_root(ids),
            state_root=state.state_root(),
            tx_count=len(ids),
            sealer=sealer.key_id,
        )
        header.update(header_changes)
        digest = block_hash(header)
        receipts: dict[str, ReceiptEvidence | None] = {}
        for index, document in enumerate(documents):
            if document["type"] == "receipt":
                proof = inclusion_proof(ids, index, block_height=height, block_hash=digest)
                receipt = self.receipts[document["receipt_id"]]
                receipts[document["receipt_id"]] = ReceiptEvidence(receipt, proof)
        block = BlockData(
            height,
            header,
            sign_block(header, sealer),
            documents,
            listed_hash=digest,
            receipts=receipts,
        )
        self.blocks.append(block)
        self.state = state
        return block

    def receipt_tx(self, number: int, *, at: int = T0) -> dict[str, Any]:
        """A signed receipt for a job of Alice's run by the miner, and its anchor."""
        terms = ReceiptTerms(
            receipt_id=f"rcpt_{number:032x}",
            job_id=f"job_{number:032x}",
            provider=MINER,
            client=ALICE,
            model="smollm2-135m",
            prompt_tokens=3,
            completion_tokens=2,
            unit_price_micro=200_000,
            started_at=at - 1,
            completed_at=at,
            input_hash="a" * 64,
            result_hash="b" * 64,
        )
        signed = sign_receipt(receipt_body(terms), self.sealer)
        self.receipts[terms.receipt_id] = json.loads(signed.canonical)
        return tx(
            TxType.RECEIPT,
            None,
            None,
            0,
            ref=hashlib.sha256(signed.canonical).hexdigest(),
            extra={"receipt_id": terms.receipt_id},
            at=at,
        )

    def job(self, number: int, *, at: int = T0) -> list[dict[str, Any]]:
        """A paid job: hold, receipt, release (with a fee), refund of the rest."""
        ref = f"job_{number:032x}"
        return [
            tx(TxType.ESCROW_HOLD, ALICE, ESCROW, 10_000, ref=ref, at=at),
            self.receipt_tx(number, at=at),
            tx(TxType.ESCROW_RELEASE, ESCROW, MINER, 950, fee=50, ref=ref, at=at),
            tx(TxType.ESCROW_REFUND, ESCROW, ALICE, 9_000, ref=ref, at=at),
        ]


def sound_chain() -> Chain:
    """Genesis, grants, jobs with receipts, transfers: six blocks."""
    chain = Chain()
    chain.seal([mint(ALICE, 100_000_000), mint(BOB, 5_000_000)], at=T0 + 10)
    chain.seal(chain.job(1, at=T0 + 20) + chain.job(2, at=T0 + 21), at=T0 + 22)
    chain.seal([transfer(ALICE, BOB, 1_000_000, 1, at=T0 + 30)], at=T0 + 30)
    chain.seal([], at=T0 + 40)
    chain.seal(
        [
            transfer(BOB, ALICE, 500_000, 1, at=T0 + 50),
            transfer(MINER, TREASURY, 900, 7),
            *chain.job(3, at=T0 + 51),
        ],
        at=T0 + 52,
    )
    return chain


def verify(
    blocks: list[BlockData],
    keys: KeyRing = KEYS,
    account_keys: dict[str, KeyRing] | None = None,
) -> ChainVerifier:
    verifier = ChainVerifier(keys, account_keys=account_keys)
    for block in blocks:
        verifier.check(block)
    return verifier


def first_bad(
    blocks: list[BlockData],
    keys: KeyRing = KEYS,
    account_keys: dict[str, KeyRing] | None = None,
) -> BadBlock:
    with pytest.raises(BadBlock) as caught:
        verify(blocks, keys, account_keys)
    return caught.value


def resign(chain: Chain, height: int, sealer: SigningKey | None = None, **changes: Any) -> None:
    """Change header members of block ``height`` and sign it again (a sealer's lie)."""
    block = chain.blocks[height]
    block.header = {**block.header, **changes}
    block.signature = sign_block(block.header, sealer or chain.sealer)
    block.listed_hash = block_hash(block.header)


def replace_transactions(block: BlockData, documents: list[dict[str, Any]]) -> None:
    block.transactions = documents


# --- a sound chain ------------------------------------------------------------------------


def test_a_sound_chain_verifies_and_replays_every_balance() -> None:
    chain = sound_chain()
    verifier = verify(chain.blocks)
    assert verifier.blocks_checked == 6
    assert verifier.transactions_checked == 2 + 8 + 1 + 0 + 6
    assert verifier.receipts_checked == 3 and verifier.receipts_skipped == 0
    assert verifier.state.balances == chain.state.balances
    assert verifier.state.supply_micro == 105_000_000
    assert verifier.state.fees_micro == 150
    assert verifier.next_height == 6
    assert verifier.previous_hash == block_hash(chain.tip.header)


def test_receipts_not_fetched_are_counted_as_skipped() -> None:
    chain = sound_chain()
    chain.blocks[2].receipts = {}
    verifier = verify(chain.blocks)
    assert verifier.receipts_checked == 1 and verifier.receipts_skipped == 2


def test_a_block_out_of_order_is_refused() -> None:
    chain = sound_chain()
    bad = first_bad([chain.blocks[0], chain.blocks[2]])
    assert (bad.height, bad.error_code) == (1, "bad_height")


def test_a_spent_verifier_keeps_refusing() -> None:
    chain = sound_chain()
    chain.blocks[1].signature = sign_block(chain.blocks[1].header, STRANGER)
    verifier = ChainVerifier(KEYS)
    verifier.check(chain.blocks[0])
    with pytest.raises(BadBlock):
        verifier.check(chain.blocks[1])
    with pytest.raises(BadBlock):
        verifier.check(chain.blocks[1])


# --- tampering ----------------------------------------------------------------------------


def _retyped_amount(document: dict[str, Any], amount: float) -> dict[str, Any]:
    return {**document, "amount": amount}


def test_a_changed_amount_breaks_the_transaction_id() -> None:
    chain = sound_chain()
    block = chain.blocks[3]
    assert block.transactions is not None
    replace_transactions(block, [_retyped_amount(block.transactions[0], 999.0)])
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (3, "bad_transaction_id")
    assert bad.tx_id == block.transactions[0]["id"]


def test_a_changed_amount_with_a_new_id_breaks_the_tx_root() -> None:
    chain = sound_chain()
    block = chain.blocks[3]
    assert block.transactions is not None
    changed = _retyped_amount(block.transactions[0], 99.0)
    changed["id"] = transaction_id(changed)
    replace_transactions(block, [changed])
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (3, "tx_root_mismatch")


def test_a_replay_that_would_go_negative_names_its_block() -> None:
    chain = Chain()
    chain.seal([mint(ALICE, 1_000_000)], at=T0 + 1)
    overdraft = transfer(ALICE, BOB, 2_000_000, 1, at=T0 + 2)
    chain.seal([overdraft], at=T0 + 2, replay=False)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code, bad.tx_id) == (2, "negative_balance", overdraft["id"])


def test_a_wrong_state_root_is_found() -> None:
    chain = sound_chain()
    resign(chain, 4, state_root=chain.blocks[3].header["state_root"][::-1])
    bad = first_bad(chain.blocks)
    # Block 4 is empty; the root it claims is not the replayed one.
    assert (bad.height, bad.error_code) == (4, "state_root_mismatch")


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("state_root", "ab" * 32),
        ("tx_root", "cd" * 32),
        ("timestamp", T0 + 31),
        ("tx_count", 2),
        ("prev_hash", "ef" * 32),
    ],
)
def test_a_changed_header_member_breaks_the_signature(member: str, value: Any) -> None:
    chain = sound_chain()
    chain.blocks[3].header = {**chain.blocks[3].header, member: value}
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (3, "bad_signature")


def test_a_header_with_a_member_too_many_is_malformed() -> None:
    chain = sound_chain()
    chain.blocks[2].header = {**chain.blocks[2].header, "note": "x"}
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "malformed_block")


def test_a_bad_signature_is_found() -> None:
    chain = sound_chain()
    signature = dict(chain.blocks[5].signature)
    other = sign_block({**chain.blocks[5].header, "tx_count": 99}, SEALER)
    signature["sig"] = other["sig"]
    chain.blocks[5].signature = signature
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (5, "bad_signature")


def test_a_block_signed_by_a_key_not_pinned_is_refused() -> None:
    chain = sound_chain()
    block = chain.blocks[2]
    block.header = {**block.header, "sealer": STRANGER.key_id}
    block.signature = sign_block(block.header, STRANGER)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "unknown_key")
    # Signed by another key than the sealer the header names.
    chain = sound_chain()
    chain.blocks[2].signature = sign_block(chain.blocks[2].header, STRANGER)
    assert first_bad(chain.blocks).error_code == "sealer_mismatch"
    # The right key, pinned as a miner's, vouches for no block.
    miner_ring = KeyRing([PublicKey.of(SEALER, MINER)])
    bad = first_bad(sound_chain().blocks, keys=miner_ring)
    assert (bad.height, bad.error_code) == (0, "unknown_key")


def test_key_rotation_keeps_old_blocks_verifiable() -> None:
    rotated_at = datetime.fromtimestamp(T0 + 25, UTC)
    old = PublicKey(
        SEALER.key_id,
        SEALER.public_key,
        "coordinator",
        "retired",
        datetime.fromtimestamp(T0 - 100, UTC),
        rotated_at,
    )
    new = PublicKey.of(NEXT_SEALER, "coordinator", valid_from=rotated_at)
    keys = KeyRing([old, new])
    chain = Chain()
    chain.seal([mint(ALICE, 100_000_000)], at=T0 + 10)
    chain.seal(chain.job(1, at=T0 + 20), at=T0 + 20)
    chain.sealer = NEXT_SEALER  # receipts from now on are signed by the new key too
    chain.seal(chain.job(2, at=T0 + 30), at=T0 + 30)
    verifier = verify(chain.blocks, keys)
    assert verifier.receipts_checked == 2
    # The retired key signing after its retirement is refused.
    chain.seal([], at=T0 + 40, sealer=SEALER)
    bad = first_bad(chain.blocks, keys)
    assert (bad.height, bad.error_code) == (4, "key_not_valid")


def test_reordered_and_dropped_transactions_are_found() -> None:
    chain = sound_chain()
    block = chain.blocks[2]
    assert block.transactions is not None
    documents = list(block.transactions)
    documents[0], documents[1] = documents[1], documents[0]
    replace_transactions(block, documents)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "tx_root_mismatch")

    chain = sound_chain()
    block = chain.blocks[2]
    assert block.transactions is not None
    replace_transactions(block, list(block.transactions)[:-1])
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "tx_count_mismatch")

    chain = sound_chain()
    chain.blocks[3].transactions = None  # the explorer does not serve them
    assert (first_bad(chain.blocks).height, first_bad(chain.blocks).error_code) == (
        3,
        "transactions_missing",
    )


def test_a_broken_prev_hash_is_found() -> None:
    chain = sound_chain()
    resign(chain, 3, prev_hash="ab" * 32)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (3, "bad_prev_hash")
    # A block replaced by another, validly signed, breaks its successor's link.
    chain = sound_chain()
    resign(chain, 4, timestamp=T0 + 41)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (5, "bad_prev_hash")


def test_heights_and_timestamps_are_checked() -> None:
    chain = sound_chain()
    resign(chain, 0, prev_hash="00" * 31 + "01")
    assert (first_bad(chain.blocks).height, first_bad(chain.blocks).error_code) == (
        0,
        "bad_prev_hash",
    )
    chain = Chain()
    chain.seal([], at=T0 + 10)
    chain.seal([], at=T0 + 5)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "timestamp_decreased")
    chain = Chain()
    chain.seal([mint(ALICE, 5, at=T0 + 20)], at=T0 + 10)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (1, "transaction_after_block")


def test_the_listed_hash_must_be_the_headers() -> None:
    chain = sound_chain()
    chain.blocks[4].listed_hash = "ab" * 32
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (4, "block_hash_mismatch")


def test_a_reused_nonce_is_found() -> None:
    chain = Chain()
    chain.seal([mint(ALICE, 10_000_000)], at=T0 + 1)
    chain.seal([transfer(ALICE, BOB, 1_000, 5, at=T0 + 2)], at=T0 + 2)
    again = transfer(ALICE, BOB, 2_000, 5, at=T0 + 3)
    chain.seal([transfer(BOB, ALICE, 500, 5, at=T0 + 3), again], at=T0 + 3)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code, bad.tx_id) == (3, "duplicate_nonce", again["id"])
    # Within one block too.
    chain = Chain()
    chain.seal([mint(ALICE, 10_000_000)], at=T0 + 1)
    chain.seal(
        [transfer(ALICE, BOB, 1_000, 9, at=T0 + 2), transfer(ALICE, BOB, 1_001, 9, at=T0 + 2)],
        at=T0 + 2,
    )
    assert first_bad(chain.blocks).error_code == "duplicate_nonce"


def test_a_transaction_repeated_in_a_later_block_is_found() -> None:
    chain = Chain()
    grant = mint(ALICE, 10_000_000, at=T0 + 1)
    chain.seal([grant], at=T0 + 1)
    chain.seal([grant], at=T0 + 2)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code, bad.tx_id) == (2, "duplicate_transaction", grant["id"])


def test_type_rules_are_enforced() -> None:
    chain = Chain()
    chain.seal([mint(ALICE, 10_000_000)], at=T0 + 1)
    forbidden = tx(TxType.TRANSFER, ALICE, ESCROW, 10, at=T0 + 2, extra={"nonce": 1})
    chain.seal([forbidden], at=T0 + 2, replay=False)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "invalid_transaction")


def test_transfers_from_an_account_with_a_key_must_be_signed() -> None:
    alice_keys = {ALICE: KeyRing([PublicKey.of(ALICE_KEY, ALICE)]), BOB: KeyRing()}
    chain = Chain()
    chain.seal([mint(ALICE, 10_000_000)], at=T0 + 1)
    chain.seal([transfer(ALICE, BOB, 1_000, 1, at=T0 + 2, key=ALICE_KEY)], at=T0 + 2)
    chain.seal([transfer(BOB, ALICE, 10, 1, at=T0 + 3)], at=T0 + 3)
    verify(chain.blocks, account_keys=alice_keys)
    unsigned = transfer(ALICE, BOB, 1_000, 2, at=T0 + 4)
    chain.seal([unsigned], at=T0 + 4)
    bad = first_bad(chain.blocks, account_keys=alice_keys)
    assert (bad.height, bad.error_code, bad.tx_id) == (4, "missing_signature", unsigned["id"])
    # Signed by someone else's key.
    chain.blocks.pop()
    chain.seal([transfer(ALICE, BOB, 1_000, 3, at=T0 + 4, key=STRANGER)], at=T0 + 4)
    assert first_bad(chain.blocks, account_keys=alice_keys).error_code == "unknown_key"
    # A key registered after a transfer does not make it need a signature.
    later = datetime.fromtimestamp(T0 + 10, UTC)
    late_keys = {ALICE: KeyRing([PublicKey.of(ALICE_KEY, ALICE, valid_from=later)])}
    chain = Chain()
    chain.seal([mint(ALICE, 10_000_000)], at=T0 + 1)
    chain.seal([transfer(ALICE, BOB, 1_000, 4, at=T0 + 4)], at=T0 + 4)
    verify(chain.blocks, account_keys=late_keys)


def test_a_receipt_that_no_longer_hashes_to_its_anchor_is_found() -> None:
    chain = sound_chain()
    evidence = chain.blocks[2].receipts["rcpt_" + "0" * 31 + "2"]
    assert evidence is not None
    receipt = dict(evidence.receipt)
    receipt["units"] = receipt["units"] + 1
    chain.blocks[2].receipts = {
        **chain.blocks[2].receipts,
        receipt["receipt_id"]: ReceiptEvidence(receipt, evidence.proof),
    }
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code, bad.receipt_id) == (
        2,
        "receipt_hash_mismatch",
        receipt["receipt_id"],
    )
    anchor = next(
        d
        for d in chain.blocks[2].transactions or []
        if d.get("receipt_id") == receipt["receipt_id"]
    )
    assert bad.tx_id == anchor["id"]


def _evidence_case(change: Callable[[ReceiptEvidence], ReceiptEvidence | None]) -> BadBlock:
    chain = sound_chain()
    block = chain.blocks[5]
    ((receipt_id, evidence),) = block.receipts.items()
    assert evidence is not None
    block.receipts = {receipt_id: change(evidence)}
    return first_bad(chain.blocks)


def test_receipt_evidence_must_match_its_transaction_and_block() -> None:
    assert _evidence_case(lambda e: None).error_code == "receipt_missing"
    other = sound_chain().blocks[2].receipts
    first_other = next(iter(other.values()))
    assert first_other is not None
    # Another receipt (genuine, signed) in place of the anchored one.
    bad = _evidence_case(lambda e: ReceiptEvidence(first_other.receipt, e.proof))
    assert bad.error_code == "receipt_hash_mismatch" and bad.height == 5

    def wrong_leaf(e: ReceiptEvidence) -> ReceiptEvidence:
        proof = dict(e.proof)
        proof["leaf_index"] = (proof["leaf_index"] + 1) % proof["tree_size"]
        return ReceiptEvidence(e.receipt, proof)

    assert _evidence_case(wrong_leaf).error_code == "bad_proof"

    def other_block(e: ReceiptEvidence) -> ReceiptEvidence:
        return ReceiptEvidence(e.receipt, {**e.proof, "block_height": 2})

    assert _evidence_case(other_block).error_code == "proof_mismatch"
    assert _evidence_case(lambda e: ReceiptEvidence(e.receipt, None)).error_code == (
        "malformed_proof"
    )


def test_a_receipt_signed_by_a_key_not_pinned_is_refused() -> None:
    chain = Chain()
    chain.seal([mint(ALICE, 100_000_000)], at=T0 + 1)
    chain.sealer = STRANGER  # the receipt's signer; blocks stay signed by SEALER
    documents = chain.job(1, at=T0 + 2)
    chain.sealer = SEALER
    chain.seal(documents, at=T0 + 2)
    bad = first_bad(chain.blocks)
    assert (bad.height, bad.error_code) == (2, "receipt_unknown_key")


# --- the driver over an in-memory source ------------------------------------------------


class MemorySource:
    """A :class:`~aitbc.sdk.chain.ChainSource` over a :class:`Chain` (counting calls)."""

    def __init__(self, chain: Chain, account_keys: Mapping[str, KeyRing] | None = None) -> None:
        self.chain = chain
        self.keys = dict(account_keys or {})
        self.calls: dict[str, int] = {}
        self.missing_blocks: set[int] = set()
        # Off: the receipts are fetched one by one, each with its proof.
        self.serves_block_receipts = False

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _listing(self, block: BlockData) -> BlockListing:
        return BlockListing(
            block.height,
            block.listed_hash,
            copy.deepcopy(block.header),
            copy.deepcopy(block.signature),
            block.header["tx_count"],
        )

    async def tip(self) -> BlockListing | None:
        self._count("tip")
        return self._listing(self.chain.tip) if self.chain.blocks else None

    async def blocks(self, start: int, stop: int) -> Mapping[int, BlockListing]:
        self._count("blocks")
        await asyncio.sleep(0)
        return {
            block.height: self._listing(block)
            for block in self.chain.blocks[start:stop]
            if block.height not in self.missing_blocks
        }

    async def transactions(self, height: int) -> tuple[list[Any], bytes] | None:
        self._count("transactions")
        await asyncio.sleep(0)
        documents = self.chain.blocks[height].transactions
        if documents is None:
            return None
        body = json.dumps(documents).encode()
        return json.loads(body), body

    async def receipt(self, receipt_id: str) -> ReceiptEvidence | None:
        self._count("receipt")
        for block in self.chain.blocks:
            if receipt_id in block.receipts:
                return block.receipts[receipt_id]
        return None

    async def block_receipts(self, height: int) -> list[Any] | None:
        self._count("block_receipts")
        if not self.serves_block_receipts:
            return None
        return [
            evidence.receipt
            for evidence in self.chain.blocks[height].receipts.values()
            if evidence is not None and evidence.refused is None
        ]

    async def accounts_keys(self, owners: Any) -> Mapping[str, KeyRing] | None:
        return None  # one owner at a time, counted below

    async def account_keys(self, owner: str) -> KeyRing:
        self._count(f"keys:{owner}")
        return self.keys.get(owner, KeyRing())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_driver_verifies_a_sound_chain() -> None:
    chain = sound_chain()
    source = MemorySource(chain)
    report: ChainReport = run(verify_chain(source, KEYS, window=3))
    assert report.ok, report.failure
    assert (report.height, report.blocks_checked, report.transactions_checked) == (5, 6, 17)
    assert report.receipts_checked == 3
    assert report.block_hash == block_hash(chain.tip.header)
    assert report.supply_micro == 105_000_000 and report.fees_micro == 150
    # Empty blocks are not asked for their transactions; keys once per sender.
    assert source.calls["transactions"] == 4
    assert source.calls["keys:" + ALICE] == 1 and source.calls["keys:" + BOB] == 1
    assert source.calls["receipt"] == 3


def test_a_blocks_receipts_come_in_one_request_when_served_together() -> None:
    chain = sound_chain()
    source = MemorySource(chain)
    source.serves_block_receipts = True
    report: ChainReport = run(verify_chain(source, KEYS, window=3))
    assert report.ok, report.failure
    assert report.receipts_checked == 3
    assert "receipt" not in source.calls  # no request per receipt
    # A receipt changed after it was recorded is found the same way.
    tampered = sound_chain()
    height, evidence = next(
        (block.height, next(iter(block.receipts.values())))
        for block in tampered.blocks
        if block.receipts
    )
    assert evidence is not None
    evidence.receipt["units"] += 1
    source = MemorySource(tampered)
    source.serves_block_receipts = True
    report = run(verify_chain(source, KEYS))
    assert report.failure is not None
    assert (report.failure.height, report.failure.error_code) == (
        height,
        "receipt_hash_mismatch",
    )


def test_the_driver_reports_the_first_bad_block() -> None:
    chain = sound_chain()
    resign(chain, 3, prev_hash="ab" * 32)
    chain.blocks[5].header = {**chain.blocks[5].header, "tx_count": 1}
    report = run(verify_chain(MemorySource(chain), KEYS))
    assert report.failure is not None
    assert (report.failure.height, report.failure.error_code) == (3, "bad_prev_hash")
    assert report.height == 2 and report.blocks_checked == 3


def test_the_driver_finds_a_block_missing_below_the_tip() -> None:
    chain = sound_chain()
    source = MemorySource(chain)
    source.missing_blocks.add(2)
    report = run(verify_chain(source, KEYS))
    assert report.failure is not None
    assert (report.failure.height, report.failure.error_code) == (2, "block_missing")


def test_the_driver_samples_receipts() -> None:
    chain = sound_chain()
    source = MemorySource(chain)
    report = run(verify_chain(source, KEYS, receipt_sample=0))
    assert report.ok and report.receipts_checked == 0 and report.receipts_skipped == 3
    assert "receipt" not in source.calls
    report = run(verify_chain(source, KEYS, receipt_sample=0.5, rng=random.Random(1)))
    assert report.ok and report.receipts_checked + report.receipts_skipped == 3


def test_the_driver_fetches_account_keys_for_signed_transfers() -> None:
    chain = Chain()
    chain.seal([mint(ALICE, 10_000_000)], at=T0 + 1)
    chain.seal([transfer(ALICE, BOB, 1_000, 1, at=T0 + 2)], at=T0 + 2)
    alice_keys = {ALICE: KeyRing([PublicKey.of(ALICE_KEY, ALICE)])}
    report = run(verify_chain(MemorySource(chain, alice_keys), KEYS))
    assert report.failure is not None
    assert (report.failure.height, report.failure.error_code) == (2, "missing_signature")


def test_a_worker_process_finds_the_same_as_this_one() -> None:
    """``workers=1``: the stateless checks run in a second process (and in this one,
    for blocks the worker has not taken); the outcome is the same."""
    chain = sound_chain()
    for _ in range(4):
        chain.seal(chain.job(10 + len(chain.blocks), at=T0 + 60), at=T0 + 60)
    report = run(verify_chain(MemorySource(chain), KEYS, workers=1, window=4))
    assert report.ok, report.failure
    assert report.blocks_checked == 10 and report.receipts_checked == 7
    local = run(verify_chain(MemorySource(chain), KEYS, workers=0))
    assert report.to_dict() | {"elapsed_seconds": 0, "transactions_per_second": 0} == (
        local.to_dict() | {"elapsed_seconds": 0, "transactions_per_second": 0}
    )
    # Faults found in the worker come back with their block, reason and transaction.
    block = chain.blocks[7]
    (receipt_id, evidence), *_ = block.receipts.items()
    assert evidence is not None
    changed = {**evidence.receipt, "units": 99}
    block.receipts = {**block.receipts, receipt_id: ReceiptEvidence(changed, evidence.proof)}
    report = run(verify_chain(MemorySource(chain), KEYS, workers=1, window=4))
    assert report.failure is not None
    assert (report.failure.height, report.failure.error_code) == (7, "receipt_hash_mismatch")
    assert report.failure.receipt_id == receipt_id and report.failure.tx_id is not None


def test_an_empty_source_has_no_genesis() -> None:
    chain = sound_chain()
    chain.blocks.clear()
    report = run(verify_chain(MemorySource(chain), KEYS))
    assert report.failure is not None and report.failure.error_code == "block_missing"


# --- the local verified copy ------------------------------------------------------------


def test_a_copy_resumes_where_it_stopped(tmp_path: Path) -> None:
    chain = sound_chain()
    full = list(chain.blocks)
    chain.blocks = full[:3]
    store = VerifiedCopy(tmp_path, "memory://chain")
    report = run(verify_chain(MemorySource(chain), KEYS, copy=store))
    assert report.ok and report.height == 2 and report.resumed_from is None
    store.close()

    chain.blocks = full
    source = MemorySource(chain)
    store = VerifiedCopy(tmp_path, "memory://chain")
    assert store.height == 2
    report = run(verify_chain(source, KEYS, copy=store))
    assert report.ok, report.failure
    assert report.resumed_from == 3 and report.height == 5
    assert report.blocks_checked == 6 and report.transactions_checked == 17
    assert report.checked_this_run == 17 - 10
    assert report.supply_micro == 105_000_000 and report.fees_micro == 150
    # Only blocks 3..5 were downloaded (and block 2 once more, to see it is unchanged).
    assert source.calls["transactions"] == 2
    # Nothing new: nothing to do.
    report = run(verify_chain(source, KEYS, copy=store))
    assert report.ok and report.checked_this_run == 0 and report.height == 5
    store.close()


def test_a_copy_notices_a_rewritten_history(tmp_path: Path) -> None:
    chain = sound_chain()
    store = VerifiedCopy(tmp_path, "memory://chain")
    assert run(verify_chain(MemorySource(chain), KEYS, copy=store)).ok
    resign(chain, 5, timestamp=T0 + 53)
    report = run(verify_chain(MemorySource(chain), KEYS, copy=store))
    assert report.failure is not None
    assert (report.failure.height, report.failure.error_code) == (5, "history_rewritten")
    chain.blocks = chain.blocks[:4]
    report = run(verify_chain(MemorySource(chain), KEYS, copy=store))
    assert report.failure is not None and report.failure.error_code == "history_rewritten"
    store.close()


def test_a_copy_belongs_to_one_chain(tmp_path: Path) -> None:
    store = VerifiedCopy(tmp_path, "memory://chain")
    assert run(verify_chain(MemorySource(sound_chain()), KEYS, copy=store)).ok
    store.close()
    with pytest.raises(CopyError):
        VerifiedCopy(tmp_path, "memory://another")


def test_a_failed_block_is_not_written_to_the_copy(tmp_path: Path) -> None:
    chain = sound_chain()
    chain.blocks[4].listed_hash = "ab" * 32
    store = VerifiedCopy(tmp_path, "memory://chain")
    report = run(verify_chain(MemorySource(chain), KEYS, copy=store))
    assert report.failure is not None and report.failure.height == 4
    assert store.height is None or store.height <= 3
    store.close()
    chain.blocks[4].listed_hash = block_hash(chain.blocks[4].header)
    store = VerifiedCopy(tmp_path, "memory://chain")
    report = run(verify_chain(MemorySource(chain), KEYS, copy=store))
    assert report.ok and report.height == 5 and report.transactions_checked == 17
    store.close()


def test_follow_verifies_new_blocks_as_they_come(tmp_path: Path) -> None:
    chain = sound_chain()
    store = VerifiedCopy(tmp_path, "memory://chain")
    reports: list[ChainReport] = []

    async def scenario() -> ChainReport:
        stop = asyncio.Event()

        def on_report(report: ChainReport) -> None:
            reports.append(report)
            if len(reports) == 1:
                chain.seal([mint(BOB, 1, at=T0 + 60)], at=T0 + 60)
            else:
                stop.set()

        return await follow_chain(
            MemorySource(chain), KEYS, store, interval_seconds=0.01, stop=stop, on_report=on_report
        )

    final = run(scenario())
    assert [r.height for r in reports] == [5, 6]
    assert final.ok and final.transactions_checked == 18
    store.close()


def test_canonical_bytes_of_served_receipts_are_what_the_anchor_hashes() -> None:
    chain = sound_chain()
    for receipt in chain.receipts.values():
        assert hashlib.sha256(canonical_bytes(receipt)).hexdigest() in {
            d["ref"]
            for block in chain.blocks
            for d in block.transactions or []
            if d["type"] == "receipt"
        }


# --- the HTTP source's retries ------------------------------------------------------------


def test_the_http_source_waits_out_rate_limits_and_gives_up_on_trouble() -> None:
    answers: list[httpx.Response] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async def tip(**options: Any) -> Any:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
            source = HttpChainSource(http, rng=random.Random(0), **options)
            return await source.tip(), source

    limited = httpx.Response(429, headers={"Retry-After": "0"}, json={"error_code": "x"})
    listing = [{"height": 3, "hash": "ab" * 32, "header": {"tx_count": 0}, "signature": {}}]
    answers[:] = [limited] * 10 + [httpx.Response(200, json=listing)]
    found, source = run(tip(attempts=2))
    assert found is not None and found.height == 3 and source.rate_limited == 10
    answers[:] = [httpx.Response(503, json={"error_code": "busy", "detail": "x"})] * 3
    with pytest.raises(ChainSourceError) as caught:
        run(tip(attempts=3))
    assert caught.value.status == 503 and not answers
    answers[:] = [httpx.Response(400, json={"error_code": "bad", "detail": "no"})]
    with pytest.raises(ChainSourceError, match="bad: no"):
        run(tip())
    answers[:] = [httpx.Response(200, content=b"not json")]
    with pytest.raises(ChainSourceError, match="not JSON"):
        run(tip())
