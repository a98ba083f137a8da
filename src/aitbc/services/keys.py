"""Signing keys: the coordinator's own (load, first-start generation, rotation), the
keys miners register, and the public list ``GET /v1/keys`` serves.

The private key lives in a file (mode 0600); the database holds every public key
with the period it could sign in, so receipts signed by a retired key stay
verifiable and several coordinators sharing one database publish each other's keys.
Rotation swaps the in-memory key at the same instant it dates the old key's
retirement, and a completion samples the clock and the key together, so every
receipt's ``completed_at`` lies inside its key's published period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row

from aitbc.domain.signing import (
    COORDINATOR_OWNER,
    PUBLIC_KEY_BYTES,
    KeyRing,
    PublicKey,
    SigningKey,
    b64url_decode,
    check_public_key,
    key_id_for,
)
from aitbc.errors import Conflict, InvalidRequest, VerificationFailed
from aitbc.services.runtime import RandomBytes, Runtime
from aitbc.settings import Settings
from aitbc.storage import receipt_queries
from aitbc.storage.db import read, transaction

log = logging.getLogger(__name__)

# A key registered through another coordinator sharing the database is seen here
# within this time (a signature by an unknown key also forces a fresh read).
MINER_KEYS_CACHE_SECONDS = 5.0
# After a rotation the old key stays valid this long: a completion that picked the
# old key just before the switch still dates its receipt inside the key's period.
ROTATION_OVERLAP_SECONDS = 60


def _stage_private(path: Path, key: SigningKey) -> Path:
    """Write ``key`` (mode 0600, synced to disk) next to ``path``; the staged file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A unique name (mode 0600 from the start): two writers never share a file.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.to_pem())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return temporary


def _write_private(path: Path, key: SigningKey) -> None:
    """Write ``key`` to ``path`` atomically with mode 0600."""
    os.replace(_stage_private(path, key), path)


def load_or_create_key(settings: Settings, random_bytes: RandomBytes) -> tuple[SigningKey, bool]:
    """The coordinator's private key from its file, generated there if missing.

    Returns the key and whether it was just created.
    """
    path = settings.resolved_signing_key_file()
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("signing key %s is readable by others (mode %o); chmod 600 it", path, mode)
        try:
            return SigningKey.from_pem(path.read_bytes()), False
        except (ValueError, TypeError, OSError) as exc:  # not a key, encrypted, unreadable
            raise InvalidRequest(
                f"{path} does not hold an unencrypted Ed25519 private key: {exc}",
                error_code="bad_signing_key_file",
            ) from exc
    if settings.signing_key_file is not None:
        # A configured key is loaded, never invented: a typo must not mint a new key.
        raise InvalidRequest(
            f"the configured signing key file {path} does not exist",
            error_code="signing_key_file_missing",
        )
    key = SigningKey.from_seed(random_bytes(32))
    _write_private(path, key)
    return key, True


def _record(row: Row[Any]) -> PublicKey:
    return PublicKey(
        key_id=row.key_id,
        public_key=b64url_decode(row.public_key, PUBLIC_KEY_BYTES, "public key"),
        owner=row.owner,
        status=row.status,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
    )


def _publish(connection: Connection, key: SigningKey, now: datetime) -> None:
    """Make sure ``key`` is published as a current coordinator key."""
    row = receipt_queries.key_by_id(connection, key.key_id)
    if row is None:
        receipt_queries.insert_key(
            connection,
            key_id=key.key_id,
            owner=COORDINATOR_OWNER,
            public_key=key.public_key_b64,
            valid_from=now,
        )
        return
    if row.owner != COORDINATOR_OWNER:
        raise Conflict(
            f"key {key.key_id} is registered to {row.owner}, not the coordinator",
            error_code="key_in_use",
        )
    if row.status != "current":
        raise Conflict(
            f"the signing key {key.key_id} was retired at {row.valid_until}; "
            "it must not sign again: run `aitbc keys rotate --offline` for a new one",
            error_code="key_retired",
        )


async def start(runtime: Runtime) -> Path | None:
    """Load (or create) the coordinator's key and publish it; the path if created."""
    key, created = load_or_create_key(runtime.settings, runtime.random_bytes)
    await transaction(runtime.engine, _publish, key, runtime.clock())
    runtime.signer = key
    return runtime.settings.resolved_signing_key_file() if created else None


