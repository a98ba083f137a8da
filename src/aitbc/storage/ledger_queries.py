"""Ledger statements: accounts, transactions, blocks (SQLAlchemy Core over a sync
``Connection``).

Helpers never commit: the calling service owns the transaction, so a balance change
and the ledger transaction that explains it are written together or not at all.
Transactions are only appended; the sealer alone sets their block. The database
refuses a negative balance (a CHECK constraint) and a reused transfer nonce (a unique
constraint); both violations are translated here, by constraint name, into
:class:`InsufficientFunds` and :class:`NonceReused`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from aitbc.errors import InsufficientFunds, NonceReused
from aitbc.storage.driver import DriverStatement
from aitbc.storage.models import Account, Block, ChainBalance, LedgerTransaction

ACCOUNTS = cast(Table, Account.__table__)
TRANSACTIONS = cast(Table, LedgerTransaction.__table__)
BLOCKS = cast(Table, Block.__table__)
CHAIN_BALANCES = cast(Table, ChainBalance.__table__)
A = ACCOUNTS.c
T = TRANSACTIONS.c
B = BLOCKS.c

NEGATIVE_BALANCE_CONSTRAINT = "ck_accounts_balance_nonnegative"
# A balance below what open exchange orders lock (storage.exchange_queries).
LOCKED_BALANCE_CONSTRAINT = "ck_accounts_unlocked_nonnegative"
NONCE_CONSTRAINT = "uq_ledger_transactions_sender_nonce"
# The transaction id's (PostgreSQL's name for the column's UNIQUE).
TRANSACTION_ID_CONSTRAINT = "ledger_transactions_id_key"
# Any PostgreSQL advisory-lock key unique to the sealer ("AITBCSEA" in ASCII).
SEALER_LOCK_KEY = 0x4149544243534541


# How SQLite words a unique violation: by its columns, not the constraint's name.
_SQLITE_UNIQUE_COLUMNS = {
    NONCE_CONSTRAINT: "ledger_transactions.sender, ledger_transactions.nonce",
    TRANSACTION_ID_CONSTRAINT: "ledger_transactions.id",
}


def _violates(exc: IntegrityError, constraint: str) -> bool:
    """Whether ``exc`` is a violation of ``constraint``: PostgreSQL names it in its
    message, as SQLite does for a CHECK; SQLite names a unique one by its columns."""
    message = str(exc.orig)
    columns = _SQLITE_UNIQUE_COLUMNS.get(constraint)
    return constraint in message or (columns is not None and columns in message)


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account's live balance and what it has in escrow, in µAIT."""

    address: str
    balance_micro: int
    held_micro: int

    @classmethod
    def from_row(cls, row: Row[Any]) -> AccountBalance:
        """From an ``accounts`` row."""
        return cls(str(row.address), int(row.balance_micro), int(row.held_micro))


