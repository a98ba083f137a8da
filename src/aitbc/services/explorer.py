"""The public explorer (DESIGN.md section 6): blocks, transactions, inclusion proofs,
receipt summaries, network figures and address pages, for anyone, without a key.

Verifiers download whole chains through these use cases, so whatever was hashed or
signed is served as the stored canonical text, joined into the response body and
never parsed and serialized again: a block's ``header`` and ``signature``, every
transaction, every signed receipt. Bodies are therefore built here as JSON text
(:func:`json_object`, :func:`json_array`) around those stored strings; the few plain
values among them are written by orjson.

Shapes DESIGN.md leaves open, decided here (``aitbc.schemas`` documents each one):

- **Block** ``{"height", "hash", "timestamp" (date-time), "transactions" (count),
  "header", "signature"}``; one block alone adds ``"tx_ids"`` in block order.
- **Transaction record** ``{"transaction": <exactly as hashed>, "block_height",
  "position"}``, the last two ``null`` while it is pending; lists hold records too.
- **Paging**: newest first, ``limit`` items below the exclusive cursor ``before``: a
  block height for blocks, a transaction id for transactions (append order), a
  receipt id for receipts (issue order). The next page's ``before`` is the last
  item's height or id; a cursor naming nothing is a 404.
- **Proofs** are DESIGN.md section 3's inclusion proof, computed from the block's
  transaction ids; a transaction still pending has none (409 ``not_sealed``).
- **Receipt bundle** (``GET /v1/receipts/{id}/bundle``, built here for
  ``services.receipts``): ``{"receipt", "transaction", "proof", "block": {"header",
  "signature"}}``; the receipt transaction is included so the bundle alone shows that
  its ``ref`` is the receipt's hash and its id the proven leaf.

Public views never carry a prompt, generation parameters, a result or an error text:
receipts only hash the prompt and the result, and jobs show their public columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Row

from aitbc.domain.canonical import sha256_hex
from aitbc.domain.ledger import TxType, inclusion_proof
from aitbc.domain.money import to_ait
from aitbc.errors import Conflict, NotFound, ValidationFailed
from aitbc.services.runtime import Runtime
from aitbc.services.views import PRIORITY_NAMES
from aitbc.storage import ledger_queries, receipt_queries
from aitbc.storage.db import read
from aitbc.storage.ledger_queries import StoredBlock, StoredReceipt, StoredTransaction

_HASH = re.compile(r"^[0-9a-f]{64}$")
# A height is at most 16 digits: above any chain, within every integer column.
_HEIGHT = re.compile(r"^[0-9]{1,16}$")
TRANSACTION_TYPES = frozenset(member.value for member in TxType)
# Members of a signed receipt that its public summary repeats.
RECEIPT_SUMMARY_MEMBERS = (
    "receipt_id",
    "job_id",
    "client",
    "provider",
    "model",
    "units",
    "unit_type",
    "price",
    "unit_price",
    "started_at",
    "completed_at",
    "input_hash",
    "result_hash",
)


# --- JSON text ---------------------------------------------------------------------------


def json_value(value: Any) -> str:
    """A plain JSON value (numbers, strings, lists, dicts of them) as JSON text."""
    return orjson.dumps(value).decode("utf-8")


def json_object(members: Iterable[tuple[str, str]]) -> str:
    """A JSON object from ``(name, JSON text)`` pairs; names are plain ASCII constants."""
    return "{" + ",".join(f'"{name}":{text}' for name, text in members) + "}"


def json_array(items: Iterable[str]) -> str:
    """A JSON array from the JSON texts of its items."""
    return "[" + ",".join(items) + "]"


def iso_time(unix_seconds: int) -> str:
    """Unix seconds as the contract's date-time, ISO 8601 UTC (``...T10:00:00Z``)."""
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(moment: datetime | None) -> str | None:
    """An aware datetime as the Job schema writes it (ISO 8601 ending in "Z")."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _optional_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def block_text(block: StoredBlock, tx_ids: Sequence[str] | None = None) -> str:
    """A ``Block`` (with ``tx_ids`` when given) around the stored header and signature."""
    members = [
        ("height", str(block.height)),
        ("hash", f'"{block.hash}"'),
        ("timestamp", f'"{iso_time(block.timestamp)}"'),
        ("transactions", str(block.tx_count)),
        ("header", block.header),
        ("signature", block.signature),
    ]
    if tx_ids is not None:
        members.append(("tx_ids", json_array(f'"{tx_id}"' for tx_id in tx_ids)))
    return json_object(members)


def transaction_record(tx: StoredTransaction) -> str:
    """``{"transaction": <exactly as hashed>, "block_height", "position"}``."""
    return json_object(
        [
            ("transaction", tx.document),
            ("block_height", _optional_int(tx.block_height)),
            ("position", _optional_int(tx.position)),
        ]
    )


def receipt_summary(
    receipt: StoredReceipt, receipt_hash: str, anchor: StoredTransaction | None
) -> dict[str, Any]:
    """A receipt's public summary (``ReceiptSummary``): its public members, its hash
    (the SHA-256 of its canonical text) and where its receipt transaction is."""
    return public_receipt(
        orjson.loads(receipt.document),
        receipt_hash,
        None if anchor is None else anchor.id,
        None if anchor is None else anchor.block_height,
    )


def public_receipt(
    document: Mapping[str, Any], receipt_hash: str, tx_id: str | None, block_height: int | None
) -> dict[str, Any]:
    """The ``ReceiptSummary`` of a signed receipt's document (also the ``receipts``
    channel's event data, services.events)."""
    summary = {name: document.get(name) for name in RECEIPT_SUMMARY_MEMBERS}
    summary["receipt_hash"] = receipt_hash
    summary["tx_id"] = tx_id
    summary["block_height"] = block_height
    return summary


