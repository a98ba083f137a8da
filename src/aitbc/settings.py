"""Coordinator settings: flags, then ``AITBC_*`` environment variables, then defaults.

Never built at import time: ``aitbc serve`` builds one from its flags and
``create_app(settings)`` receives it explicitly, so tests construct settings
directly with no environment tricks.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8001


class MarketSettings(BaseModel):
    """One exchange market ``AIT-QUOTE`` (DESIGN.md section 7): prices in quote units
    per AIT on a ``tick_size`` grid, amounts in ``lot_size`` steps of AIT, fees as
    fractions of the AIT each side trades."""

    quote: str = Field(default="USD", pattern=r"^[A-Z0-9]{1,12}$")
    tick_size: Decimal = Field(default=Decimal("0.0001"), gt=0, decimal_places=6)
    lot_size: Decimal = Field(default=Decimal("0.01"), gt=0, decimal_places=6)
    maker_fee: Decimal = Field(default=Decimal("0.001"), ge=0, lt=1, decimal_places=6)
    taker_fee: Decimal = Field(default=Decimal("0.002"), ge=0, lt=1, decimal_places=6)


class Settings(BaseSettings):
    """Everything the coordinator can be configured with."""

    model_config = SettingsConfigDict(env_prefix="AITBC_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("aitbc-data")
    # None means "SQLite file in data_dir"; postgresql://... selects PostgreSQL.
    database_url: str | None = None
    admin_key: str | None = None
    # The coordinator's Ed25519 signing key (PKCS#8 PEM); None means
    # <data_dir>/coordinator_ed25519.pem, generated at first start.
    signing_key_file: Path | None = None

    open_client_registration: bool = True
    open_miner_registration: bool = True

    # Rate limits in the `limits` library's notation; an empty string disables them.
    rate_limit: str = "60/minute;1000/hour"
    # Miner daemons heartbeat and long-poll on their own, so they get their own budget.
    miner_rate_limit: str = "600/minute;20000/hour"
    # Anonymous requests to the public explorer (per client IP): verifiers and
    # followers download whole chains, a few requests per block.
    explorer_rate_limit: str = "1200/minute;60000/hour"
    # "memory://" keeps counters in-process; "redis://host:6379[/db]" shares them
    # between coordinators (in process while Redis does not answer).
    rate_limit_storage_url: str = "memory://"
    # The Redis shared by coordinators (DESIGN.md section 4); rate limits use it when
    # rate_limit_storage_url is left at memory://.
    redis_url: str | None = None
    # Prefix of the rate-limit keys in Redis, so deployments can share one server.
    rate_limit_key_prefix: str = "aitbc"
    # Addresses of proxies whose X-Forwarded-For / X-Forwarded-Proto are believed
    # (comma-separated IPs or networks, "*" for any); empty: none are.
    forwarded_allow_ips: str = ""
    # A request body must keep arriving: this long between two chunks and it is
    # dropped with 408 (Apache's mod_reqtimeout default); after this long it must also
    # average 500 bytes/s, so a body trickling in a byte at a time cannot hold a
    # connection either. An upload at any sane pace may take as long as it needs.
    request_read_timeout_seconds: float = Field(default=20.0, gt=0)

    default_model: str = "smollm2-135m"
    # AIT per 1,000 units a job accepts when its request names no max_price.
    default_max_price: Decimal = Field(default=Decimal(1), ge=0, decimal_places=6)
    # AIT minted for every new client at registration (0 turns the grant off).
    client_grant: Decimal = Field(default=Decimal(100), ge=0, decimal_places=6)
    # The treasury's share of each job's price, in basis points (500 = 5 %).
    fee_basis_points: int = Field(default=500, ge=0, le=10_000)
    # The sealer puts pending transactions into a signed block this often.
    block_interval_seconds: float = Field(default=2.0, gt=0)
    # Seal a block even when no transaction is pending (a heartbeat for followers).
    seal_empty_blocks: bool = False
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    sweep_interval_seconds: float = Field(default=1.0, gt=0)
    miner_offline_after_seconds: float = Field(default=60.0, gt=0)
    max_long_poll_seconds: float = Field(default=30.0, ge=0)
    default_timeout_seconds: int = Field(default=3600, ge=1)
    # The OpenAI-compatible gateway: how long a request waits for a miner to take its
    # job before it is cancelled (refunded) and answered 503 with Retry-After.
    gateway_queue_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_timeout_seconds: int = Field(default=86400, ge=1)

    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    # An uploaded file is only ever used as a prompt, and UTF-8 spends at most 4 bytes
    # on a character: uploads are capped at min(max_upload_bytes, 4 * max_prompt_chars)
    # bytes (services.files.upload_limit), which the defaults make equal.
    max_upload_bytes: int = Field(default=4_000_000, ge=1)
    max_prompt_chars: int = Field(default=1_000_000, ge=1)
    # Per-client file quota over files not yet expired (409 file_quota_exceeded beyond
    # it), and how long an uploaded file is kept before the sweeper deletes it.
    max_files_per_client: int = Field(default=100, ge=1)
    max_file_bytes_per_client: int = Field(default=100 * 1_048_576, ge=1)
    file_ttl_seconds: int = Field(default=7 * 86400, ge=60)

    # Live events (/ws, DESIGN.md section 8). The bus that tells coordinator processes
    # sharing a database about each other's events: "auto" (Redis when redis_url is
    # set, else LISTEN/NOTIFY on PostgreSQL, else in process), "memory", "postgres"
    # or "redis".
    event_bus: Literal["auto", "memory", "postgres", "redis"] = "auto"
    # How often /ws reads the event log without a wake-up from the bus (a safety net
    # for a wake-up lost while the bus reconnects).
    event_poll_seconds: float = Field(default=1.0, gt=0)
    # How long events are kept for subscribers resuming with ``since``.
    event_retention_seconds: int = Field(default=86400, ge=60)
    # Frames queued for one connection before it is closed as too slow (1013).
    ws_max_queued_events: int = Field(default=1000, ge=1)
    # A connection that follows no channel and says nothing this long is closed.
    ws_idle_seconds: float = Field(default=60.0, gt=0)
    # WebSocket pings from the server, and how long a pong may take before the
    # connection is dropped (uvicorn's; 0 turns pings off).
    ws_ping_interval_seconds: float = Field(default=20.0, ge=0)
    ws_ping_timeout_seconds: float = Field(default=20.0, gt=0)
    ws_max_connections: int = Field(default=10_000, ge=1)

    # GET /metrics answers the admin key, and any caller from these addresses
    # (comma-separated IPs or networks, e.g. a Prometheus server's); empty: admin only.
    metrics_allow_ips: str = ""

    # The exchange's markets (JSON in AITBC_EXCHANGE_MARKETS), AIT-USD by default.
    exchange_markets: list[MarketSettings] = Field(default_factory=lambda: [MarketSettings()])

    log_level: str = "info"
    # "text": readable lines; "json": one JSON object per line (aitbc.logs).
    log_format: Literal["text", "json"] = "text"

    def resolved_signing_key_file(self) -> Path:
        """Where the coordinator's signing key lives."""
        return self.signing_key_file or self.data_dir / "coordinator_ed25519.pem"

    def resolved_database_url(self) -> str:
        """The SQLAlchemy async URL: the configured one, or SQLite under data_dir."""
        url = self.database_url
        if not url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'aitbc.db').resolve()}"
        return to_async_url(url)


def to_async_url(url: str) -> str:
    """Map plain ``postgresql://`` / ``sqlite://`` URLs to their async drivers."""
    for plain, async_prefix in (
        ("postgresql+asyncpg://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_prefix + url[len(plain) :]
    return url
