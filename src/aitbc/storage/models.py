"""SQLAlchemy 2 table models; the schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store as naive UTC so SQLite and PostgreSQL compare the same way."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back as aware UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every AITBC table."""

    type_annotation_map: dict[Any, Any] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class Client(Base):
    """Someone who submits jobs and pays for them."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key, stored only as the SHA-256 of the secret."""

    __tablename__ = "api_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    # The client id or miner id the key acts as; None for admin keys.
    owner_id: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # The first 16 hex digits of key_hash: how keys are named in listings and revoked.
    key_id: Mapped[str | None] = mapped_column(String(16), index=True)


class Miner(Base):
    """A compute provider: what it serves, its hardware, price and liveness."""

    __tablename__ = "miners"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    capabilities: Mapped[list[str]]
    gpu_name: Mapped[str | None] = mapped_column(String(200))
    gpu_memory_gb: Mapped[float | None] = mapped_column(Float)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    # {"model", "cores", "memory_gb"}: what a CPU-only miner computes with.
    cpu_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # AIT per 1,000 units, in µAIT.
    price_micro: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    utilisation: Mapped[float | None] = mapped_column(Float)
    running_jobs: Mapped[int] = mapped_column(Integer, default=0)
    # The most jobs the miner holds at once (a claim beyond it is 409 miner_busy).
    concurrency: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # {model: prompt tokens its chat template adds}, declared at registration.
    template_tokens: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    registered_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime | None]


class StoredFile(Base):
    """An uploaded input file, kept in the database so one backup holds everything."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    # When the file is deleted (None: kept until its owner deletes it).
    expires_at: Mapped[datetime | None] = mapped_column(index=True)


def _partial(name: str, condition: str, *columns: Any, unique: bool = False) -> Index:
    """An index over the rows matching ``condition`` (SQLite and PostgreSQL)."""
    return Index(
        name,
        *columns,
        unique=unique,
        sqlite_where=text(condition),
        postgresql_where=text(condition),
    )


class Job(Base):
    """One AI job and everything that happened to it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    input_file_id: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    # Requirements as columns so dispatch can filter in SQL; gpu_type is lower-case.
    req_gpu_type: Mapped[str | None] = mapped_column(String(100))
    req_gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    req_min_vram_gb: Mapped[float] = mapped_column(Float, default=0.0)
    output_config: Mapped[dict[str, Any]]
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    deadline_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    miner_id: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[str | None] = mapped_column(Text)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    estimated_cost_micro: Mapped[int | None] = mapped_column(BigInteger)
    estimated_time_seconds: Mapped[float | None] = mapped_column(Float)
    # The miner's posted price (µAIT per 1,000 units) when it claimed the job: what
    # the receipt charges, whatever the miner posts later.
    unit_price_micro: Mapped[int | None] = mapped_column(BigInteger)
    # The most the client accepts per 1,000 units (µAIT): only miners posting at most
    # this may claim the job, so its receipt's unit price never exceeds it.
    max_price_micro: Mapped[int | None] = mapped_column(BigInteger)
    # Prompt tokens the claiming miner's chat template may add (what it declared
    # before it claimed): the receipt's prompt tokens are bounded by it.
    prompt_allowance_tokens: Mapped[int | None] = mapped_column(Integer)
    # What the job's client has in escrow for it (µAIT): the most it can cost while it
    # is unfinished, 0 once paid or refunded (None: submitted before payments).
    held_micro: Mapped[int | None] = mapped_column(BigInteger)
    # Why the job has no cost estimate at submit (no online miner could take it).
    estimate_note: Mapped[str | None] = mapped_column(Text)
    # A job bought capacity pays for (DESIGN.md section 7): it runs only on the
    # trade's miner, at the trade's price, its hold drawn from the trade's escrow.
    trade_id: Mapped[str | None] = mapped_column(String(64))
    target_miner_id: Mapped[str | None] = mapped_column(String(128))

    # Partial indexes hold only the jobs a query looks for: the queue stays a small
    # index however many finished jobs the table keeps, and a state change touches
    # few indexes. Queries must spell the same condition with literal values
    # (job_queries.status_is) for the planner to use them.
    __table_args__ = (
        # In dispatch order (priority DESC, created_at, id): the next job is read
        # off the index without sorting the queue.
        _partial(
            "ix_jobs_dispatch", "status = 'pending'", text("priority DESC"), "created_at", "id"
        ),
        _partial("ix_jobs_lease", "status = 'running'", "lease_expires_at"),
        _partial("ix_jobs_miner_running", "status = 'running'", "miner_id"),
        _partial("ix_jobs_deadline", "status IN ('pending', 'running')", "deadline_at"),
        _partial("ix_jobs_completed", "status = 'completed'", "completed_at"),
        Index("ix_jobs_client_created", "client_id", "created_at"),
        Index("ix_jobs_created", "created_at"),
    )