@dataclass(frozen=True, slots=True)
class NewTransaction:
    """A transaction to append: its canonical document and the columns queries use."""

    id: str
    type: str
    sender: str | None
    recipient: str | None
    amount_micro: int
    fee_micro: int
    ref: str | None
    timestamp: int
    document: str
    nonce: int | None = None


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """A transaction as stored: its append order, document and block (if sealed)."""

    seq: int
    id: str
    type: str
    document: str
    block_height: int | None
    position: int | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> StoredTransaction:
        """From a ``ledger_transactions`` row."""
        return cls(
            seq=int(row.seq),
            id=str(row.id),
            type=str(row.type),
            document=str(row.document),
            block_height=None if row.block_height is None else int(row.block_height),
            position=None if row.position is None else int(row.position),
        )


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A sealed block: its canonical header text and signature object text."""

    height: int
    hash: str
    timestamp: int
    tx_count: int
    header: str
    signature: str

    @classmethod
    def from_row(cls, row: Row[Any]) -> StoredBlock:
        """From a ``blocks`` row."""
        return cls(
            height=int(row.height),
            hash=str(row.hash),
            timestamp=int(row.timestamp),
            tx_count=int(row.tx_count),
            header=str(row.header),
            signature=str(row.signature),
        )


# The condition of the partial index on receipts' refs, spelled with a literal so the
# planner can use the index (a bound parameter could be any type).
_IS_RECEIPT = T.type == literal_column("'receipt'")


# --- accounts -------------------------------------------------------------------------

_INSERT_ACCOUNT = insert(ACCOUNTS)
# One statement for every balance change: run for each address in sorted order, so
# two transactions touching the same accounts lock their rows (PostgreSQL) in the
# same order and never deadlock.
# On the driver's cursor (see storage.driver): every submit and completion runs it.
_CHANGE_BALANCE = DriverStatement(
    update(ACCOUNTS)
    .where(A.address == bindparam("target"))
    .values(
        balance_micro=A.balance_micro + bindparam("delta", type_=ACCOUNTS.c.balance_micro.type),
        held_micro=A.held_micro + bindparam("held_delta", type_=ACCOUNTS.c.held_micro.type),
    ),
    ("target", "delta", "held_delta"),
)


def create_accounts(connection: Connection, addresses: Iterable[str]) -> None:
    """Open accounts at zero (an address that exists already is an IntegrityError)."""
    rows = [{"address": address, "balance_micro": 0, "held_micro": 0} for address in addresses]
    if rows:
        connection.execute(_INSERT_ACCOUNT, rows)


def ensure_account(connection: Connection, address: str) -> None:
    """Open ``address`` at zero unless it exists (a miner re-registering, say)."""
    if account(connection, address) is None:
        create_accounts(connection, [address])


def change_balances(connection: Connection, changes: Mapping[str, tuple[int, int]]) -> None:
    """Add ``(balance delta, held delta)`` to each address's account.

    Raises :class:`InsufficientFunds` when a balance would go below zero; the caller's
    transaction must then roll back (PostgreSQL has already aborted it). Every address
    must have an account (system accounts and those of registered clients and miners
    always do).
    """
    rows = [
        (address, delta, held)
        for address, (delta, held) in sorted(changes.items())
        if delta or held
    ]
    try:
        _CHANGE_BALANCE.executemany(connection, rows)
    except IntegrityError as exc:
        if _violates(exc, NEGATIVE_BALANCE_CONSTRAINT) or _violates(exc, LOCKED_BALANCE_CONSTRAINT):
            raise InsufficientFunds(
                "the balance is too low for this", error_code="insufficient_funds"
            ) from exc
        raise


def account(connection: Connection, address: str) -> AccountBalance | None:
    """One account's live balance, or None if it has none."""
    row = connection.execute(select(ACCOUNTS).where(A.address == address)).first()
    return None if row is None else AccountBalance.from_row(row)


def total_balance(connection: Connection) -> int:
    """The sum of every live balance: the supply minted so far."""
    return int(connection.execute(select(func.coalesce(func.sum(A.balance_micro), 0))).scalar_one())


# --- transactions ---------------------------------------------------------------------

# The columns an append writes: NewTransaction's fields, in its order.
_TRANSACTION_COLUMNS = tuple(field.name for field in fields(NewTransaction))
_transaction_row = attrgetter(*_TRANSACTION_COLUMNS)
# On the driver's cursor (see storage.driver): every job step that moves money runs it.
_INSERT_TRANSACTION = DriverStatement(insert(TRANSACTIONS), _TRANSACTION_COLUMNS)


def append_transactions(connection: Connection, transactions: Sequence[NewTransaction]) -> None:
    """Append transactions, pending until sealed, in the order given.

    Raises :class:`NonceReused` when a transfer's nonce was used by its sender before.
    """
    rows = [_transaction_row(tx) for tx in transactions]
    try:
        _INSERT_TRANSACTION.executemany(connection, rows)
    except IntegrityError as exc:
        # A transfer sent twice with everything equal (its timestamp too) has the
        # same id: the database may find the id's duplicate before the nonce's.
        replayed_id = _violates(exc, TRANSACTION_ID_CONSTRAINT) and any(
            tx.nonce is not None for tx in transactions
        )
        if replayed_id or _violates(exc, NONCE_CONSTRAINT):
            raise NonceReused(
                "this nonce was used before by the sender", error_code="nonce_reused"
            ) from exc
        raise


_PENDING = (
    select(TRANSACTIONS).where(T.block_height.is_(None)).order_by(T.seq).limit(bindparam("limit"))
)


def pending_transactions(connection: Connection, limit: int) -> list[StoredTransaction]:
    """The oldest transactions not yet in a block, in append order."""
    return [
        StoredTransaction.from_row(row) for row in connection.execute(_PENDING, {"limit": limit})
    ]


_MARK_SEALED = DriverStatement(
    update(TRANSACTIONS)
    .where(T.seq == bindparam("target_seq"), T.block_height.is_(None))
    .values(block_height=bindparam("height"), position=bindparam("index")),
    ("height", "index", "target_seq"),
)


