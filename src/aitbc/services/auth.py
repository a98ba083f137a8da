"""API keys: creation (shown once), hashed storage, lookup, revocation and the admin
bootstrap.

A key is named by its ``key_id``, the first 16 hex digits of the SHA-256 of the key
(the hash is all the database holds). Its owner is a client or miner id, or the
operator for admin keys. The rules:

- An owner lists, creates (up to ``MAX_ACTIVE_KEYS`` at once) and revokes its own
  keys; another owner's key is "not found". Revoking the key a request is sent with
  is allowed (rotation: create a second key, move to it, revoke the first, with
  either key), but never an owner's last active key: with no key left a client
  loses its account and a miner its id for good, so that is refused with 409
  ``last_api_key`` (create another key first).
- An admin revokes any key, also a client's or miner's last one (shutting it out on
  purpose), but not the last active admin key.
- The configured admin key (``AITBC_ADMIN_KEY``, else ``<data_dir>/admin.key``)
  replaces every other admin key at start-up, so a restart with a new key retires
  the old one. An admin key made with ``POST /v1/auth/keys`` is meant as the next
  configured key (rotation without downtime): it lasts until the next start that is
  configured with another key. A configured key that was revoked is refused at
  start-up rather than brought back.
- Revocation is seen by every coordinator sharing the database within
  ``KEY_CACHE_SECONDS`` (each process caches a key's principal that long), and at
  once by the process that revoked it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.ext.asyncio import AsyncSession

from aitbc.domain.money import to_micro
from aitbc.domain.timestamps import unix_seconds
from aitbc.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from aitbc.schemas import ApiKeyCreated, ApiKeyInfo, ApiKeyList, ClientCredentials
from aitbc.services import payment
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import api_key_queries, ledger_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.models import ApiKey, Client

log = logging.getLogger(__name__)

ROLES = ("client", "miner", "admin")
ADMIN_KEY_FILENAME = "admin.key"
KEY_BYTES = 32
KEY_ID_HEX_DIGITS = 16
# How long a process trusts what it read about a key: a key revoked elsewhere is
# refused here at most this long after (the contract allows 5 s). One indexed read
# per key per period keeps authentication a dictionary lookup on the hot path.
KEY_CACHE_SECONDS = 2.0
# Entries of keys no longer used are dropped at most this often (on a cache miss).
KEY_CACHE_PRUNE_SECONDS = 60.0
# The most keys one owner holds at once: enough for rotation and a few machines,
# and it bounds what one account can make the coordinator store and check.
MAX_ACTIVE_KEYS = 10


def hash_key(secret: str) -> str:
    """SHA-256 hex of a key. Keys are 256-bit random, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(key_hash: str) -> str:
    """The public name of a key: the first 16 hex digits of its hash."""
    return key_hash[:KEY_ID_HEX_DIGITS]


def generate_key(role: str) -> str:
    """A new secret key; the prefix tells people what kind of key they hold."""
    return f"aitbc_{role}_{secrets.token_urlsafe(KEY_BYTES)}"


def add_key(session: AsyncSession, runtime: Runtime, role: str, owner_id: str | None) -> str:
    """Store a new key for ``owner_id`` in the caller's transaction; return the secret."""
    secret = generate_key(role)
    key_hash = hash_key(secret)
    session.add(
        ApiKey(
            key_hash=key_hash,
            key_id=key_id_of(key_hash),
            role=role,
            owner_id=owner_id,
            created_at=runtime.clock(),
            revoked_at=None,
        )
    )
    return secret


async def authenticate(runtime: Runtime, secret: str | None) -> Principal:
    """The principal a key belongs to, or :class:`AuthenticationRequired`.

    Runs on every request: a cached answer younger than ``KEY_CACHE_SECONDS`` costs a
    hash and a dictionary lookup; an older one is read again, so a revocation made
    by another process takes effect here within that time.
    """
    if not secret:
        raise AuthenticationRequired("missing X-Api-Key header", error_code="missing_api_key")
    key_hash = hash_key(secret)
    now = time.monotonic()
    cache = runtime.key_cache
    cached = cache.get(key_hash)
    if cached is not None and cached[1] > now:
        return cached[0]
    stored = await read(runtime.engine, api_key_queries.by_hash, key_hash)
    if stored is None or stored.revoked_at is not None:
        cache.pop(key_hash, None)
        raise AuthenticationRequired("unknown or revoked API key", error_code="invalid_api_key")
    principal = Principal(role=stored.role, owner_id=stored.owner_id)
    cache[key_hash] = (principal, now + KEY_CACHE_SECONDS)
    if now - runtime.key_cache_pruned_at > KEY_CACHE_PRUNE_SECONDS:
        _prune_key_cache(runtime, now)
    return principal