class SigningKeyRecord(Base):
    """A published Ed25519 public key: the coordinator's (current and retired) and
    the keys miners registered, each with the period it was allowed to sign."""

    __tablename__ = "signing_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    # "coordinator" or a miner id.
    owner: Mapped[str] = mapped_column(String(128), index=True)
    # Raw 32 bytes as unpadded base64url, as GET /v1/keys publishes it.
    public_key: Mapped[str] = mapped_column(String(43))
    status: Mapped[str] = mapped_column(String(16))
    valid_from: Mapped[datetime]
    valid_until: Mapped[datetime | None]


class Receipt(Base):
    """A signed receipt, stored as its canonical JSON bytes: served and hashed as is."""

    __tablename__ = "receipts"

    # Issue order: the listing order ("newest first"), exact even within one second.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(128))
    # Unix seconds, as in the receipt.
    completed_at: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(16))
    document: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_receipts_client_seq", "client_id", "seq"),
        Index("ix_receipts_provider_seq", "provider", "seq"),
    )


class Account(Base):
    """The live balance of an address (DESIGN.md section 3): a client, a miner, or a
    system account (``treasury``, ``escrow``). Changed only together with the ledger
    transaction that explains the change, in the same database transaction."""

    __tablename__ = "accounts"

    address: Mapped[str] = mapped_column(String(128), primary_key=True)
    balance_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    # What this account has in escrow for unfinished jobs (part of escrow's balance).
    held_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    # What its open exchange sell orders lock (part of its own balance: not spendable).
    locked_micro: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (
        # The database refuses a negative balance whatever the code does.
        CheckConstraint("balance_micro >= 0", name="ck_accounts_balance_nonnegative"),
        CheckConstraint("held_micro >= 0", name="ck_accounts_held_nonnegative"),
        CheckConstraint("locked_micro >= 0", name="ck_accounts_locked_nonnegative"),
        # Nothing spends what open orders lock.
        CheckConstraint("balance_micro >= locked_micro", name="ck_accounts_unlocked_nonnegative"),
    )


class LedgerTransaction(Base):
    """One ledger transaction, stored as the exact canonical JSON that is hashed and
    served, plus the columns queries filter on. ``block_height`` is None until the
    sealer puts it in a block."""

    __tablename__ = "ledger_transactions"

    # Append order: the order the sealer puts pending transactions in blocks.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    sender: Mapped[str | None] = mapped_column(String(128))
    recipient: Mapped[str | None] = mapped_column(String(128))
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    fee_micro: Mapped[int] = mapped_column(BigInteger)
    ref: Mapped[str | None] = mapped_column(String(128))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    # A transfer's per-sender nonce (unique per sender: a replay is refused).
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    document: Mapped[str] = mapped_column(Text)
    block_height: Mapped[int | None] = mapped_column(BigInteger)
    position: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        # Every index is written on every insert, in the transaction of the job step
        # that caused it: partial indexes keep the rows that need none out of them.
        _partial(
            "uq_ledger_transactions_sender_nonce",
            "nonce IS NOT NULL",
            "sender",
            "nonce",
            unique=True,
        ),
        _partial("ix_ledger_transactions_pending", "block_height IS NULL", "seq"),
        # Sealed rows only: a pending row is written to it once, by the sealer.
        _partial(
            "ix_ledger_transactions_block",
            "block_height IS NOT NULL",
            "block_height",
            "position",
        ),
        Index("ix_ledger_transactions_sender_seq", "sender", "seq"),
        Index("ix_ledger_transactions_recipient_seq", "recipient", "seq"),
        # A receipt's anchor, found by the receipt's hash.
        _partial("ix_ledger_transactions_receipt_ref", "type = 'receipt'", "ref"),
    )