def mark_sealed(connection: Connection, height: int, sequence_numbers: Sequence[int]) -> None:
    """Put transactions (by append number, in block order) into block ``height``."""
    _MARK_SEALED.executemany(
        connection, [(height, index, seq) for index, seq in enumerate(sequence_numbers)]
    )


def transaction_by_id(connection: Connection, tx_id: str) -> StoredTransaction | None:
    """One transaction by its id."""
    row = connection.execute(select(TRANSACTIONS).where(T.id == tx_id)).first()
    return None if row is None else StoredTransaction.from_row(row)


def transaction_count(connection: Connection, address: str | None = None) -> int:
    """How many transactions there are (of one address, when given)."""
    statement = select(func.count()).select_from(TRANSACTIONS)
    if address is not None:
        statement = statement.where(or_(T.sender == address, T.recipient == address))
    return int(connection.execute(statement).scalar_one())


# --- blocks ---------------------------------------------------------------------------

_INSERT_BLOCK = insert(BLOCKS)


def insert_block(connection: Connection, block: StoredBlock) -> None:
    """Store a sealed block (a height that exists already is an IntegrityError)."""
    connection.execute(
        _INSERT_BLOCK,
        {
            "height": block.height,
            "hash": block.hash,
            "timestamp": block.timestamp,
            "tx_count": block.tx_count,
            "header": block.header,
            "signature": block.signature,
        },
    )


def last_block(connection: Connection) -> StoredBlock | None:
    """The highest block, or None before genesis."""
    row = connection.execute(select(BLOCKS).order_by(B.height.desc()).limit(1)).first()
    return None if row is None else StoredBlock.from_row(row)


def block_at(connection: Connection, height: int) -> StoredBlock | None:
    """The block at ``height``."""
    row = connection.execute(select(BLOCKS).where(B.height == height)).first()
    return None if row is None else StoredBlock.from_row(row)


def block_with_hash(connection: Connection, block_hash: str) -> StoredBlock | None:
    """The block whose hash is ``block_hash``."""
    row = connection.execute(select(BLOCKS).where(B.hash == block_hash)).first()
    return None if row is None else StoredBlock.from_row(row)


def block_page(
    connection: Connection, *, limit: int, before: int | None = None
) -> list[StoredBlock]:
    """Blocks newest first, below height ``before`` when given."""
    statement = select(BLOCKS)
    if before is not None:
        statement = statement.where(B.height < before)
    statement = statement.order_by(B.height.desc()).limit(limit)
    return [StoredBlock.from_row(row) for row in connection.execute(statement)]


def chain_balances(connection: Connection) -> dict[str, int]:
    """Balances as of the last sealed block (non-zero ones), by address."""
    rows = connection.execute(select(CHAIN_BALANCES))
    return {str(row.address): int(row.balance_micro) for row in rows}


def write_chain_balances(connection: Connection, balances: Mapping[str, int]) -> None:
    """Set the sealed balance of each address given (zero removes it)."""
    if not balances:
        return
    connection.execute(
        CHAIN_BALANCES.delete().where(CHAIN_BALANCES.c.address.in_(sorted(balances)))
    )
    rows = [
        {"address": address, "balance_micro": balance}
        for address, balance in sorted(balances.items())
        if balance
    ]
    if rows:
        connection.execute(insert(CHAIN_BALANCES), rows)


def try_sealer_lock(connection: Connection) -> bool:
    """Take the sealer's lock for this transaction (PostgreSQL: an advisory lock, so
    coordinators sharing the database seal one at a time). SQLite serialises writers
    already, and a second sealer's block would collide on its height."""
    if connection.dialect.name != "postgresql":
        return True
    return bool(
        connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEALER_LOCK_KEY}
        ).scalar_one()
    )


# --- explorer -------------------------------------------------------------------------
# Read-only statements of the public explorer (services.explorer). Every page is one
# statement over an index: newest first by an append number, bounded by ``limit``. The
# tables beside the ledger's (receipts, jobs, miners) come from the shared metadata.

_TABLES = BLOCKS.metadata.tables
RECEIPTS_TABLE = _TABLES["receipts"]
JOBS_TABLE = _TABLES["jobs"]
MINERS_TABLE = _TABLES["miners"]
RC = RECEIPTS_TABLE.c
JC = JOBS_TABLE.c


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A signed receipt as stored: its issue order, id and canonical text."""

    seq: int
    id: str
    document: str

    @classmethod
    def from_row(cls, row: Row[Any]) -> StoredReceipt:
        """From a ``receipts`` row (or the seq, id, document of one)."""
        return cls(seq=int(row.seq), id=str(row.id), document=str(row.document))


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Counts and sums over every transaction, sealed or pending (µAIT)."""

    transactions: int
    pending: int
    minted_micro: int
    fees_micro: int


