"""The coordinator's running state: settings, database, clock, ids and in-memory helpers.

Built once by ``create_app`` and handed to every service call. Time and randomness
come from here so tests can pin them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aitbc.domain.jobs import MinerHardware, MinerTerms
from aitbc.domain.ledger import LedgerState
from aitbc.domain.signing import KeyRing, SigningKey
from aitbc.errors import ServiceUnavailable
from aitbc.services.dispatch import Dispatcher
from aitbc.services.estimates import EstimateCache
from aitbc.services.event_bus import EventBus, MemoryBus
from aitbc.services.event_hub import EventHub
from aitbc.services.matching import Exchange
from aitbc.services.metrics import Metrics
from aitbc.services.stream_hub import StreamHub
from aitbc.services.views import JobDocument
from aitbc.settings import Settings

Clock = Callable[[], datetime]
IdFactory = Callable[[str], str]
RandomBytes = Callable[[int], bytes]


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def random_id(prefix: str) -> str:
    """``prefix`` + 32 random hex digits: unguessable, so ids leak nothing."""
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role and the client or miner id the key acts as."""

    role: str
    owner_id: str | None

    @property
    def is_admin(self) -> bool:
        """Admins see and act on everything."""
        return self.role == "admin"


@dataclass
class SealedState:
    """The replayed balances as of one block (services.ledger), kept between beats
    so sealing a block costs the hashes of the accounts it changed."""

    block_hash: str
    state: LedgerState


@dataclass
class Runtime:
    """Everything services need, passed explicitly."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock = utc_now
    new_id: IdFactory = random_id
    random_bytes: RandomBytes = secrets.token_bytes
    # The coordinator's current signing key, loaded at start-up (services.keys).
    signer: SigningKey | None = None
    # Set when another coordinator retired ``signer`` and this one has no current key
    # yet (services.keys.follow_rotation): the end of its published validity.
    signer_valid_until: datetime | None = None
    rotation_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Pending jobs handed to long-polling miners, as the Job document they receive.
    dispatcher: Dispatcher[JobDocument] = field(default_factory=Dispatcher)
    # SHA-256 of key -> (principal, monotonic time it must be read again), filled on
    # use (services.auth). Whatever revokes a key drops its entry here; other
    # processes see the revocation when the entry expires.
    key_cache: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    key_cache_pruned_at: float = 0.0
    # miner id -> (what it serves, its terms, monotonic time read); refreshed after a
    # few seconds.
    hardware_cache: dict[str, tuple[MinerHardware, MinerTerms, float]] = field(default_factory=dict)
    estimates: EstimateCache = field(default_factory=EstimateCache)
    # miner id -> (its current public keys, monotonic time read).
    miner_keys_cache: dict[str, tuple[KeyRing, float]] = field(default_factory=dict)
    # The sealer's balances as of the last block it sealed (None: read them again).
    sealed_state: SealedState | None = None
    # Readers of job streams in this process, woken after each change commits.
    streams: StreamHub = field(default_factory=StreamHub)
    # /ws subscribers in this process, fed with committed events (services.event_hub),
    # and the bus that carries wake-ups between processes (services.event_bus).
    events: EventHub = field(default_factory=EventHub)
    event_bus: EventBus = field(default_factory=MemoryBus)
    # The exchange's markets: books, recent fills, matching writers (services.exchange).
    exchange: Exchange = field(default_factory=Exchange)
    # This process's Prometheus metrics (services.metrics).
    metrics: Metrics = field(default_factory=Metrics)
    # Fire-and-forget work that must outlive the request that started it.
    background_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def signing_key(self) -> SigningKey:
        """The key receipts are signed with (set once the app has started)."""
        if self.signer is None:
            raise RuntimeError("the coordinator's signing key is not loaded yet")
        if self.signer_valid_until is not None and self.clock() >= self.signer_valid_until:
            # A receipt signed now would fail verification (key_not_valid).
            raise ServiceUnavailable(
                f"this coordinator's signing key {self.signer.key_id} was retired and it "
                "has no current key to sign receipts with; try again later",
                error_code="signing_key_retired",
            )
        return self.signer