class Block(Base):
    """A sealed block: its header as canonical JSON (what is hashed and signed) and
    the sealer's signature object."""

    __tablename__ = "blocks"

    height: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    timestamp: Mapped[int] = mapped_column(BigInteger)
    tx_count: Mapped[int] = mapped_column(Integer)
    header: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)


class ChainBalance(Base):
    """Balances as of the last sealed block: what the sealer replays the next block's
    transactions over to compute its ``state_root``."""

    __tablename__ = "chain_balances"

    address: Mapped[str] = mapped_column(String(128), primary_key=True)
    balance_micro: Mapped[int] = mapped_column(BigInteger)


class JobStreamChunk(Base):
    """A piece of the text a running job's miner has generated, as the miner reported
    it: characters ``start`` to ``stop`` of attempt ``attempt``'s output. A requeued
    job starts a new attempt (its new miner generates afresh)."""

    __tablename__ = "job_stream_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    stop: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)


class EventRecord(Base):
    """One live event (DESIGN.md section 8), written in the transaction of the change
    it reports, so ``/ws`` can resume any channel from the database (``since``).

    ``seq`` is the order events committed in, which is what makes resumption exact:
    SQLite has one writer at a time; on PostgreSQL events are written with negative
    placeholders and numbered once committed, one numbering transaction at a time
    (migration 0007, ``event_queries.number_pending``), so nobody ever sees event
    n + 1 without event n. On SQLite the row id is one more than the largest in use;
    pruning never deletes the newest event, so an offset is never handed out twice
    (AUTOINCREMENT would too, for one more page written by every job step).
    """

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    channel: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(32))
    # A job event's client and miner: who may see it (None for public channels).
    client_id: Mapped[str | None] = mapped_column(String(64))
    miner_id: Mapped[str | None] = mapped_column(String(128))
    # Unix seconds: what retention prunes by.
    created_at: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        # A resume reads one channel after an offset. Job and receipt events, most of
        # the log and written by every job step, are found by a scan from ``since``
        # instead: an index page less in every step's commit.
        _partial(
            "ix_events_sparse_channels",
            "channel IN ('blocks', 'miner_heartbeats')",
            "channel",
            "seq",
        ),
    )


class EventLogState(Base):
    """The event log's one row: the newest offset pruned away. A ``since`` below it
    asks for events that are gone, which is an error, never a silent gap."""

    __tablename__ = "event_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pruned_through: Mapped[int] = mapped_column(BigInteger, default=0)


# --- the exchange (DESIGN.md section 7) --------------------------------------------------


class AssetBalance(Base):
    """An account's balance of an off-chain asset (a market's quote asset, USD),
    credited by admin deposits and moved by exchange fills; ``locked`` is what its
    open buy orders hold."""

    __tablename__ = "asset_balances"

    address: Mapped[str] = mapped_column(String(128), primary_key=True)
    asset: Mapped[str] = mapped_column(String(16), primary_key=True)
    balance_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    locked_micro: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint("locked_micro >= 0", name="ck_asset_balances_locked_nonnegative"),
        CheckConstraint("balance_micro >= locked_micro", name="ck_asset_balances_unlocked"),
    )


class AssetEntry(Base):
    """The quote ledger: every change of an off-chain balance, append only (a deposit,
    or one side of a fill's quote leg, ``ref`` naming the deposit or trade)."""

    __tablename__ = "asset_entries"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    asset: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(128))
    delta_micro: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_asset_entries_address_seq", "address", "seq"),)


class ExchangeMarket(Base):
    """A market's change counter: raised by every batch the matching writer commits,
    so a coordinator whose in-memory book is behind (another process wrote) knows to
    rebuild it, and the order book's ``sequence``."""

    __tablename__ = "exchange_markets"

    market: Mapped[str] = mapped_column(String(32), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, default=0)


class ExchangeOrder(Base):
    """One exchange order and what became of it. ``seq`` is its time priority: a
    restart rests the open orders again in ``seq`` order, rebuilding the same book."""

    __tablename__ = "exchange_orders"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    market: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(128))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(8))
    time_in_force: Mapped[str] = mapped_column(String(16))
    price_ticks: Mapped[int | None] = mapped_column(BigInteger)
    lots: Mapped[int] = mapped_column(BigInteger)
    filled_lots: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))
    # What the order still locks (µAIT for a sell, quote micro-units for a buy).
    locked_micro: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_exchange_orders_owner_seq", "owner", "seq"),
        _partial(
            "ix_exchange_orders_resting",
            "status IN ('open', 'partially_filled')",
            "market",
            "seq",
        ),
    )