def _prune_key_cache(runtime: Runtime, now: float) -> None:
    """Forget keys not used for a while (they are read again if they come back)."""
    runtime.key_cache_pruned_at = now
    expired = [key for key, (_principal, until) in runtime.key_cache.items() if until <= now]
    for key in expired:
        del runtime.key_cache[key]


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
    now = runtime.clock()
    grant_micro = to_micro(runtime.settings.client_grant)
    async with runtime.sessions.begin() as session:
        session.add(Client(id=client_id, name=name, created_at=now))
        secret = add_key(session, runtime, "client", client_id)
        await session.flush()
        await session.run_sync(
            lambda sync: _open_client_account(sync.connection(), client_id, grant_micro, now)
        )
    log.info("client %s registered", client_id, extra={"client_id": client_id})
    return ClientCredentials(client_id=client_id, api_key=secret)


def _open_client_account(
    connection: Connection, client_id: str, grant_micro: int, now: datetime
) -> None:
    """A new client's account, with the starting grant minted to it (when on)."""
    ledger_queries.create_accounts(connection, [client_id])
    if grant_micro:
        # The grant's ref names it: one per client.
        payment.mint(connection, client_id, grant_micro, unix_seconds(now), f"grant:{client_id}")


# --- listing, creating and revoking keys ---------------------------------------------


def _info(row: Row[Any]) -> ApiKeyInfo:
    return ApiKeyInfo(
        key_id=row.key_id or key_id_of(row.key_hash),
        role=row.role,
        owner=row.owner_id,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _owner_of(principal: Principal) -> str | None:
    """Whose keys a caller's own are: its client or miner id; None for the operator."""
    return None if principal.is_admin else principal.owner_id


async def own_keys(runtime: Runtime, principal: Principal) -> ApiKeyList:
    """``GET /v1/auth/keys``: the caller's keys, revoked ones too, oldest first."""
    rows = await read(runtime.engine, api_key_queries.keys_of, principal.role, _owner_of(principal))
    return ApiKeyList(keys=[_info(row) for row in rows], total=len(rows), has_more=False)


async def create_own_key(runtime: Runtime, principal: Principal) -> ApiKeyCreated:
    """``POST /v1/auth/keys``: another key for the caller, with the same role and owner.

    409 ``too_many_api_keys`` when the caller already has ``MAX_ACTIVE_KEYS``.
    """
    role, owner_id = principal.role, _owner_of(principal)
    secret = generate_key(role)
    key_hash = hash_key(secret)
    now = runtime.clock()

    def work(connection: Connection) -> None:
        active = api_key_queries.lock_active(connection, role, owner_id)
        if len(active) >= MAX_ACTIVE_KEYS:
            raise Conflict(
                f"this account already has {len(active)} active keys, the most allowed; "
                "revoke one first",
                error_code="too_many_api_keys",
            )
        api_key_queries.insert_key(
            connection, key_hash=key_hash, role=role, owner_id=owner_id, now=now
        )

    await transaction(runtime.engine, work)
    return ApiKeyCreated(
        key_id=key_id_of(key_hash),
        role=role,
        owner=owner_id,
        created_at=now,
        revoked_at=None,
        api_key=secret,
    )


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"API key {key_id} not found", error_code="api_key_not_found")


def _revoke(
    connection: Connection, runtime: Runtime, row: Row[Any], *, keep_last: bool
) -> ApiKeyInfo:
    """Revoke the key ``row``; the key as it is then. A revoked key stays as it was.

    With ``keep_last``, the owner's last active key is refused (409 ``last_api_key``).
    """
    active = api_key_queries.lock_active(connection, row.role, row.owner_id)
    if row.key_hash not in active:
        # Revoked already, perhaps an instant ago by another request: as stored now.
        again = api_key_queries.by_key_id(connection, _info(row).key_id)
        return _info(again if again is not None else row)
    if keep_last and len(active) == 1:
        raise Conflict(
            f"key {_info(row).key_id} is the last active key of this account; revoking "
            "it would lock the account out for good: create another key first "
            "(POST /v1/auth/keys)"
            + (" or restart with a new AITBC_ADMIN_KEY" if row.role == "admin" else ""),
            error_code="last_api_key",
        )
    now = runtime.clock()
    api_key_queries.revoke(connection, row.key_hash, now)
    return _info(row).model_copy(update={"revoked_at": now})