@dataclass(frozen=True, slots=True)
class NetworkCounts:
    """Jobs, miners (all, and those taking work now) and receipts."""

    jobs: int
    miners: int
    active_miners: int
    receipts: int


def block_tx_ids(connection: Connection, height: int) -> list[str]:
    """The ids of a block's transactions in block order (from the (block_height,
    position) index): what its tx_root and inclusion proofs are computed over."""
    statement = select(T.id).where(T.block_height == height).order_by(T.position)
    return [str(tx_id) for tx_id in connection.execute(statement).scalars()]


def block_documents(connection: Connection, height: int) -> list[str]:
    """The canonical documents of a block's transactions, in block order."""
    statement = select(T.document).where(T.block_height == height).order_by(T.position)
    return [str(document) for document in connection.execute(statement).scalars()]


def _newest_first(table: Table, sides: Sequence[Sequence[Any]], limit: int) -> Any:
    """``SELECT * FROM table`` newest first (by ``seq``), at most ``limit`` rows, of the
    rows matching any of ``sides`` (each a list of conditions, all of which hold).

    Two or more sides become one index-ordered, limited scan each, merged: an address
    that is ``from`` in some rows and ``to`` in others costs two short scans of the
    (sender, seq) and (recipient, seq) indexes, never its whole history."""
    seq = table.c.seq
    if len(sides) == 1:
        return select(table).where(*sides[0]).order_by(seq.desc()).limit(limit)
    parts = [
        select(table).where(*conditions).order_by(seq.desc()).limit(limit).subquery()
        for conditions in sides
    ]
    merged = select(parts[0]).union(*(select(part) for part in parts[1:])).subquery()
    return select(merged).order_by(merged.c.seq.desc()).limit(limit)


def explorer_transaction_page(
    connection: Connection,
    *,
    limit: int,
    before_seq: int | None = None,
    address: str | None = None,
    tx_type: str | None = None,
) -> list[StoredTransaction]:
    """Transactions newest first (append order), below append number ``before_seq``,
    of one type, and where ``address`` is ``from`` or ``to``, when given."""
    common: list[Any] = []
    if before_seq is not None:
        common.append(T.seq < before_seq)
    if tx_type is not None:
        common.append(T.type == tx_type)
    sides = (
        [common]
        if address is None
        else [[T.sender == address, *common], [T.recipient == address, *common]]
    )
    statement = _newest_first(TRANSACTIONS, sides, limit)
    return [StoredTransaction.from_row(row) for row in connection.execute(statement)]


def receipt_anchor(connection: Connection, receipt_hash: str) -> StoredTransaction | None:
    """The ``receipt`` transaction whose ``ref`` is ``receipt_hash`` (the SHA-256 of a
    signed receipt's canonical bytes), or None."""
    statement = select(TRANSACTIONS).where(T.ref == receipt_hash, _IS_RECEIPT).limit(1)
    row = connection.execute(statement).first()
    return None if row is None else StoredTransaction.from_row(row)


def receipt_anchors(
    connection: Connection, receipt_hashes: Iterable[str]
) -> dict[str, StoredTransaction]:
    """The ``receipt`` transactions of many receipts (by their hashes) in one query."""
    wanted = sorted(set(receipt_hashes))
    if not wanted:
        return {}
    statement = select(TRANSACTIONS).where(T.ref.in_(wanted), _IS_RECEIPT)
    found: dict[str, StoredTransaction] = {}
    for row in connection.execute(statement):
        found.setdefault(str(row.ref), StoredTransaction.from_row(row))
    return found


def receipt_seq(connection: Connection, receipt_id: str) -> int | None:
    """A receipt's issue number (a page cursor), or None if there is no such receipt."""
    value = connection.execute(select(RC.seq).where(RC.id == receipt_id)).scalar()
    return None if value is None else int(value)


def explorer_receipt_page(
    connection: Connection,
    *,
    limit: int,
    before_seq: int | None = None,
    client: str | None = None,
    provider: str | None = None,
    party: str | None = None,
) -> list[StoredReceipt]:
    """Receipts newest first (issue order), below issue number ``before_seq``, of one
    client, one provider, or where ``party`` is either, when given."""
    common: list[Any] = []
    if before_seq is not None:
        common.append(RC.seq < before_seq)
    if client is not None:
        common.append(RC.client_id == client)
    if provider is not None:
        common.append(RC.provider == provider)
    sides = (
        [common]
        if party is None
        else [[RC.client_id == party, *common], [RC.provider == party, *common]]
    )
    statement = _newest_first(RECEIPTS_TABLE, sides, limit)
    return [StoredReceipt.from_row(row) for row in connection.execute(statement)]