class ExchangeTrade(Base):
    """One fill, as settled: its AIT leg is the ``trade_fill`` transaction ``tx_id``."""

    __tablename__ = "exchange_trades"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    trade_id: Mapped[str] = mapped_column(String(64), unique=True)
    market: Mapped[str] = mapped_column(String(32))
    price_ticks: Mapped[int] = mapped_column(BigInteger)
    lots: Mapped[int] = mapped_column(BigInteger)
    taker_side: Mapped[str] = mapped_column(String(4))
    maker_order_id: Mapped[str] = mapped_column(String(64))
    taker_order_id: Mapped[str] = mapped_column(String(64))
    buyer: Mapped[str] = mapped_column(String(128))
    seller: Mapped[str] = mapped_column(String(128))
    base_micro: Mapped[int] = mapped_column(BigInteger)
    quote_micro: Mapped[int] = mapped_column(BigInteger)
    buyer_fee_micro: Mapped[int] = mapped_column(BigInteger)
    seller_fee_micro: Mapped[int] = mapped_column(BigInteger)
    tx_id: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_exchange_trades_market_seq", "market", "seq"),
        Index("ix_exchange_trades_maker_order", "maker_order_id"),
        Index("ix_exchange_trades_taker_order", "taker_order_id"),
        Index("ix_exchange_trades_buyer_seq", "buyer", "seq"),
        Index("ix_exchange_trades_seller_seq", "seller", "seq"),
    )


# --- the compute marketplace (DESIGN.md section 7) ------------------------------------------


class MarketOffer(Base):
    """Capacity a miner offers: tokens of its models at a price, until a time.
    ``remaining_tokens`` only falls by trades (a CHECK keeps it at or above 0), so an
    offer is never oversold."""

    __tablename__ = "market_offers"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    offer_id: Mapped[str] = mapped_column(String(64), unique=True)
    miner_id: Mapped[str] = mapped_column(String(128))
    models: Mapped[list[str]] = mapped_column(JSON)
    price_micro: Mapped[int] = mapped_column(BigInteger)
    capacity_tokens: Mapped[int] = mapped_column(BigInteger)
    remaining_tokens: Mapped[int] = mapped_column(BigInteger)
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime)
    gpu_type: Mapped[str | None] = mapped_column(String(100))
    gpu_count: Mapped[int | None] = mapped_column(Integer)
    vram_gb: Mapped[float | None] = mapped_column(Float)
    region: Mapped[str | None] = mapped_column(String(64))
    # open, sold_out, withdrawn (expired is read from valid_until).
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("remaining_tokens >= 0", name="ck_market_offers_remaining"),
        Index("ix_market_offers_status_price", "status", "price_micro"),
    )


class MarketTrade(Base):
    """Capacity bought from an offer: ``amount`` in escrow (``ref`` = the trade id),
    drawn by its jobs: ``reserved`` is what its unfinished jobs hold of it, ``paid``
    what their receipts paid out; the rest is refunded at ``expires_at``, once."""

    __tablename__ = "market_trades"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    trade_id: Mapped[str] = mapped_column(String(64), unique=True)
    offer_id: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(64))
    miner_id: Mapped[str] = mapped_column(String(128))
    models: Mapped[list[str]] = mapped_column(JSON)
    tokens: Mapped[int] = mapped_column(BigInteger)
    price_micro: Mapped[int] = mapped_column(BigInteger)
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    reserved_micro: Mapped[int] = mapped_column(BigInteger)
    paid_micro: Mapped[int] = mapped_column(BigInteger)
    used_tokens: Mapped[int] = mapped_column(BigInteger)
    refunded_micro: Mapped[int] = mapped_column(BigInteger)
    # active, expired (its rest refunded).
    status: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("reserved_micro >= 0", name="ck_market_trades_reserved"),
        CheckConstraint(
            "reserved_micro + paid_micro <= amount_micro", name="ck_market_trades_within_amount"
        ),
        Index("ix_market_trades_client_seq", "client_id", "seq"),
        _partial("ix_market_trades_active_expiry", "status = 'active'", "expires_at"),
    )
