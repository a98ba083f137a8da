"""Verify a whole chain through the public explorer API alone (DESIGN.md sections 3, 6).

    keys = load_keyring(default_keyring_path())        # pinned coordinator keys
    async with httpx.AsyncClient(base_url=url) as http:
        report = await verify_chain(HttpChainSource(http), keys)
    if report.failure is not None:
        print(report.failure.height, report.failure.error_code, report.failure.detail)

The layers follow tessera's client (``client/client.go``): the verifier is handed fetch
functions and keys it pinned, never a key the log hands over.

- :class:`ChainVerifier`, the pure core: fed one :class:`BlockData` at a time in height
  order (header, signature, transactions as parsed JSON, the receipts they anchor, the
  keys of the accounts that sent transfers); raises :class:`BadBlock` at the first
  problem. No I/O: unit tests drive it over chains built in memory. Its work is split
  in two: :func:`prepare_block`, every check that needs no state (parsing, ids,
  ``tx_root``, signatures, receipts: most of the cost), and the replay, which does.
- :class:`ChainSource`, the fetch functions, and :class:`HttpChainSource`, which
  implements them with the public routes over an ``httpx.AsyncClient``.
- :func:`verify_chain`, the driver: keeps several blocks downloading (their
  transactions, sender keys and receipts) while the core checks the one before, hands
  blocks to a worker process to prepare on a machine with cores to spare (and
  prepares others itself while it waits), and returns a :class:`ChainReport`.
- :class:`VerifiedCopy`, a local SQLite copy of what was verified (headers,
  transactions, the replayed balances, ids and nonces seen), so :func:`follow_chain`
  resumes where it stopped.

Checked for each block, in this order (the ``error_code`` of a failure in brackets):
the header's shape [``malformed_block``]; its signature by a pinned coordinator key
valid at the block's timestamp [``bad_signature``, ``unknown_key``, ``sealer_mismatch``,
``key_not_valid``, ``malformed_signature``]; height and ``prev_hash`` [``bad_height``,
``bad_prev_hash``] and a timestamp not before the previous block's
[``timestamp_decreased``]; the hash the explorer lists [``block_hash_mismatch``]; each
transaction's shape and id [``malformed_transaction``, ``bad_transaction_id``,
``invalid_amount``, ``unknown_transaction_type``, ``not_canonical``]; ``tx_count``,
no transaction twice, none dated after its block, ``tx_root`` [``tx_count_mismatch``,
``duplicate_transaction``, ``transaction_after_block``, ``tx_root_mismatch``]; per
transaction in block order: an id not seen in an earlier block
[``duplicate_transaction``], the type's rules [``invalid_transaction``], a transfer's
nonce not used before by its sender [``duplicate_nonce``], the sender's signature
where its account had a key valid at the transaction's timestamp
[``missing_signature``, ``bad_signature`` ...], the replay of balances from genesis
[``negative_balance``, ``invalid_transaction``]; the block's ``state_root``
[``state_root_mismatch``]; and each ``receipt`` transaction against the receipt it
anchors [``receipt_missing``, ``receipt_hash_mismatch``, ``receipt_mismatch``,
``receipt_<code>`` for a receipt :func:`aitbc.domain.receipts.verify_receipt` refuses,
``malformed_proof``, ``proof_mismatch``, ``bad_proof``]. A block the explorer does not
serve is ``block_missing`` / ``transactions_missing``; a local copy the served chain no
longer extends is ``history_rewritten``.

Talks HTTP only; never imports storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import multiprocessing
import os
import random
import re
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from aitbc.domain.canonical import FixedShapeEncoder
from aitbc.domain.ledger import (
    TREASURY,
    LedgerState,
    Transaction,
    TxType,
    block_hash,
    check_block_contents,
    check_block_header,
    check_block_link,
    check_sender_signature,
    check_transaction_rules,
    header_bytes,
    verify_block_signature,
    verify_inclusion_proof,
)
from aitbc.domain.receipts import RECEIPT_MEMBERS, verify_receipt
from aitbc.domain.signing import KeyRing
from aitbc.errors import AITBCError, VerificationFailed

EXPLORER_PREFIX = "/v1/explorer"
PAGE_SIZE = 1000  # the most blocks GET /v1/explorer/blocks returns at once
DEFAULT_WINDOW = 8  # blocks downloading ahead of the one being checked
DEFAULT_RECEIPT_CONCURRENCY = 16
HTTP_TIMEOUT_SECONDS = 60.0
RETRY_ATTEMPTS = 6
RETRY_BASE_SECONDS = 0.25
RETRY_CAP_SECONDS = 60.0
COPY_FILE = "chain.sqlite3"
COPY_FORMAT = "1"
COMMIT_SECONDS = 1.0  # how often a follow run makes what it verified durable
PROGRESS_SECONDS = 0.25
# A run hands blocks to a worker process once it has seen this many transactions.
AUTO_WORKER_TRANSACTIONS = 20_000
WORKER_QUEUE = 2  # blocks the worker may have to do; the others are prepared here
# ... on a machine with this many cores. With two, a coordinator on the same machine
# takes the second one: measured, a worker then slows a run down rather than up.
AUTO_WORKER_CPUS = 3

_sha256 = hashlib.sha256
T = TypeVar("T")
# What an address can be (DESIGN.md section 3; the pattern of ``GET /v1/keys?owner=``).
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_RECEIPT_ENCODER = FixedShapeEncoder(RECEIPT_MEMBERS)
_TRANSFER = TxType.TRANSFER.value
_RECEIPT = TxType.RECEIPT.value


# --- errors and results ----------------------------------------------------------------


class ChainSourceError(AITBCError):
    """The chain could not be fetched: the explorer is unreachable, kept failing
    (5xx, 429 beyond the retries) or answered what is not JSON. Verification could not
    run; nothing is known about the chain. ``status`` is the last HTTP status, if any."""

    error_code = "source_unavailable"

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class BadBlock(VerificationFailed):
    """The first block that does not verify: its ``height``, the reason
    (``error_code``, ``detail``) and, when one transaction or receipt is to blame,
    its ``tx_id`` / ``receipt_id``."""

    def __init__(
        self,
        height: int,
        error_code: str,
        detail: str,
        *,
        tx_id: str | None = None,
        receipt_id: str | None = None,
    ) -> None:
        super().__init__(detail, error_code=error_code)
        self.height = height
        self.tx_id = tx_id
        self.receipt_id = receipt_id


@dataclass(frozen=True, slots=True)
class ChainFailure:
    """Why verification stopped: the first bad block's height and the reason."""

    height: int
    error_code: str
    detail: str
    tx_id: str | None = None
    receipt_id: str | None = None

    @classmethod
    def of(cls, exc: BadBlock) -> ChainFailure:
        """From the exception the core raised."""
        return cls(exc.height, exc.error_code, exc.detail, exc.tx_id, exc.receipt_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "height": self.height,
            "error_code": self.error_code,
            "detail": self.detail,
            "tx_id": self.tx_id,
            "receipt_id": self.receipt_id,
        }


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What a verification run established.

    ``height``/``block_hash``/``state_root`` describe the last block verified (None
    when none was); the counters include what a resumed run had verified before
    (``resumed_from`` is the first height this run checked, None for a fresh run).
    ``receipts_skipped`` counts receipt transactions whose receipt was not fetched
    (a ``receipt_sample`` below 1).
    """

    blocks_checked: int
    transactions_checked: int
    receipts_checked: int
    receipts_skipped: int
    height: int | None
    block_hash: str | None
    state_root: str | None
    supply_micro: int
    fees_micro: int
    accounts: int
    elapsed_seconds: float
    checked_this_run: int = 0
    resumed_from: int | None = None
    failure: ChainFailure | None = None

    @property
    def ok(self) -> bool:
        """True when every block fetched verified."""
        return self.failure is None

    @property
    def transactions_per_second(self) -> float:
        """Transactions this run checked, per second of its wall time."""
        return self.checked_this_run / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (amounts in µAIT)."""
        return {
            "ok": self.ok,
            "blocks_checked": self.blocks_checked,
            "transactions_checked": self.transactions_checked,
            "receipts_checked": self.receipts_checked,
            "receipts_skipped": self.receipts_skipped,
            "height": self.height,
            "block_hash": self.block_hash,
            "state_root": self.state_root,
            "supply_micro": self.supply_micro,
            "fees_micro": self.fees_micro,
            "accounts": self.accounts,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "checked_this_run": self.checked_this_run,
            "transactions_per_second": round(self.transactions_per_second),
            "resumed_from": self.resumed_from,
            "failure": None if self.failure is None else self.failure.to_dict(),
        }


