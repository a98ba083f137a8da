"""API keys: creation (shown once), hashed storage, lookup and the admin bootstrap."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from aitbc.errors import AuthenticationRequired, PermissionDenied
from aitbc.schemas import ClientCredentials
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import queries
from aitbc.storage.models import ApiKey, Client

ROLES = ("client", "miner", "admin")
ADMIN_KEY_FILENAME = "admin.key"
KEY_BYTES = 32


def hash_key(secret: str) -> str:
    """SHA-256 hex of a key. Keys are 256-bit random, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key(role: str) -> str:
    """A new secret key; the prefix tells people what kind of key they hold."""
    return f"aitbc_{role}_{secrets.token_urlsafe(KEY_BYTES)}"


def add_key(session: AsyncSession, runtime: Runtime, role: str, owner_id: str | None) -> str:
    """Store a new key for ``owner_id`` in the caller's transaction; return the secret."""
    secret = generate_key(role)
    session.add(
        ApiKey(
            key_hash=hash_key(secret),
            role=role,
            owner_id=owner_id,
            created_at=runtime.clock(),
            revoked_at=None,
        )
    )
    return secret


async def authenticate(runtime: Runtime, secret: str | None) -> Principal:
    """The principal a key belongs to, or :class:`AuthenticationRequired`."""
    if not secret:
        raise AuthenticationRequired("missing X-Api-Key header", error_code="missing_api_key")
    key_hash = hash_key(secret)
    principal = runtime.key_cache.get(key_hash)
    if principal is not None:
        return principal
    async with runtime.sessions() as session:
        stored = await queries.api_key(session, key_hash)
    if stored is None or stored.revoked_at is not None:
        raise AuthenticationRequired("unknown or revoked API key", error_code="invalid_api_key")
    principal = Principal(role=stored.role, owner_id=stored.owner_id)
    runtime.key_cache[key_hash] = principal
    return principal


def require_role(principal: Principal, *roles: str) -> None:
    """Raise :class:`PermissionDenied` unless the caller has one of ``roles``."""
    if principal.role not in roles:
        raise PermissionDenied(
            f"this endpoint needs a {' or '.join(roles)} key; this key is a {principal.role} key"
        )


def require_client(principal: Principal) -> str:
    """The caller's client id; :class:`PermissionDenied` for other roles."""
    require_role(principal, "client")
    if principal.owner_id is None:
        raise PermissionDenied("this client key has no client account")
    return principal.owner_id


def require_miner(principal: Principal, miner_id: str) -> None:
    """A miner key acts only as its own miner."""
    require_role(principal, "miner")
    if principal.owner_id != miner_id:
        raise PermissionDenied("this key belongs to another miner", error_code="miner_mismatch")


async def register_client(runtime: Runtime, name: str | None) -> ClientCredentials:
    """Create a client account and its first key."""
    client_id = runtime.new_id("client")
    async with runtime.sessions.begin() as session:
        session.add(Client(id=client_id, name=name, created_at=runtime.clock()))
        secret = add_key(session, runtime, "client", client_id)
    return ClientCredentials(client_id=client_id, api_key=secret)


async def ensure_admin_key(runtime: Runtime) -> Path | None:
    """Make sure an admin key exists; return the file it was written to, if generated.

    ``AITBC_ADMIN_KEY`` wins when set. Otherwise the key in ``<data_dir>/admin.key``
    is used, or a new one is generated there with mode 0600.
    """
    settings = runtime.settings
    written: Path | None = None
    if settings.admin_key:
        secret = settings.admin_key
    else:
        path = settings.data_dir / ADMIN_KEY_FILENAME
        if path.exists():
            secret = path.read_text().strip()
        else:
            secret = generate_key("admin")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secret + "\n")
            written = path
    key_hash = hash_key(secret)
    async with runtime.sessions.begin() as session:
        if await queries.api_key(session, key_hash) is None:
            session.add(
                ApiKey(
                    key_hash=key_hash,
                    role="admin",
                    owner_id=None,
                    created_at=runtime.clock(),
                    revoked_at=None,
                )
            )
    return written