_PUBLIC_JOB_COLUMNS: tuple[Any, ...] = (
    JC.id,
    JC.client_id,
    JC.miner_id,
    JC.model,
    JC.status,
    JC.priority,
    JC.created_at,
    JC.started_at,
    JC.completed_at,
    JC.prompt_tokens,
    JC.completion_tokens,
)


def public_jobs_of(connection: Connection, address: str, limit: int) -> list[Row[Any]]:
    """An address's most recent jobs, newest first, as their public columns only (no
    prompt, result or error): those it submitted as a client, and as a miner those it
    is running and those it completed (found through its receipts). Three indexed
    statements: (client_id, created_at), the running jobs' miner index, and the
    receipts' (provider, seq)."""
    as_client = (
        select(*_PUBLIC_JOB_COLUMNS)
        .where(JC.client_id == address)
        .order_by(JC.created_at.desc())
        .limit(limit)
    )
    # Spelled as the partial index's condition, so the planner can use it.
    running = (
        select(*_PUBLIC_JOB_COLUMNS)
        .where(text("jobs.status = 'running'"), JC.miner_id == address)
        .limit(limit)
    )
    completed = (
        select(*_PUBLIC_JOB_COLUMNS)
        .select_from(JOBS_TABLE.join(RECEIPTS_TABLE, RC.job_id == JC.id))
        .where(RC.provider == address)
        .order_by(RC.seq.desc())
        .limit(limit)
    )
    jobs: dict[str, Row[Any]] = {}
    for statement in (as_client, running, completed):
        for row in connection.execute(statement):
            jobs.setdefault(str(row.id), row)
    newest = sorted(jobs.values(), key=lambda row: (row.created_at, row.id), reverse=True)
    return newest[:limit]


def ledger_summary(connection: Connection) -> LedgerSummary:
    """Every transaction counted, the pending ones, all mints and all fees: one scan."""
    statement = select(
        func.count(),
        func.count().filter(T.block_height.is_(None)),
        func.coalesce(func.sum(T.amount_micro).filter(T.type == "mint"), 0),
        func.coalesce(func.sum(T.fee_micro), 0),
    ).select_from(TRANSACTIONS)
    transactions, pending, minted, fees = connection.execute(statement).one()
    return LedgerSummary(int(transactions), int(pending), int(minted), int(fees))


def network_counts(connection: Connection, seen_since: Any) -> NetworkCounts:
    """Jobs, miners, receipts, and the miners taking work that were heard from since
    ``seen_since`` (an aware datetime; as the admin's ``online_miners`` counts them),
    in one round trip."""
    miners = MINERS_TABLE.c
    active = or_(
        miners.last_heartbeat_at >= seen_since,
        miners.last_heartbeat_at.is_(None) & (miners.registered_at >= seen_since),
    )
    statement = select(
        select(func.count()).select_from(JOBS_TABLE).scalar_subquery(),
        select(func.count()).select_from(MINERS_TABLE).scalar_subquery(),
        select(func.count())
        .select_from(MINERS_TABLE)
        .where(miners.status.in_(("online", "busy")), active)
        .scalar_subquery(),
        select(func.count()).select_from(RECEIPTS_TABLE).scalar_subquery(),
    )
    jobs, all_miners, active_miners, receipts = connection.execute(statement).one()
    return NetworkCounts(int(jobs), int(all_miners), int(active_miners), int(receipts))


def block_receipt_documents(connection: Connection, height: int) -> list[str]:
    """The signed receipts a sealed block's ``receipt`` transactions anchor, in block
    order (each transaction names its receipt in ``receipt_id``)."""
    anchors = connection.execute(
        select(T.document).where(T.block_height == height, _IS_RECEIPT).order_by(T.position)
    ).scalars()
    receipt_ids = [str(json.loads(document)["receipt_id"]) for document in anchors]
    found: dict[str, str] = {}
    for start in range(0, len(receipt_ids), _IN_CHUNK):
        chunk = receipt_ids[start : start + _IN_CHUNK]
        rows = connection.execute(select(RC.id, RC.document).where(RC.id.in_(chunk)))
        found.update((str(row.id), str(row.document)) for row in rows)
    return [found[receipt_id] for receipt_id in receipt_ids if receipt_id in found]


# Ids per IN list: below SQLite's limit on bound parameters.
_IN_CHUNK = 900
