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
from aitbc.domain.signing import KeyRing, SigningKey
from aitbc.services.dispatch import Dispatcher
from aitbc.services.estimates import EstimateCache
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
    rotation_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Pending jobs handed to long-polling miners, as the Job document they receive.
    dispatcher: Dispatcher[JobDocument] = field(default_factory=Dispatcher)
    # SHA-256 of key -> principal, filled on first use. Keys cannot be revoked yet;
    # whatever revokes one must drop its entry here.
    key_cache: dict[str, Principal] = field(default_factory=dict)
    # miner id -> (what it serves, its terms, monotonic time read); refreshed after a
    # few seconds.
    hardware_cache: dict[str, tuple[MinerHardware, MinerTerms, float]] = field(default_factory=dict)
    estimates: EstimateCache = field(default_factory=EstimateCache)
    # miner id -> (its current public keys, monotonic time read).
    miner_keys_cache: dict[str, tuple[KeyRing, float]] = field(default_factory=dict)

    def signing_key(self) -> SigningKey:
        """The key receipts are signed with (set once the app has started)."""
        if self.signer is None:
            raise RuntimeError("the coordinator's signing key is not loaded yet")
        return self.signer