async def rotate(runtime: Runtime) -> PublicKey:
    """Replace the signing key: the new one is current from now, the old one retired.

    Order matters, so that every receipt is signed by a published key valid at its
    ``completed_at``: the new key is written to disk (staged) first, then published
    in the database, and only then does it replace the old key in memory. The old
    key stays valid for ``ROTATION_OVERLAP_SECONDS`` more, for completions that
    picked it before the switch. If the database step fails, nothing changed.
    The old private key is discarded; its public key stays published so the
    receipts it signed stay verifiable. Rotations are serialized.
    """
    async with runtime.rotation_lock:
        path = runtime.settings.resolved_signing_key_file()
        new_key = SigningKey.from_seed(runtime.random_bytes(32))
        old_key = runtime.signing_key()
        staged = _stage_private(path, new_key)
        now = runtime.clock()
        retired_at = now + timedelta(seconds=ROTATION_OVERLAP_SECONDS)

        def work(connection: Connection) -> None:
            receipt_queries.retire_key(connection, old_key.key_id, retired_at)
            _publish(connection, new_key, now)

        try:
            await transaction(runtime.engine, work)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            raise
        runtime.signer = new_key
        try:
            os.replace(staged, path)
        except OSError:
            # Published and in use: only the file is behind. Say where the key is.
            log.exception("could not move the new signing key %s into %s", staged, path)
    log.info("signing key rotated: %s retired, %s current", old_key.key_id, new_key.key_id)
    return PublicKey.of(new_key, COORDINATOR_OWNER, now)


async def rotate_offline(runtime: Runtime) -> tuple[str, PublicKey]:
    """Rotate the key of a coordinator that is not running (``aitbc keys rotate
    --offline``): the key file and the database are changed directly."""
    old_key, _ = load_or_create_key(runtime.settings, runtime.random_bytes)
    runtime.signer = old_key
    now = runtime.clock()
    # The old key may never have been published if the coordinator never started.
    await transaction(runtime.engine, _publish_if_unknown, old_key, now)
    return old_key.key_id, await rotate(runtime)


def _publish_if_unknown(connection: Connection, key: SigningKey, now: datetime) -> None:
    if receipt_queries.key_by_id(connection, key.key_id) is None:
        _publish(connection, key, now)


async def published(runtime: Runtime, owner: str | None = None) -> dict[str, Any]:
    """The ``GET /v1/keys`` document: coordinator keys, or one owner's keys."""
    rows = await read(runtime.engine, receipt_queries.keys_of, owner or COORDINATOR_OWNER)
    return KeyRing(_record(row) for row in rows).to_document()


def parse_public_key(text: str) -> bytes:
    """A registration's ``public_key`` (base64url raw 32 bytes) as raw bytes; 422 if not."""
    try:
        return check_public_key(b64url_decode(text, PUBLIC_KEY_BYTES, "public key"))
    except VerificationFailed as exc:
        raise VerificationFailed(exc.detail, error_code="invalid_public_key") from exc


def register_miner_key(
    connection: Connection, miner_id: str, public_key: bytes, now: datetime
) -> bool:
    """Make ``public_key`` the miner's current key, retiring its previous one.

    Returns False when it already was the current key (nothing changed).
    """
    key_id = key_id_for(public_key)
    row = receipt_queries.key_by_id(connection, key_id)
    if row is not None:
        if row.owner != miner_id:
            raise Conflict(
                "this public key is already registered to someone else",
                error_code="key_in_use",
            )
        if row.status != "current":
            raise Conflict(
                f"key {key_id} was retired; register a new key", error_code="key_retired"
            )
        return False
    receipt_queries.retire_keys(connection, miner_id, now)
    receipt_queries.insert_key(
        connection,
        key_id=key_id,
        owner=miner_id,
        public_key=PublicKey(key_id, public_key, miner_id).to_document()["public_key"],
        valid_from=now,
    )
    return True


def _current_keys(connection: Connection, miner_id: str) -> KeyRing:
    return KeyRing(
        _record(row)
        for row in receipt_queries.keys_of(connection, miner_id)
        if row.status == "current"
    )


async def miner_keys(runtime: Runtime, miner_id: str, *, fresh: bool = False) -> KeyRing:
    """The miner's current public keys (cached for a few seconds unless ``fresh``)."""
    now = time.monotonic()
    cached = runtime.miner_keys_cache.get(miner_id)
    if not fresh and cached is not None and now - cached[1] < MINER_KEYS_CACHE_SECONDS:
        return cached[0]
    keys = await read(runtime.engine, _current_keys, miner_id)
    runtime.miner_keys_cache[miner_id] = (keys, now)
    return keys