def _forget(runtime: Runtime, info: ApiKeyInfo, key_hash: str) -> ApiKeyInfo:
    """Refuse a revoked key in this process at once (others within the cache period)."""
    runtime.key_cache.pop(key_hash, None)
    return info


async def revoke_own_key(runtime: Runtime, principal: Principal, key_id: str) -> ApiKeyInfo:
    """``DELETE /v1/auth/keys/{key_id}``: revoke one of the caller's keys (possibly the
    one it calls with, never its last). Another owner's key is 404, as if unknown."""
    role, owner_id = principal.role, _owner_of(principal)

    def work(connection: Connection) -> tuple[ApiKeyInfo, str]:
        row = api_key_queries.by_key_id(connection, key_id)
        if row is None or row.role != role or row.owner_id != owner_id:
            raise _not_found(key_id)
        return _revoke(connection, runtime, row, keep_last=True), row.key_hash

    return _forget(runtime, *await transaction(runtime.engine, work))


async def list_keys(
    runtime: Runtime,
    principal: Principal,
    *,
    owner: str | None,
    role: str | None,
    limit: int,
    offset: int,
) -> ApiKeyList:
    """``GET /v1/admin/keys``: any owner's keys (all without ``owner``), oldest first."""
    require_role(principal, "admin")
    rows, total = await read(
        runtime.engine,
        api_key_queries.key_page,
        owner_id=owner,
        role=role,
        limit=limit,
        offset=offset,
    )
    return ApiKeyList(
        keys=[_info(row) for row in rows], total=total, has_more=offset + len(rows) < total
    )


async def revoke_key(runtime: Runtime, principal: Principal, key_id: str) -> ApiKeyInfo:
    """``DELETE /v1/admin/keys/{key_id}``: revoke anyone's key; only the last active
    admin key is kept (409 ``last_api_key``)."""
    require_role(principal, "admin")

    def work(connection: Connection) -> tuple[ApiKeyInfo, str]:
        row = api_key_queries.by_key_id(connection, key_id)
        if row is None:
            raise _not_found(key_id)
        return _revoke(connection, runtime, row, keep_last=row.role == "admin"), row.key_hash

    return _forget(runtime, *await transaction(runtime.engine, work))


# --- the admin bootstrap ---------------------------------------------------------------


def _configured_admin_key(runtime: Runtime) -> tuple[str, Path | None]:
    """The admin key the settings name, and the file it was just written to, if new.

    ``AITBC_ADMIN_KEY`` wins when set. Otherwise the key in ``<data_dir>/admin.key``
    is used, or a new one is generated there with mode 0600.
    """
    settings = runtime.settings
    if settings.admin_key:
        return settings.admin_key, None
    path = settings.data_dir / ADMIN_KEY_FILENAME
    if path.exists():
        return path.read_text().strip(), None
    secret = generate_key("admin")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, path


def _install_admin_key(connection: Connection, runtime: Runtime, key_hash: str) -> list[str]:
    """Make ``key_hash`` an active admin key and revoke every other; their hashes."""
    now = runtime.clock()
    row = api_key_queries.by_hash(connection, key_hash)
    key_id = key_id_of(key_hash)
    if row is None:
        api_key_queries.insert_key(
            connection, key_hash=key_hash, role="admin", owner_id=None, now=now
        )
    elif row.role != "admin":
        raise InvalidRequest(
            f"the configured admin key ({key_id}) is a {row.role} key; configure another",
            error_code="admin_key_in_use",
        )
    elif row.revoked_at is not None:
        revoked_at = f"{row.revoked_at:%Y-%m-%dT%H:%M:%SZ}"
        raise InvalidRequest(
            f"the configured admin key ({key_id}) was revoked at {revoked_at} and is not "
            "brought back: set AITBC_ADMIN_KEY to a new key (or delete the admin.key file "
            "so a new one is generated)",
            error_code="admin_key_revoked",
        )
    return api_key_queries.revoke_admin_keys_except(connection, key_hash, now)


async def ensure_admin_key(runtime: Runtime) -> Path | None:
    """Install the configured admin key in place of every earlier admin key; return
    the file it was written to, if it was generated just now."""
    secret, written = _configured_admin_key(runtime)
    key_hash = hash_key(secret)
    replaced = await transaction(runtime.engine, _install_admin_key, runtime, key_hash)
    for revoked in replaced:
        runtime.key_cache.pop(revoked, None)
    if replaced:
        log.warning(
            "admin key %s replaces the earlier admin key(s) %s, now revoked",
            key_id_of(key_hash),
            ", ".join(key_id_of(revoked) for revoked in replaced),
        )
    return written