# --- what the core is fed ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptEvidence:
    """``GET /v1/explorer/receipts/{receipt_id}/proof``: the signed receipt and the
    inclusion proof of its ``receipt`` transaction, as served (unchecked); or, when the
    explorer refused (404, 409), its ``error_code`` in ``refused``."""

    receipt: Any
    proof: Any
    refused: str | None = None
    detail: str | None = None
    # Served with the block's other receipts (``GET …/blocks/{height}/receipts``): its
    # transaction's place is the block's own, checked against tx_root, so no proof.
    in_block: bool = False


@dataclass(slots=True)
class BlockData:
    """One block as served, unchecked.

    ``transactions`` are the parsed JSON documents in block order (None: the explorer
    did not serve them). ``listed_hash`` is the hash the explorer lists beside the
    header (None: not known). ``receipts`` maps a receipt id to its evidence (None, or
    evidence ``refused``: the explorer does not serve it); a receipt transaction
    whose id is absent was not fetched and is counted as skipped.
    ``raw_transactions`` is the body as served, kept by a :class:`VerifiedCopy`;
    ``extras``, while the driver still fetches the keys and receipts it needs.
    """

    height: int
    header: Any
    signature: Any
    transactions: Sequence[Any] | None
    listed_hash: str | None = None
    receipts: Mapping[str, ReceiptEvidence | None] = field(default_factory=dict)
    raw_transactions: bytes | None = None
    extras: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    """What verifying one block added: its hash and transactions, the nonces it used,
    the receipts checked and skipped."""

    height: int
    hash: str
    header: Mapping[str, Any]
    signature: Any
    transactions: list[Transaction]
    nonces: set[tuple[str, int]]
    receipts_checked: int
    receipts_skipped: int

    @property
    def tx_ids(self) -> list[str]:
        """The block's transaction ids, in block order."""
        return [tx.id for tx in self.transactions]

    @property
    def touched(self) -> set[str]:
        """The accounts whose balance the block changed (or may have)."""
        touched: set[str] = set()
        for tx in self.transactions:
            if tx.sender is not None:
                touched.add(tx.sender)
            if tx.recipient is not None:
                touched.add(tx.recipient)
            if tx.fee_micro:
                touched.add(TREASURY)
        return touched


@dataclass(slots=True)
class ChainCheckpoint:
    """Everything the core needs to go on from a verified block: its header, the
    replayed state, the ids and nonces seen, the counters."""

    header: Mapping[str, Any]
    state: LedgerState
    tx_ids: set[str]
    nonces: set[tuple[str, int]]
    blocks_checked: int
    transactions_checked: int
    receipts_checked: int
    receipts_skipped: int


# --- the core ---------------------------------------------------------------------------


def needs(documents: Iterable[Any]) -> tuple[set[str], list[str]]:
    """What checking these transaction documents needs fetched, in one pass:
    :func:`transfer_senders` and :func:`anchored_receipts`."""
    senders: set[str] = set()
    receipt_ids: list[str] = []
    for document in documents:
        if type(document) is dict:
            kind = document.get("type")
            if kind == _TRANSFER:
                sender = document.get("from")
                if type(sender) is str:
                    senders.add(sender)
            elif kind == _RECEIPT:
                receipt_id = document.get("receipt_id")
                if type(receipt_id) is str and receipt_id:
                    receipt_ids.append(receipt_id)
    return senders, receipt_ids


def transfer_senders(documents: Iterable[Any]) -> set[str]:
    """The senders of the transfers among transaction documents (whose keys the core
    needs); what is not a well-formed transfer is left to the core to refuse."""
    senders: set[str] = set()
    for document in documents:
        if type(document) is dict and document.get("type") == _TRANSFER:
            sender = document.get("from")
            if type(sender) is str:
                senders.add(sender)
    return senders


def anchored_receipts(documents: Iterable[Any]) -> list[str]:
    """The receipt ids that the receipt transactions among ``documents`` carry."""
    found: list[str] = []
    for document in documents:
        if type(document) is dict and document.get("type") == _RECEIPT:
            receipt_id = document.get("receipt_id")
            if type(receipt_id) is str and receipt_id:
                found.append(receipt_id)
    return found


# A problem found by the stateless checks: (error_code, detail, tx_id, receipt_id).
Fault = tuple[str, str, str | None, str | None]
_NO_KEYS = KeyRing()
_TX_TYPES = {member.value: member for member in TxType}


def _fault(
    height: int,
    exc: VerificationFailed,
    *,
    tx_id: str | None = None,
    receipt_id: str | None = None,
) -> Fault:
    return (exc.error_code, f"block {height}: {exc.detail}", tx_id, receipt_id)


def _bad(height: int, fault: Fault) -> BadBlock:
    code, detail, tx_id, receipt_id = fault
    return BadBlock(height, code, detail, tx_id=tx_id, receipt_id=receipt_id)