def public_job(row: Row[Any]) -> dict[str, Any]:
    """A job's public facts (``PublicJob``): no prompt, parameters, result or error."""
    usage = (
        {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens}
        if row.prompt_tokens is not None and row.completion_tokens is not None
        else None
    )
    return {
        "job_id": row.id,
        "status": row.status,
        "model": row.model,
        "client_id": row.client_id,
        "miner_id": row.miner_id,
        "priority": PRIORITY_NAMES[row.priority],
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "completed_at": _iso(row.completed_at),
        "usage": usage,
    }


# --- lookups inside a unit of work ---------------------------------------------------------


def _block_named(connection: Connection, height_or_hash: str) -> StoredBlock:
    """The block a path names: 64 hex digits are a hash, digits a height; 422 for
    anything else, 404 for a block that does not exist."""
    name = height_or_hash.lower()
    if _HASH.fullmatch(name):
        block = ledger_queries.block_with_hash(connection, name)
    elif _HEIGHT.fullmatch(name):
        block = ledger_queries.block_at(connection, int(name))
    else:
        raise ValidationFailed(
            f"{height_or_hash!r} is neither a block height nor a block hash (64 hex digits)",
            error_code="invalid_block_id",
        )
    if block is None:
        raise NotFound(f"no block {height_or_hash}", error_code="block_not_found")
    return block


def _transaction(connection: Connection, tx_id: str) -> StoredTransaction:
    """A transaction by id; 404 ``transaction_not_found``."""
    tx = ledger_queries.transaction_by_id(connection, tx_id)
    if tx is None:
        raise NotFound(f"no transaction {tx_id}", error_code="transaction_not_found")
    return tx


def proof_of(connection: Connection, tx: StoredTransaction) -> tuple[dict[str, Any], StoredBlock]:
    """The inclusion proof of a sealed transaction, and its block; 409 ``not_sealed``
    while it is pending. One indexed query reads the block's ids in block order."""
    height, position = tx.block_height, tx.position
    block = None if height is None else ledger_queries.block_at(connection, height)
    if block is None or position is None:
        raise Conflict(
            f"transaction {tx.id} is pending: it has a proof once its block is sealed",
            error_code="not_sealed",
        )
    tx_ids = ledger_queries.block_tx_ids(connection, block.height)
    proof = inclusion_proof(tx_ids, position, block_height=block.height, block_hash=block.hash)
    return proof, block


def _receipt_anchor(connection: Connection, receipt_id: str, document: str) -> StoredTransaction:
    """The ``receipt`` transaction anchoring a signed receipt, found by its ``ref`` (the
    SHA-256 of ``document``); 404 ``not_anchored`` for a receipt issued before the
    ledger existed."""
    anchor = ledger_queries.receipt_anchor(connection, sha256_hex(document.encode("utf-8")))
    if anchor is None:
        raise NotFound(
            f"receipt {receipt_id} has no receipt transaction (issued before the ledger)",
            error_code="not_anchored",
        )
    return anchor


def receipt_proof_text(connection: Connection, receipt_id: str, document: str) -> str:
    """``{"receipt": <as stored>, "proof": <of its receipt transaction>}``; 409
    ``not_sealed`` while that transaction is pending."""
    proof, _block = proof_of(connection, _receipt_anchor(connection, receipt_id, document))
    return json_object([("receipt", document), ("proof", json_value(proof))])


def receipt_bundle_text(connection: Connection, receipt_id: str, document: str) -> str:
    """``{"receipt", "transaction", "proof", "block": {"header", "signature"}}``: a
    signed receipt, its receipt transaction exactly as hashed (whose ``ref`` is the
    receipt's SHA-256 and whose id is the proof's ``tx_id``), the proof, and the
    signed header it leads to: all that is needed to check the receipt offline
    against pinned coordinator keys. 409 ``not_sealed`` while pending."""
    anchor = _receipt_anchor(connection, receipt_id, document)
    proof, block = proof_of(connection, anchor)
    signed_header = json_object([("header", block.header), ("signature", block.signature)])
    return json_object(
        [
            ("receipt", document),
            ("transaction", anchor.document),
            ("proof", json_value(proof)),
            ("block", signed_header),
        ]
    )


def _summaries(connection: Connection, receipts: Sequence[StoredReceipt]) -> list[dict[str, Any]]:
    """Public summaries of receipts, their anchors read in one query."""
    hashes = {receipt.id: sha256_hex(receipt.document.encode("utf-8")) for receipt in receipts}
    anchors = ledger_queries.receipt_anchors(connection, hashes.values())
    return [
        receipt_summary(receipt, hashes[receipt.id], anchors.get(hashes[receipt.id]))
        for receipt in receipts
    ]


# --- use cases ---------------------------------------------------------------------------


async def blocks(runtime: Runtime, *, limit: int, before: int | None) -> str:
    """Blocks newest first, below height ``before`` when given: a JSON array of ``Block``."""
    page = await read(runtime.engine, ledger_queries.block_page, limit=limit, before=before)
    return json_array(block_text(block) for block in page)


async def block(runtime: Runtime, height_or_hash: str) -> str:
    """One block by height or hash, with its transaction ids in block order."""

    def work(connection: Connection) -> str:
        found = _block_named(connection, height_or_hash)
        return block_text(found, ledger_queries.block_tx_ids(connection, found.height))

    return await read(runtime.engine, work)


async def block_transactions(runtime: Runtime, height_or_hash: str) -> str:
    """A block's transactions in block order, exactly as hashed: a JSON array joined
    from the stored documents (a block holds at most 10,000)."""

    def work(connection: Connection) -> str:
        found = _block_named(connection, height_or_hash)
        return json_array(ledger_queries.block_documents(connection, found.height))

    return await read(runtime.engine, work)


async def block_receipts(runtime: Runtime, height_or_hash: str) -> str:
    """The signed receipts a block's ``receipt`` transactions anchor, in block order,
    as stored: what a verifier checks each anchor against in one request per block."""

    def work(connection: Connection) -> str:
        found = _block_named(connection, height_or_hash)
        return json_array(ledger_queries.block_receipt_documents(connection, found.height))

    return await read(runtime.engine, work)


async def transactions(
    runtime: Runtime,
    *,
    limit: int,
    before: str | None,
    address: str | None,
    tx_type: str | None,
) -> str:
    """Transaction records newest first (append order), older than the transaction
    ``before`` (an id), of one ``address`` (``from`` or ``to``) and one type."""
    if tx_type is not None and tx_type not in TRANSACTION_TYPES:
        raise ValidationFailed(
            f"type {tx_type!r} is not one of {', '.join(sorted(TRANSACTION_TYPES))}",
            error_code="unknown_transaction_type",
        )

    def work(connection: Connection) -> str:
        before_seq = None if before is None else _transaction(connection, before).seq
        page = ledger_queries.explorer_transaction_page(
            connection, limit=limit, before_seq=before_seq, address=address, tx_type=tx_type
        )
        return json_array(transaction_record(tx) for tx in page)

    return await read(runtime.engine, work)