class PreparedBlock:
    """What :func:`prepare_block` found in one block: the checks that need no state
    (everything but the link to the previous block, ids and nonces seen before, and
    the replay), done where they are cheapest: in this process, or in a worker
    process while this one replays the block before.

    ``header_fault`` (shape, signature) comes before the link check, ``body_fault``
    (listed hash, transactions, ``tx_root`` ...) after it; ``rule_faults`` and
    ``signature_faults`` are by transaction index and surface in the replay, in
    block order; ``receipt_fault`` after the state root. Pickles its transactions as
    tuples, several times faster than the dataclasses.
    """

    __slots__ = (
        "body_fault",
        "hash",
        "header_fault",
        "receipt_fault",
        "receipts_checked",
        "receipts_skipped",
        "rule_faults",
        "signature_faults",
        "transactions",
    )

    def __init__(self) -> None:
        self.hash: str | None = None
        self.header_fault: Fault | None = None
        self.body_fault: Fault | None = None
        self.transactions: list[Transaction] = []
        self.rule_faults: dict[int, Fault] | None = None
        self.signature_faults: dict[int, Fault] | None = None
        self.receipt_fault: Fault | None = None
        self.receipts_checked = self.receipts_skipped = 0

    def __getstate__(self) -> tuple[Any, ...]:
        rows = [
            (
                tx.id,
                tx.tx_type.value,
                tx.sender,
                tx.recipient,
                tx.amount_micro,
                tx.fee_micro,
                tx.ref,
                tx.timestamp,
                tx.document,
            )
            for tx in self.transactions
        ]
        return (
            self.hash,
            self.header_fault,
            self.body_fault,
            rows,
            self.rule_faults,
            self.signature_faults,
            self.receipt_fault,
            self.receipts_checked,
            self.receipts_skipped,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (
            self.hash,
            self.header_fault,
            self.body_fault,
            rows,
            self.rule_faults,
            self.signature_faults,
            self.receipt_fault,
            self.receipts_checked,
            self.receipts_skipped,
        ) = state
        types = _TX_TYPES
        self.transactions = [Transaction(row[0], types[row[1]], *row[2:]) for row in rows]


def prepare_block(
    block: BlockData, keys: KeyRing, account_keys: Mapping[str, KeyRing]
) -> PreparedBlock:
    """The stateless checks of one block (module docstring), against pinned
    coordinator ``keys`` and the keys of its transfers' senders. Never raises
    :class:`VerificationFailed`: what it finds is in the result."""
    prepared = prepare_structure(block, keys)
    finish_preparation(prepared, block, keys, account_keys)
    return prepared


def prepare_structure(block: BlockData, keys: KeyRing) -> PreparedBlock:
    """The part of :func:`prepare_block` that needs neither account keys nor
    receipts (so it can run while they download): the header, its signature, the
    transactions' shape and ids, the block's contents, the transfers' rules."""
    height, header = block.height, block.header
    prepared = PreparedBlock()
    try:
        check_block_header(header)
        verify_block_signature(header, block.signature, keys)
    except VerificationFailed as exc:
        prepared.header_fault = _fault(height, exc)
        return prepared
    this_hash = prepared.hash = block_hash(header)
    try:
        if block.listed_hash is not None and block.listed_hash != this_hash:
            raise VerificationFailed(
                f"the explorer lists block {height} with hash {block.listed_hash}, but its "
                f"header hashes to {this_hash}",
                error_code="block_hash_mismatch",
            )
        documents = block.transactions
        if documents is None:
            if header["tx_count"]:
                raise VerificationFailed(
                    f"the explorer does not serve the transactions of block {height}",
                    error_code="transactions_missing",
                )
            documents = ()
        transactions = _parse(height, documents)
        check_block_contents(header, transactions)
    except _ParseFault as fault:
        prepared.body_fault = fault.fault
        return prepared
    except VerificationFailed as exc:
        prepared.body_fault = _fault(height, exc)
        return prepared
    prepared.transactions = transactions
    # A transfer's rules come before its signature is checked; every other type's are
    # checked by the replay (LedgerState.apply), in the same place of the order.
    rules, transfer = check_transaction_rules, TxType.TRANSFER
    for index, tx in enumerate(transactions):
        if tx.tx_type is transfer:
            try:
                rules(tx)
            except VerificationFailed as exc:
                prepared.rule_faults = {index: _fault(height, exc, tx_id=tx.id)}
                break
    return prepared


def finish_preparation(
    prepared: PreparedBlock,
    block: BlockData,
    keys: KeyRing,
    account_keys: Mapping[str, KeyRing],
) -> None:
    """The rest of :func:`prepare_block`: the senders' signatures on transfers, then
    the receipts, up to the first fault (the replay stops there)."""
    if prepared.header_fault or prepared.body_fault:
        return
    height, transactions = block.height, prepared.transactions
    last = min(prepared.rule_faults) if prepared.rule_faults else len(transactions)
    signed, transfer = check_sender_signature, TxType.TRANSFER
    for index in range(last):
        tx = transactions[index]
        if tx.tx_type is transfer:
            try:
                signed(tx, account_keys.get(str(tx.sender), _NO_KEYS))
            except VerificationFailed as exc:
                prepared.signature_faults = {index: _fault(height, exc, tx_id=tx.id)}
                return
    if last == len(transactions):
        _check_receipts(height, block.header, transactions, block.receipts, keys, prepared)


class _ParseFault(Exception):
    def __init__(self, fault: Fault) -> None:
        super().__init__(fault[1])
        self.fault = fault


def _parse(height: int, documents: Sequence[Any]) -> list[Transaction]:
    parse = Transaction.parse
    parsed: list[Transaction] = []
    append = parsed.append
    for document in documents:
        try:
            append(parse(document))
        except VerificationFailed as exc:
            tx_id = document.get("id") if isinstance(document, Mapping) else None
            raise _ParseFault(
                _fault(height, exc, tx_id=tx_id if isinstance(tx_id, str) else None)
            ) from exc
    return parsed


def _check_receipts(
    height: int,
    header: Mapping[str, Any],
    transactions: Sequence[Transaction],
    evidence: Mapping[str, ReceiptEvidence | None],
    keys: KeyRing,
    prepared: PreparedBlock,
) -> None:
    checked = skipped = 0
    receipt = TxType.RECEIPT
    for index, tx in enumerate(transactions):
        if tx.tx_type is not receipt:
            continue
        receipt_id = str(tx.receipt_id)  # the type's rules, checked before
        if receipt_id not in evidence:
            skipped += 1
            continue
        try:
            check_anchored_receipt(tx, index, header, evidence[receipt_id], keys)
        except VerificationFailed as exc:
            prepared.receipt_fault = _fault(height, exc, tx_id=tx.id, receipt_id=receipt_id)
            break
        checked += 1
    prepared.receipts_checked, prepared.receipts_skipped = checked, skipped


def _prepare_remote(
    block: BlockData,
    raw: bytes | None,
    keys: KeyRing,
    account_keys: Mapping[str, KeyRing],
) -> PreparedBlock:
    """:func:`prepare_block` in a worker process, on the body as served."""
    if raw is not None:
        try:
            block.transactions = orjson.loads(raw)
        except orjson.JSONDecodeError:
            block.transactions = None
    return prepare_block(block, keys, account_keys)


class ChainVerifier:
    """Checks blocks in height order against pinned coordinator ``keys`` (module
    docstring). Pure: no I/O.

    ``account_keys`` maps an address to the keys it registered (``GET
    /v1/keys?owner=``); a transfer whose sender is not in it is treated as coming from
    an account without keys, so whoever feeds the core must fill it for every
    transfer's sender first (:func:`transfer_senders`). After a :class:`BadBlock` the
    verifier is spent: its state holds part of the refused block.
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        account_keys: MutableMapping[str, KeyRing] | None = None,
        checkpoint: ChainCheckpoint | None = None,
    ) -> None:
        self.keys = keys.owned_by("coordinator")
        self.account_keys: MutableMapping[str, KeyRing] = (
            account_keys if account_keys is not None else {}
        )
        if checkpoint is None:
            self.previous: Mapping[str, Any] | None = None
            self.state = LedgerState()
            self.tx_ids: set[str] = set()
            self.nonces: set[tuple[str, int]] = set()
            self.blocks_checked = self.transactions_checked = 0
            self.receipts_checked = self.receipts_skipped = 0
        else:
            self.previous = checkpoint.header
            self.state = checkpoint.state
            self.tx_ids = checkpoint.tx_ids
            self.nonces = checkpoint.nonces
            self.blocks_checked = checkpoint.blocks_checked
            self.transactions_checked = checkpoint.transactions_checked
            self.receipts_checked = checkpoint.receipts_checked
            self.receipts_skipped = checkpoint.receipts_skipped
        self.previous_hash = None if self.previous is None else block_hash(self.previous)
        self.failed: BadBlock | None = None

    @property
    def next_height(self) -> int:
        """The height of the block :meth:`check` expects next."""
        return 0 if self.previous is None else int(self.previous["height"]) + 1

    def check(self, block: BlockData, prepared: PreparedBlock | None = None) -> BlockOutcome:
        """Verify the next block; :class:`BadBlock` (naming it) at the first problem.
        ``prepared`` is what :func:`prepare_block` found in it elsewhere (a worker
        process); by default it is prepared here."""
        if self.failed is not None:
            raise self.failed
        height = self.next_height
        try:
            if block.height != height:
                raise VerificationFailed(
                    f"expected block {height}, was handed block {block.height}",
                    error_code="bad_height",
                )
            if prepared is None:
                prepared = prepare_block(block, self.keys, self.account_keys)
            outcome = self._check(height, block, prepared)
        except BadBlock as exc:
            self.failed = exc
            raise
        except VerificationFailed as exc:
            self.failed = BadBlock(height, exc.error_code, exc.detail)
            raise self.failed from exc
        return outcome

    def _check(self, height: int, block: BlockData, prepared: PreparedBlock) -> BlockOutcome:
        if prepared.header_fault is not None:
            raise _bad(height, prepared.header_fault)
        header = block.header
        check_block_link(header, self.previous)
        if prepared.body_fault is not None:
            raise _bad(height, prepared.body_fault)
        transactions = prepared.transactions
        nonces = self._replay(height, transactions, prepared)
        if self.state.state_root() != header["state_root"]:
            raise VerificationFailed(
                f"block {height}'s state_root is not the tree hash of the balances "
                "replayed from genesis",
                error_code="state_root_mismatch",
            )
        if prepared.receipt_fault is not None:
            raise _bad(height, prepared.receipt_fault)
        self.tx_ids.update([tx.id for tx in transactions])
        self.nonces.update(nonces)
        self.previous, self.previous_hash = header, prepared.hash
        self.blocks_checked += 1
        self.transactions_checked += len(transactions)
        self.receipts_checked += prepared.receipts_checked
        self.receipts_skipped += prepared.receipts_skipped
        return BlockOutcome(
            height,
            str(prepared.hash),
            header,
            block.signature,
            transactions,
            nonces,
            prepared.receipts_checked,
            prepared.receipts_skipped,
        )

    def _replay(
        self, height: int, transactions: Sequence[Transaction], prepared: PreparedBlock
    ) -> set[tuple[str, int]]:
        """Per transaction in block order: not seen before, the type's rules, a fresh
        nonce, the sender's signature (those two found by :func:`prepare_block`),
        then the replay."""
        seen, used = self.tx_ids, self.nonces
        rule_faults = prepared.rule_faults or {}
        signature_faults = prepared.signature_faults or {}
        apply, transfer = self.state.apply, TxType.TRANSFER
        nonces: set[tuple[str, int]] = set()
        for index, tx in enumerate(transactions):
            if tx.id in seen:
                raise BadBlock(
                    height,
                    "duplicate_transaction",
                    f"block {height}: transaction {tx.id} was already in an earlier block",
                    tx_id=tx.id,
                )
            if rule_faults and index in rule_faults:
                raise _bad(height, rule_faults[index])
            if tx.tx_type is transfer:
                pair = (str(tx.sender), tx.document["nonce"])
                if pair in used or pair in nonces:
                    raise BadBlock(
                        height,
                        "duplicate_nonce",
                        f"block {height}: transfer {tx.id} reuses nonce {pair[1]} of {tx.sender}",
                        tx_id=tx.id,
                    )
                nonces.add(pair)
                if signature_faults and index in signature_faults:
                    raise _bad(height, signature_faults[index])
            try:
                apply(tx)
            except VerificationFailed as exc:
                raise _bad(height, _fault(height, exc, tx_id=tx.id)) from exc
        return nonces

    def checkpoint(self) -> ChainCheckpoint:
        """The state after the last verified block (shares the live sets and state)."""
        if self.previous is None:
            raise ValueError("no block verified yet")
        return ChainCheckpoint(
            header=self.previous,
            state=self.state,
            tx_ids=self.tx_ids,
            nonces=self.nonces,
            blocks_checked=self.blocks_checked,
            transactions_checked=self.transactions_checked,
            receipts_checked=self.receipts_checked,
            receipts_skipped=self.receipts_skipped,
        )


def receipt_bytes(receipt: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a whole signed receipt (what a receipt transaction's ``ref``
    hashes)."""
    return _RECEIPT_ENCODER.encode(receipt)


def check_anchored_receipt(
    tx: Transaction,
    index: int,
    header: Mapping[str, Any],
    evidence: ReceiptEvidence | None,
    keys: KeyRing,
) -> None:
    """A ``receipt`` transaction (at ``index`` of the block whose verified header is
    ``header``) against the receipt and proof the explorer serves for it: the receipt
    hashes to the transaction's ``ref`` and carries its ``receipt_id``, its coordinator
    signature verifies against pinned ``keys``, and the proof is this transaction's,
    in this block, and checks out (RFC 9162)."""
    receipt_id = tx.receipt_id
    if evidence is None or evidence.refused is not None:
        refused = None if evidence is None else evidence.refused
        if refused == "not_anchored":
            # The explorer looks the anchor up by the hash of the receipt it holds: no
            # transaction records that hash, so its receipt is not the one recorded.
            raise VerificationFailed(
                f"the explorer's receipt {receipt_id} is not the one transaction {tx.id} "
                f"anchors (it says: {evidence and evidence.detail})",
                error_code="receipt_hash_mismatch",
            )
        raise VerificationFailed(
            f"the explorer does not serve receipt {receipt_id}, which transaction {tx.id} "
            f"anchors ({refused or 'not found'})",
            error_code="receipt_missing",
        )
    receipt = evidence.receipt
    if not isinstance(receipt, Mapping):
        raise VerificationFailed(
            f"receipt {receipt_id} is not a JSON object", error_code="receipt_missing"
        )
    try:
        digest = _sha256(receipt_bytes(receipt)).hexdigest()
    except VerificationFailed as exc:
        raise VerificationFailed(
            f"receipt {receipt_id} has no canonical form: {exc.detail}",
            error_code="receipt_hash_mismatch",
        ) from exc
    if digest != tx.ref:
        raise VerificationFailed(
            f"receipt {receipt_id} hashes to {digest}, but transaction {tx.id} anchors "
            f"{tx.ref} (the receipt was changed after it was recorded)",
            error_code="receipt_hash_mismatch",
        )
    if receipt.get("receipt_id") != receipt_id:
        raise VerificationFailed(
            f"transaction {tx.id} names receipt {receipt_id}, the receipt served is "
            f"{receipt.get('receipt_id')!r}",
            error_code="receipt_mismatch",
        )
    try:
        verify_receipt(receipt, keys)
    except VerificationFailed as exc:
        raise VerificationFailed(
            f"receipt {receipt_id}: {exc.detail}", error_code=f"receipt_{exc.error_code}"
        ) from exc
    if evidence.in_block:
        return
    proof = evidence.proof
    verify_inclusion_proof(proof, header)
    if proof["tx_id"] != tx.id or proof["leaf_index"] != index:
        raise VerificationFailed(
            f"the proof served for receipt {receipt_id} is of transaction {proof['tx_id']} "
            f"at {proof['leaf_index']}, not of {tx.id} at {index}",
            error_code="proof_mismatch",
        )


# --- fetching ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockListing:
    """One entry of ``GET /v1/explorer/blocks``, as served."""

    height: int
    hash: str | None
    header: Any
    signature: Any
    tx_count: int | None

    @classmethod
    def read(cls, entry: Any) -> BlockListing | None:
        """From a listing entry; None when it has no integer height."""
        if not isinstance(entry, Mapping):
            return None
        height = entry.get("height")
        if type(height) is not int:
            return None
        header, signature = _json_member(entry.get("header")), _json_member(entry.get("signature"))
        count = header.get("tx_count") if isinstance(header, Mapping) else None
        if type(count) is not int:
            count = entry.get("transactions") if type(entry.get("transactions")) is int else None
        listed = entry.get("hash")
        return cls(height, listed if isinstance(listed, str) else None, header, signature, count)


def _json_member(value: Any) -> Any:
    """A member served as an object, or as JSON text of one."""
    if isinstance(value, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(value)
    return value


class ChainSource(Protocol):
    """The fetch functions the driver needs (all async). Missing things are None, not
    errors; trouble reaching the source is :class:`ChainSourceError`."""

    async def tip(self) -> BlockListing | None:
        """The newest block, or None when the chain has none."""

    async def blocks(self, start: int, stop: int) -> Mapping[int, BlockListing]:
        """Blocks ``start`` ≤ height < ``stop`` by height (fewer when some are missing)."""

    async def transactions(self, height: int) -> tuple[list[Any], bytes] | None:
        """A block's transactions (parsed, and the body as served), or None."""

    async def receipt(self, receipt_id: str) -> ReceiptEvidence | None:
        """A signed receipt and its proof, or None when there is no such receipt."""

    async def block_receipts(self, height: int) -> list[Any] | None:
        """The signed receipts a block's ``receipt`` transactions anchor, in block order;
        None when the source does not serve them together (then each is fetched)."""

    async def account_keys(self, owner: str) -> KeyRing:
        """The keys ``owner`` registered (empty when none)."""

    async def accounts_keys(self, owners: Sequence[str]) -> Mapping[str, KeyRing] | None:
        """The keys each of ``owners`` registered, in as few requests as the source
        allows; None when it serves one owner at a time."""


def _skip_sniffio_search() -> None:
    """httpcore 1.x runs ``import sniffio`` each time it makes a lock, several times a
    request; where sniffio is not installed, each try searches all of ``sys.path``
    again (about 0.1 ms: 0.3 s of a 2 s chain download). Marking it absent makes the
    import fail at once, as it would anyway."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


# Owners whose keys one ``GET /v1/keys`` asks for (the coordinator's limit).
KEYS_PER_REQUEST = 100


class HttpChainSource:
    """:class:`ChainSource` over the public routes of one coordinator.

    ``http`` carries the base URL (and a transport: tests pass
    ``httpx.ASGITransport``). Connection errors and 5xx are retried with exponential
    backoff and jitter, ``attempts`` times; a 429 is waited out as its
    ``Retry-After`` says (``rate_limited`` counts them); any other unexpected status
    is :class:`ChainSourceError`. ``headers`` go with every request (the operator's
    ``X-Api-Key``, which no rate limit applies to, say).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        prefix: str = EXPLORER_PREFIX,
        headers: Mapping[str, str] | None = None,
        attempts: int = RETRY_ATTEMPTS,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.prefix = prefix.rstrip("/")
        self.headers = dict(headers or {})
        self.attempts = attempts
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.requests = 0
        self.rate_limited = 0  # 429 answers waited out
        _skip_sniffio_search()

    async def _get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        accept: frozenset[int] = frozenset({404}),
    ) -> httpx.Response:
        """A 200 or an ``accept``-ed answer. A 429 waits as ``Retry-After`` says, as
        often as it comes (the explorer's rate limit paces a long download, it does not
        end it); connection errors and 5xx are tried ``attempts`` times; anything else
        is :class:`ChainSourceError`."""
        last = ""
        status: int | None = None
        attempt = 0
        while attempt < self.attempts:
            retry_after: float | None = None
            try:
                self.requests += 1
                response = await self.http.get(path, params=params, headers=self.headers)
            except httpx.HTTPError as exc:
                last, status = f"{exc!r}", None
            else:
                status = response.status_code
                if status == 200 or status in accept:
                    return response
                if status != 429 and status < 500:
                    raise ChainSourceError(
                        f"GET {path}: {status} {_reason(response)}", status=status
                    )
                last = f"{status} {_reason(response)}"
                retry_after = _retry_after(response)
            if status == 429:
                self.rate_limited += 1
                delay = retry_after if retry_after is not None else RETRY_BASE_SECONDS
                await asyncio.sleep(min(RETRY_CAP_SECONDS, delay) + self._rng.uniform(0, 0.1))
                continue
            attempt += 1
            if attempt < self.attempts:
                backoff = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                await asyncio.sleep(self._rng.uniform(0, backoff))
        raise ChainSourceError(f"GET {path}: {last} (after {self.attempts} tries)", status=status)

    async def _json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """The parsed body of a 200, None for a 404."""
        response = await self._get(path, params)
        if response.status_code != 200:
            return None
        return _parsed(path, response.content)

    async def tip(self) -> BlockListing | None:
        """``GET …/blocks?limit=1``."""
        entries = await self._json(f"{self.prefix}/blocks", {"limit": 1})
        if not isinstance(entries, list):
            raise ChainSourceError(f"GET {self.prefix}/blocks: the answer is not a list")
        return BlockListing.read(entries[0]) if entries else None

    async def blocks(self, start: int, stop: int) -> Mapping[int, BlockListing]:
        """``GET …/blocks?before=stop&limit=…``, one page per 1,000 blocks."""
        found: dict[int, BlockListing] = {}
        upper = stop
        while upper > start:
            limit = min(PAGE_SIZE, upper - start)
            entries = await self._json(f"{self.prefix}/blocks", {"limit": limit, "before": upper})
            if not isinstance(entries, list):
                raise ChainSourceError(f"GET {self.prefix}/blocks: the answer is not a list")
            for entry in entries:
                listing = BlockListing.read(entry)
                if listing is not None and start <= listing.height < upper:
                    found.setdefault(listing.height, listing)
            upper -= limit
        return found

    async def transactions(self, height: int) -> tuple[list[Any], bytes] | None:
        """``GET …/blocks/{height}/transactions``."""
        path = f"{self.prefix}/blocks/{height}/transactions"
        response = await self._get(path)
        if response.status_code != 200:
            return None
        body = response.content
        documents = _parsed(path, body)
        if not isinstance(documents, list):
            raise ChainSourceError(f"GET {path}: the answer is not a list")
        return documents, body

    async def block_receipts(self, height: int) -> list[Any] | None:
        """``GET …/blocks/{height}/receipts``; None from a coordinator without it."""
        path = f"{self.prefix}/blocks/{height}/receipts"
        response = await self._get(path, accept=frozenset({404, 405}))
        if response.status_code != 200:
            return None
        documents = _parsed(path, response.content)
        if not isinstance(documents, list):
            raise ChainSourceError(f"GET {path}: the answer is not a list")
        return documents

    async def receipt(self, receipt_id: str) -> ReceiptEvidence | None:
        """``GET …/receipts/{receipt_id}/proof``; a 404 or 409 is evidence refused,
        with the explorer's ``error_code`` (``receipt_not_found``, ``not_anchored``:
        no transaction anchors the receipt it holds, ``not_sealed`` ...)."""
        path = f"{self.prefix}/receipts/{urllib.parse.quote(receipt_id, safe='')}/proof"
        response = await self._get(path, accept=frozenset({404, 409}))
        if response.status_code != 200:
            code, detail = _error_of(response)
            return ReceiptEvidence(None, None, refused=code, detail=detail)
        document = _parsed(path, response.content)
        if not isinstance(document, Mapping):
            return ReceiptEvidence(None, None, refused="malformed_answer", detail=str(document))
        return ReceiptEvidence(document.get("receipt"), document.get("proof"))

    async def accounts_keys(self, owners: Sequence[str]) -> Mapping[str, KeyRing] | None:
        """``GET /v1/keys?owner=…&owner=…``, up to :data:`KEYS_PER_REQUEST` owners a
        request (what cannot be an address has no keys and is not asked for)."""
        wanted = [owner for owner in owners if _ADDRESS.fullmatch(owner)]
        found: dict[str, KeyRing] = {owner: KeyRing() for owner in owners}
        for start in range(0, len(wanted), KEYS_PER_REQUEST):
            batch = wanted[start : start + KEYS_PER_REQUEST]
            document = await self._json("/v1/keys", {"owner": batch})
            if document is None:
                continue
            try:
                ring = KeyRing.from_document(document)
            except VerificationFailed as exc:
                raise ChainSourceError(f"GET /v1/keys (owners): {exc.detail}") from exc
            for owner in batch:
                found[owner] = ring.owned_by(owner)
        return found

    async def account_keys(self, owner: str) -> KeyRing:
        """``GET /v1/keys?owner=…`` (no request for what cannot be an address: such an
        account could not have registered a key)."""
        if not _ADDRESS.fullmatch(owner):
            return KeyRing()
        document = await self._json("/v1/keys", {"owner": owner})
        if document is None:
            return KeyRing()
        try:
            return KeyRing.from_document(document).owned_by(owner)
        except VerificationFailed as exc:
            raise ChainSourceError(f"GET /v1/keys?owner={owner}: {exc.detail}") from exc

    async def coordinator_keys(self) -> KeyRing:
        """``GET /v1/keys`` (trust on first use: pin them, do not refetch each run)."""
        document = await self._json("/v1/keys")
        try:
            return KeyRing.from_document(document).owned_by("coordinator")
        except VerificationFailed as exc:
            raise ChainSourceError(f"GET /v1/keys: {exc.detail}") from exc


def _parsed(path: str, body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ChainSourceError(f"GET {path}: the answer is not JSON ({exc})") from exc


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The contract's ``(error_code, detail)`` of an error answer."""
    try:
        body = orjson.loads(response.content)
        return str(body.get("error_code")), str(body.get("detail"))
    except (orjson.JSONDecodeError, AttributeError):
        return f"http_{response.status_code}", response.text[:200]


def _reason(response: httpx.Response) -> str:
    code, detail = _error_of(response)
    return f"{code}: {detail}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# --- downloading ahead ------------------------------------------------------------------


class _Downloads:
    """Blocks ``start``..``stop`` (inclusive) with everything the core needs, several
    downloading ahead of the one being checked."""

    def __init__(
        self,
        source: ChainSource,
        start: int,
        stop: int,
        *,
        window: int,
        account_keys: MutableMapping[str, KeyRing],
        receipt_sample: float,
        receipt_concurrency: int,
        rng: random.Random,
        keys: KeyRing,
        workers: int | None,
    ) -> None:
        self.source = source
        self.start, self.stop = start, stop
        self.window = max(1, window)
        self.account_keys = account_keys
        self.receipt_sample = receipt_sample
        self.rng = rng
        self.keys = keys
        self.workers = workers
        self._listed_transactions = 0
        self._pool: ProcessPoolExecutor | None = None
        self._queued = 0  # blocks handed to the worker and not prepared yet
        self._closing = False
        self._downloads: dict[int, asyncio.Task[BlockData]] = {}
        self._prepared: dict[int, PreparedBlock] = {}
        self._structures: dict[int, PreparedBlock] = {}  # prepare_structure done ahead
        self._shipped: dict[int, asyncio.Future[PreparedBlock]] = {}
        # Heights: downloads scheduled below _scheduled, the block due next, and
        # every block below _shipped_up_to given to the worker or left to this process.
        self._scheduled = self._due = self._shipped_up_to = start
        self._pages: dict[int, asyncio.Task[Mapping[int, BlockListing]]] = {}
        self._key_tasks: dict[str, asyncio.Task[KeyRing]] = {}
        self._key_batches: dict[str, asyncio.Task[Mapping[str, KeyRing]]] = {}
        self._receipt_slots = asyncio.Semaphore(max(1, receipt_concurrency))
        self._tasks: set[asyncio.Task[Any]] = set()

    def _task(self, awaitable: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _page(self, height: int) -> asyncio.Task[Mapping[int, BlockListing]]:
        number = (height - self.start) // PAGE_SIZE
        task = self._pages.get(number)
        if task is None:
            low = self.start + number * PAGE_SIZE
            high = min(low + PAGE_SIZE, self.stop + 1)
            task = self._task(self.source.blocks(low, high))
            self._pages[number] = task
            self._pages.pop(number - 2, None)  # pages behind the window are done with
        return task

    async def _keys_of(self, owner: str) -> None:
        batch = self._key_batches.get(owner)
        if batch is not None:
            keys = (await batch).get(owner)
            if keys is not None:
                self.account_keys[owner] = keys
                return
        task = self._key_tasks.get(owner)
        if task is None:
            task = self._task(self.source.account_keys(owner))
            self._key_tasks[owner] = task
        self.account_keys[owner] = await task

    def _batch_keys(self, senders: list[str]) -> None:
        """Ask for the keys of every sender not asked for yet, in one batch."""
        missing = [
            sender
            for sender in senders
            if sender not in self.account_keys
            and sender not in self._key_batches
            and sender not in self._key_tasks
        ]
        if missing:
            batch = self._task(self._fetch_batch(missing))
            for sender in missing:
                self._key_batches[sender] = batch

    async def _fetch_batch(self, owners: list[str]) -> Mapping[str, KeyRing]:
        return await self.source.accounts_keys(owners) or {}

    async def _receipt(self, receipt_id: str) -> tuple[str, ReceiptEvidence | None]:
        async with self._receipt_slots:
            return receipt_id, await self.source.receipt(receipt_id)

    async def _block_receipts(
        self, height: int, receipt_ids: list[str]
    ) -> list[tuple[str, ReceiptEvidence | None]]:
        """Every receipt a block anchors, in one request when the source serves them
        together, else one request each."""
        served = await self.source.block_receipts(height)
        if served is None:
            return list(await asyncio.gather(*(self._receipt(rid) for rid in receipt_ids)))
        found: dict[str, ReceiptEvidence] = {}
        for receipt in served:
            if isinstance(receipt, Mapping) and isinstance(receipt.get("receipt_id"), str):
                found.setdefault(
                    receipt["receipt_id"], ReceiptEvidence(receipt, None, in_block=True)
                )
        # A receipt the block anchors but the explorer does not serve is missing.
        return [(rid, found.get(rid)) for rid in receipt_ids]

    def _sampled(self, receipt_ids: list[str]) -> list[str]:
        if self.receipt_sample >= 1:
            return receipt_ids
        if self.receipt_sample <= 0:
            return []
        return [rid for rid in receipt_ids if self.rng.random() < self.receipt_sample]

    def _wants_worker(self) -> bool:
        """Whether to start the worker process now: always (``workers=1``), never
        (0), or (None) once the run has seen :data:`AUTO_WORKER_TRANSACTIONS` on a
        machine with :data:`AUTO_WORKER_CPUS` cores."""
        if self.workers is not None:
            return self.workers > 0
        enough = self._listed_transactions >= AUTO_WORKER_TRANSACTIONS
        return enough and (os.cpu_count() or 1) >= AUTO_WORKER_CPUS

    async def _block(self, height: int) -> BlockData:
        ahead = height + PAGE_SIZE
        if (height - self.start) % PAGE_SIZE == PAGE_SIZE // 2 and ahead <= self.stop:
            self._page(ahead)  # the next page, before it is needed
        listing = (await self._page(height)).get(height)
        if listing is None:
            return BlockData(height, None, None, None)
        documents: list[Any] | None = []
        raw: bytes | None = b"[]"
        if listing.tx_count != 0:
            self._listed_transactions += listing.tx_count or 0
            served = await self.source.transactions(height)
            documents, raw = (None, None) if served is None else served
        receipts: dict[str, ReceiptEvidence | None] = {}
        extras: asyncio.Task[None] | None = None
        if documents:
            senders, receipt_ids = needs(documents)
            self._batch_keys(sorted(senders))
            waits: list[asyncio.Task[Any]] = [
                self._task(self._keys_of(sender))
                for sender in senders
                if sender not in self.account_keys
            ]
            if receipt_ids and self.receipt_sample >= 1:
                waits.append(self._task(self._block_receipts(height, receipt_ids)))
            else:
                waits.extend(self._task(self._receipt(rid)) for rid in self._sampled(receipt_ids))
            if waits:
                # Keys and receipts go on downloading while the block is parsed.
                extras = self._task(self._gather(waits, receipts))
                extras.add_done_callback(self._feed_worker)
        return BlockData(
            height,
            listing.header,
            listing.signature,
            documents,
            listed_hash=listing.hash,
            receipts=receipts,
            raw_transactions=raw,
            extras=extras,
        )

    @staticmethod
    async def _gather(
        waits: list[asyncio.Task[Any]], receipts: dict[str, ReceiptEvidence | None]
    ) -> None:
        for result in await asyncio.gather(*waits):
            if isinstance(result, list):  # a block's receipts together
                receipts.update(result)
            elif result is not None:
                receipts[result[0]] = result[1]

    # Preparing (prepare_block) is most of the work. With a worker process, the
    # worker takes downloaded blocks from the bottom, WORKER_QUEUE at a time, and
    # while the block due next is still in the worker this process prepares the
    # highest downloaded block no one has taken: both stay busy.

    def _ready(self, height: int) -> BlockData | None:
        """Block ``height`` if it is downloaded with its keys and receipts and has
        transactions to prepare."""
        task = self._downloads.get(height)
        if task is None or not _succeeded(task):
            return None
        block = task.result()
        if block.extras is not None and not _succeeded(block.extras):
            return None
        return block if block.header is not None and block.transactions else None

    def _feed_worker(self, _done: Any = None) -> None:
        if self._pool is None or self._closing:
            return
        height = max(self._shipped_up_to, self._due)
        while self._queued < WORKER_QUEUE and height in self._downloads:
            block = self._ready(height)
            if block is None:
                task = self._downloads[height]
                extras = task.result().extras if _succeeded(task) else None
                if not task.done() or (extras is not None and not extras.done()):
                    break  # the next block in line is not downloaded yet
            elif height not in self._prepared and height not in self._structures:
                self._ship(block)
            height += 1
            self._shipped_up_to = height

    def _ship(self, block: BlockData) -> None:
        assert self._pool is not None  # noqa: S101 - only called with a pool
        senders = transfer_senders(block.transactions or ())
        keys = {sender: self.account_keys[sender] for sender in senders}
        shipped = BlockData(
            block.height, block.header, block.signature, None, block.listed_hash, block.receipts
        )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._pool, _prepare_remote, shipped, block.raw_transactions, self.keys, keys
        )
        self._queued += 1
        self._shipped[block.height] = future
        future.add_done_callback(self._worker_done)

    def _worker_done(self, _future: Any) -> None:
        self._queued -= 1
        self._feed_worker()

    def _steal(self) -> bool:
        """Prepare the highest downloaded block nobody has taken; False if none."""
        for height in range(self._scheduled - 1, max(self._shipped_up_to, self._due + 1) - 1, -1):
            if height in self._prepared or height in self._shipped or height in self._structures:
                continue
            block = self._ready(height)
            if block is not None:
                self._prepared[height] = prepare_block(block, self.keys, self.account_keys)
                return True
        return False

    def _parse_ahead(self) -> bool:
        """:func:`prepare_structure` of the next downloaded block that has not been
        taken yet; False if there is none."""
        for height in range(self._due + 1, self._scheduled):
            if height in self._structures or height in self._prepared or height in self._shipped:
                continue
            task = self._downloads.get(height)
            if task is None or not _succeeded(task):
                return False
            block = task.result()
            if block.header is not None and block.transactions:
                self._structures[height] = prepare_structure(block, self.keys)
                return True
        return False

    async def blocks(self) -> AsyncGenerator[tuple[BlockData, PreparedBlock | None], None]:
        """The blocks in height order, each with its :class:`PreparedBlock` when it
        was prepared ahead (None: prepare it when checking it). Use with
        ``contextlib.aclosing``."""
        try:
            while self._due <= self.stop:
                while self._scheduled < self._due + self.window and self._scheduled <= self.stop:
                    task = self._task(self._block(self._scheduled))
                    task.add_done_callback(self._feed_worker)
                    self._downloads[self._scheduled] = task
                    self._scheduled += 1
                height = self._due
                block = await self._downloads[height]
                if self._pool is None and self._wants_worker():
                    # spawn, not fork: forking a process that runs threads is unsafe.
                    context = multiprocessing.get_context("spawn")
                    self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
                self._feed_worker()
                prepared = self._prepared.pop(height, None)
                future = self._shipped.pop(height, None)
                if future is not None:
                    # Not polling: each turn prepares a block; the sleep lets finished
                    # work and downloads in.
                    while not future.done() and self._steal():  # noqa: ASYNC110
                        await asyncio.sleep(0)
                    prepared = await future
                elif prepared is None and block.header is not None:
                    # Parse while the keys and receipts it needs are still coming, and
                    # the blocks after it while they are not there yet.
                    prepared = self._structures.pop(height, None)
                    if prepared is None:
                        prepared = prepare_structure(block, self.keys)
                    if block.extras is not None:
                        while not block.extras.done() and self._parse_ahead():  # noqa: ASYNC110
                            await asyncio.sleep(0)
                        await block.extras
                    finish_preparation(prepared, block, self.keys, self.account_keys)
                del self._downloads[height]
                self._due = height + 1
                yield block, prepared
        finally:
            self._closing = True
            leftover: list[asyncio.Future[Any]] = [*self._tasks, *self._shipped.values()]
            for unfinished in leftover:
                unfinished.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)


# --- the driver -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainProgress:
    """Where a run is: the height just verified, the tip it is heading for, counters."""

    height: int
    tip: int
    transactions_checked: int
    checked_this_run: int
    elapsed_seconds: float


def _succeeded(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _missing(height: int) -> BadBlock:
    return BadBlock(
        height, "block_missing", f"the explorer does not serve block {height}, below its tip"
    )


async def verify_chain(
    source: ChainSource,
    keys: KeyRing,
    *,
    copy: VerifiedCopy | None = None,
    **options: Any,
) -> ChainReport:
    """Download and verify every block from genesis (or from where ``copy`` stopped)
    up to the tip served when the run starts, and report.

    ``keys`` are pinned coordinator keys. Options: ``receipt_sample``, the fraction of
    receipt transactions whose receipt is fetched and checked (1, the default: all;
    0: none); ``window``, blocks downloading ahead (8); ``receipt_concurrency`` (16);
    ``progress``, called with a :class:`ChainProgress` about four times a second;
    ``until``, a height to stop at; ``stop``, an event that ends the run at the
    next block; ``rng`` for the sample; ``workers``, 1 to have a
    worker process do the checks that need no state (parsing, ids, signatures,
    receipts) while this one replays, 0 never to, None (the default) once the run
    has seen 20,000 transactions on a machine with three cores or more. ``copy`` is a
    :class:`VerifiedCopy` to resume from and extend. Raises :class:`ChainSourceError`
    when the source cannot be read (after committing what was verified to ``copy``);
    a bad chain is a report with ``failure`` set.
    """
    checkpoint = copy.load() if copy is not None else None
    verifier = ChainVerifier(keys, checkpoint=checkpoint)
    return await _run(source, verifier, copy, resumed=checkpoint is not None, **options)


async def _run(
    source: ChainSource,
    verifier: ChainVerifier,
    copy: VerifiedCopy | None,
    *,
    resumed: bool,
    receipt_sample: float = 1.0,
    window: int = DEFAULT_WINDOW,
    receipt_concurrency: int = DEFAULT_RECEIPT_CONCURRENCY,
    progress: Callable[[ChainProgress], None] | None = None,
    until: int | None = None,
    rng: random.Random | None = None,
    workers: int | None = None,
    stop: asyncio.Event | None = None,
) -> ChainReport:
    began = time.monotonic()
    first = verifier.next_height
    checked_before = verifier.transactions_checked
    # Keys are fetched once per run: every key that vouches for a block of the chain
    # as it stood when the run began is published by then (with its period).
    verifier.account_keys.clear()

    def report(failure: BadBlock | None = None) -> ChainReport:
        previous = verifier.previous
        return ChainReport(
            blocks_checked=verifier.blocks_checked,
            transactions_checked=verifier.transactions_checked,
            receipts_checked=verifier.receipts_checked,
            receipts_skipped=verifier.receipts_skipped,
            height=None if previous is None else int(previous["height"]),
            block_hash=verifier.previous_hash,
            state_root=None if previous is None else str(previous["state_root"]),
            supply_micro=verifier.state.supply_micro,
            fees_micro=verifier.state.fees_micro,
            accounts=len(verifier.state.balances),
            elapsed_seconds=time.monotonic() - began,
            checked_this_run=verifier.transactions_checked - checked_before,
            resumed_from=first if resumed else None,
            failure=None if failure is None else ChainFailure.of(failure),
        )

    if verifier.failed is not None:
        return report(verifier.failed)
    tip_listing = await source.tip()
    if verifier.previous is not None:
        served_tip = -1 if tip_listing is None else tip_listing.height
        rewritten = await _history_rewritten(source, verifier, served_tip)
        if rewritten is not None:
            verifier.failed = rewritten
            return report(rewritten)
    if tip_listing is None:
        return report(_missing(first))
    tip = tip_listing.height if until is None else min(until, tip_listing.height)
    if tip < first:
        return report()
    downloads = _Downloads(
        source,
        first,
        tip,
        window=window,
        account_keys=verifier.account_keys,
        receipt_sample=receipt_sample,
        receipt_concurrency=receipt_concurrency,
        rng=rng or random.Random(),  # noqa: S311 - sampling, not secrets
        keys=verifier.keys,
        workers=workers,
    )
    last_note = began
    try:
        async with contextlib.aclosing(downloads.blocks()) as blocks:
            async for block, prepared in blocks:
                if stop is not None and stop.is_set():
                    break  # what was verified so far is committed below
                if block.header is None:
                    verifier.failed = _missing(block.height)
                    return report(verifier.failed)
                try:
                    outcome = verifier.check(block, prepared)
                except BadBlock as exc:
                    return report(exc)
                if copy is not None:
                    copy.add(block, outcome)
                    copy.commit_if_due(verifier)
                if progress is not None:
                    now = time.monotonic()
                    if now - last_note >= PROGRESS_SECONDS or outcome.height == tip:
                        last_note = now
                        progress(
                            ChainProgress(
                                outcome.height,
                                tip,
                                verifier.transactions_checked,
                                verifier.transactions_checked - checked_before,
                                now - began,
                            )
                        )
    finally:
        if copy is not None:
            copy.commit(verifier)
    return report()


async def _history_rewritten(
    source: ChainSource, verifier: ChainVerifier, served_tip: int
) -> BadBlock | None:
    """Whether the served chain still holds the last block verified before."""
    previous = verifier.previous
    if previous is None:
        return None
    height = int(previous["height"])
    if served_tip < height:
        return BadBlock(
            height,
            "history_rewritten",
            f"the explorer's tip is block {served_tip}, below block {height} verified before",
        )
    listing = (await source.blocks(height, height + 1)).get(height)
    served_hash: str | None = None
    if listing is not None and isinstance(listing.header, Mapping):
        with contextlib.suppress(VerificationFailed, TypeError):
            served_hash = block_hash(listing.header)
    if served_hash != verifier.previous_hash:
        return BadBlock(
            height,
            "history_rewritten",
            f"block {height} is not the block verified before (its hash was "
            f"{verifier.previous_hash}, now {served_hash})",
        )
    return None


async def follow_chain(
    source: ChainSource,
    keys: KeyRing,
    copy: VerifiedCopy,
    *,
    interval_seconds: float = 5.0,
    stop: asyncio.Event | None = None,
    once: bool = False,
    on_report: Callable[[ChainReport], None] | None = None,
    **options: Any,
) -> ChainReport:
    """Verify into ``copy`` from where it stopped, then verify new blocks every
    ``interval_seconds``, until ``stop`` is set (at the next block: what was verified
    is kept), a block fails, or, with ``once``, after catching up once; returns the
    last report. ``options`` as for :func:`verify_chain`."""
    stop = stop or asyncio.Event()
    checkpoint = copy.load()
    verifier = ChainVerifier(keys, checkpoint=checkpoint)
    resumed = checkpoint is not None
    while True:
        report = await _run(source, verifier, copy, resumed=resumed, stop=stop, **options)
        resumed = verifier.previous is not None
        if on_report is not None:
            on_report(report)
        if report.failure is not None or stop.is_set() or once:
            return report
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)
        if stop.is_set():
            return report


# --- the local verified copy ------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    header TEXT NOT NULL,
    signature TEXT NOT NULL,
    transactions BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS balances (
    address TEXT PRIMARY KEY, balance_micro INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tx_ids (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    sender TEXT NOT NULL, nonce INTEGER NOT NULL, PRIMARY KEY (sender, nonce)
) WITHOUT ROWID;
"""


class CopyError(AITBCError):
    """The local copy cannot be used (another chain's, another format, unreadable)."""

    error_code = "copy_unusable"


class VerifiedCopy:
    """A local copy of a verified chain in ``directory/chain.sqlite3``: every verified
    block's header, signature and transactions (as served), the balances replayed up
    to the last one, the transaction ids and nonces seen, and the counters.

    What it holds was verified before it was written, and it is written at block
    boundaries only, in one SQLite transaction: a run killed at any moment leaves the
    copy at a verified block, and the next run resumes from there (after checking that
    the served chain still holds its last block). It belongs to one chain, named by
    ``url``.
    """

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / COPY_FILE
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise CopyError(f"cannot open {self.path}: {exc}") from exc
        meta = self._meta()
        if meta.get("format", COPY_FORMAT) != COPY_FORMAT:
            raise CopyError(f"{self.path} is format {meta['format']}, expected {COPY_FORMAT}")
        if meta.get("url", url) != url:
            raise CopyError(f"{self.path} is a copy of {meta['url']}, not of {url}")
        self.url = url
        self._pending_blocks: list[tuple[int, str, str, str, bytes]] = []
        self._pending_ids: list[tuple[str]] = []
        self._pending_nonces: list[tuple[str, int]] = []
        self._touched: set[str] = set()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Close the database (uncommitted blocks are dropped)."""
        self.db.close()

    def _meta(self) -> dict[str, str]:
        return {str(key): str(value) for key, value in self.db.execute("SELECT * FROM meta")}

    @property
    def height(self) -> int | None:
        """The last verified height, or None for an empty copy."""
        value = self._meta().get("height")
        return None if value is None else int(value)

    def load(self) -> ChainCheckpoint | None:
        """The checkpoint to resume from (None for an empty copy)."""
        meta = self._meta()
        if "height" not in meta:
            return None
        row = self.db.execute(
            "SELECT header FROM blocks WHERE height = ?", (int(meta["height"]),)
        ).fetchone()
        if row is None:
            raise CopyError(f"{self.path} lacks its last block {meta['height']}")
        header = orjson.loads(row[0])
        balances = dict(self.db.execute("SELECT address, balance_micro FROM balances"))
        state = LedgerState(
            balances, supply_micro=int(meta["supply_micro"]), fees_micro=int(meta["fees_micro"])
        )
        if state.state_root() != header["state_root"]:
            raise CopyError(f"{self.path}: the stored balances do not match the last block")
        return ChainCheckpoint(
            header=header,
            state=state,
            tx_ids={row[0] for row in self.db.execute("SELECT id FROM tx_ids")},
            nonces={(row[0], row[1]) for row in self.db.execute("SELECT * FROM nonces")},
            blocks_checked=int(meta["blocks_checked"]),
            transactions_checked=int(meta["transactions_checked"]),
            receipts_checked=int(meta["receipts_checked"]),
            receipts_skipped=int(meta["receipts_skipped"]),
        )

    def add(self, block: BlockData, outcome: BlockOutcome) -> None:
        """Queue a verified block for the next :meth:`commit`."""
        raw = block.raw_transactions
        if raw is None:
            raw = orjson.dumps(list(block.transactions or ()))
        self._pending_blocks.append(
            (
                outcome.height,
                outcome.hash,
                header_bytes(outcome.header).decode("utf-8"),
                orjson.dumps(outcome.signature).decode("utf-8"),
                raw,
            )
        )
        self._pending_ids.extend((tx_id,) for tx_id in outcome.tx_ids)
        self._pending_nonces.extend(outcome.nonces)
        self._touched |= outcome.touched

    def commit_if_due(self, verifier: ChainVerifier) -> None:
        """:meth:`commit` when the last one is more than a second old."""
        if time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit(verifier)

    def commit(self, verifier: ChainVerifier) -> None:
        """Make the queued blocks durable with the verifier's state after the last of
        them, in one transaction."""
        if not self._pending_blocks:
            return
        if verifier.failed is not None:
            # The verifier's state holds part of the refused block: keep what was
            # committed, and verify the queued blocks again next time.
            self._discard()
            return
        previous = verifier.previous
        if previous is None:
            return
        state = verifier.state
        touched = sorted(self._touched)
        meta = {
            "format": COPY_FORMAT,
            "url": self.url,
            "height": str(previous["height"]),
            "hash": str(verifier.previous_hash),
            "supply_micro": str(state.supply_micro),
            "fees_micro": str(state.fees_micro),
            "blocks_checked": str(verifier.blocks_checked),
            "transactions_checked": str(verifier.transactions_checked),
            "receipts_checked": str(verifier.receipts_checked),
            "receipts_skipped": str(verifier.receipts_skipped),
        }
        db = self.db
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", self._pending_blocks)
            db.executemany("INSERT INTO tx_ids VALUES (?)", self._pending_ids)
            db.executemany("INSERT INTO nonces VALUES (?, ?)", self._pending_nonces)
            db.executemany("DELETE FROM balances WHERE address = ?", [(a,) for a in touched])
            db.executemany(
                "INSERT INTO balances VALUES (?, ?)",
                [(a, state.balances[a]) for a in touched if a in state.balances],
            )
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise CopyError(f"cannot write {self.path}: {exc}") from exc
        self._discard()
        self._last_commit = time.monotonic()

    def _discard(self) -> None:
        self._pending_blocks.clear()
        self._pending_ids.clear()
        self._pending_nonces.clear()
        self._touched.clear()


# --- conveniences -----------------------------------------------------------------------


async def verify_url(
    url: str,
    keys: KeyRing | None,
    *,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> tuple[ChainReport, KeyRing]:
    """:func:`verify_chain` against the coordinator at ``url`` with its own client;
    ``keys`` None fetches ``GET /v1/keys`` once (trust on first use). Returns the
    report and the keys it trusted."""
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"),
        timeout=HTTP_TIMEOUT_SECONDS,
        limits=httpx.Limits(max_connections=DEFAULT_WINDOW + DEFAULT_RECEIPT_CONCURRENCY),
    ) as http:
        source = HttpChainSource(http, headers=headers)
        trusted = keys if keys is not None else await source.coordinator_keys()
        return await verify_chain(source, trusted, **options), trusted


__all__ = [
    "BadBlock",
    "BlockData",
    "BlockListing",
    "BlockOutcome",
    "ChainCheckpoint",
    "ChainFailure",
    "ChainProgress",
    "ChainReport",
    "ChainSource",
    "ChainSourceError",
    "ChainVerifier",
    "CopyError",
    "HttpChainSource",
    "PreparedBlock",
    "ReceiptEvidence",
    "VerifiedCopy",
    "anchored_receipts",
    "check_anchored_receipt",
    "finish_preparation",
    "follow_chain",
    "prepare_block",
    "prepare_structure",
    "receipt_bytes",
    "transfer_senders",
    "verify_chain",
    "verify_url",
]