async def transaction(runtime: Runtime, tx_id: str) -> str:
    """One transaction record: the transaction exactly as hashed and where it is."""

    def work(connection: Connection) -> str:
        return transaction_record(_transaction(connection, tx_id))

    return await read(runtime.engine, work)


async def transaction_proof(runtime: Runtime, tx_id: str) -> dict[str, Any]:
    """The inclusion proof of a sealed transaction; 409 ``not_sealed`` while pending."""

    def work(connection: Connection) -> dict[str, Any]:
        proof, _block = proof_of(connection, _transaction(connection, tx_id))
        return proof

    return await read(runtime.engine, work)


async def receipt_proof(runtime: Runtime, receipt_id: str) -> str:
    """``{"receipt": <the signed receipt, as stored>, "proof": <its transaction's>}``."""

    def work(connection: Connection) -> str:
        row = receipt_queries.receipt_by_id(connection, receipt_id)
        if row is None:
            raise NotFound(f"receipt {receipt_id} not found", error_code="receipt_not_found")
        return receipt_proof_text(connection, receipt_id, str(row.document))

    return await read(runtime.engine, work)


async def receipts(
    runtime: Runtime,
    *,
    limit: int,
    before: str | None,
    client: str | None,
    provider: str | None,
) -> list[dict[str, Any]]:
    """Public receipt summaries newest first (issue order), older than the receipt
    ``before`` (an id), of one client and one provider when given."""

    def work(connection: Connection) -> list[dict[str, Any]]:
        before_seq = None
        if before is not None:
            before_seq = ledger_queries.receipt_seq(connection, before)
            if before_seq is None:
                raise NotFound(f"receipt {before} not found", error_code="receipt_not_found")
        page = ledger_queries.explorer_receipt_page(
            connection, limit=limit, before_seq=before_seq, client=client, provider=provider
        )
        return _summaries(connection, page)

    return await read(runtime.engine, work)


async def stats(runtime: Runtime) -> dict[str, Any]:
    """The seed's ``NetworkStats`` (jobs, active miners, receipts, block height) plus
    ``total_supply`` (every mint) and ``total_fees`` in AIT, and ledger counts. The
    totals include transactions still pending."""
    seen_since = runtime.clock() - timedelta(seconds=runtime.settings.miner_offline_after_seconds)

    def work(
        connection: Connection,
    ) -> tuple[ledger_queries.NetworkCounts, ledger_queries.LedgerSummary, StoredBlock | None]:
        return (
            ledger_queries.network_counts(connection, seen_since),
            ledger_queries.ledger_summary(connection),
            ledger_queries.last_block(connection),
        )

    counts, ledger, last = await read(runtime.engine, work)
    return {
        "total_jobs": counts.jobs,
        "active_miners": counts.active_miners,
        "total_receipts": counts.receipts,
        "block_height": 0 if last is None else last.height,
        "total_supply": to_ait(ledger.minted_micro),
        "total_fees": to_ait(ledger.fees_micro),
        "total_miners": counts.miners,
        "total_transactions": ledger.transactions,
        "pending_transactions": ledger.pending,
    }


async def address(runtime: Runtime, address: str, *, limit: int) -> str:
    """An address's balance, how many transactions it is ``from`` or ``to``, and its
    ``limit`` most recent transactions, jobs and receipts (as client or provider)."""

    def work(connection: Connection) -> str:
        account = ledger_queries.account(connection, address)
        if account is None:
            raise NotFound(f"no account {address}", error_code="account_not_found")
        count = ledger_queries.transaction_count(connection, address)
        recent = ledger_queries.explorer_transaction_page(connection, limit=limit, address=address)
        jobs = ledger_queries.public_jobs_of(connection, address, limit)
        receipts_page = ledger_queries.explorer_receipt_page(connection, limit=limit, party=address)
        return json_object(
            [
                ("address", json_value(address)),
                ("balance", json_value(to_ait(account.balance_micro))),
                ("transaction_count", str(count)),
                ("transactions", json_array(transaction_record(tx) for tx in recent)),
                ("jobs", json_value([public_job(row) for row in jobs])),
                ("receipts", json_value(_summaries(connection, receipts_page))),
            ]
        )

    return await read(runtime.engine, work)
