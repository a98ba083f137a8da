"""Signing keys: the coordinator's own (load, first-start generation, rotation), the
keys miners register, and the public list ``GET /v1/keys`` serves.

The private key lives in a file (mode 0600); the database holds every public key
with the period it could sign in, so receipts signed by a retired key stay
verifiable and several coordinators sharing one database publish each other's keys.
Rotation swaps the in-memory key at the same instant it dates the old key's
retirement, and a completion samples the clock and the key together, so every
receipt's ``completed_at`` lies inside its key's published period.

Coordinators that share the database and the key file follow a rotation made by
any of them: every ``KEY_FOLLOW_SECONDS`` each reads which coordinator keys are
current (:func:`follow_rotation`), and when its own key was retired it loads the
key file again and signs with that key, but only if it is published as current
(the rotating process writes the file before it publishes). A process that cannot
get the current key (its key file is not the shared one) says so in its log at
every change, keeps signing with the retired key while it is still valid (the
``ROTATION_OVERLAP_SECONDS`` after the rotation) and then refuses completions with
503 ``signing_key_retired`` rather than issue receipts nobody can verify, until its
key file holds the current key (it is picked up at the next check) or it is
restarted with one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Sequence
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
# How often a coordinator checks whether another one sharing the database rotated
# the key: well inside the overlap, so every process switches before it ends.
KEY_FOLLOW_SECONDS = 2.0


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


def _read_private(path: Path) -> SigningKey:
    """The private key in ``path``; :class:`InvalidRequest` if it holds none."""
    try:
        return SigningKey.from_pem(path.read_bytes())
    except (ValueError, TypeError, OSError) as exc:  # not a key, encrypted, unreadable
        raise InvalidRequest(
            f"{path} does not hold an unencrypted Ed25519 private key: {exc}",
            error_code="bad_signing_key_file",
        ) from exc


def load_or_create_key(settings: Settings, random_bytes: RandomBytes) -> tuple[SigningKey, bool]:
    """The coordinator's private key from its file, generated there if missing.

    Returns the key and whether it was just created.
    """
    path = settings.resolved_signing_key_file()
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("signing key %s is readable by others (mode %o); chmod 600 it", path, mode)
        return _read_private(path), False
    if settings.signing_key_file is not None:
        # A configured key is loaded, never invented: a typo must not mint a new key.
        raise InvalidRequest(
            f"the configured signing key file {path} does not exist",
            error_code="signing_key_file_missing",
        )
    key = SigningKey.from_seed(random_bytes(32))
    _write_private(path, key)
    return key, True


def record_of(row: Row[Any]) -> PublicKey:
    """A stored public key as the domain reads it (owner, bytes, validity period)."""
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
        # The key in memory even if it may no longer sign: rotating is the way out.
        old_key = runtime.signer
        if old_key is None:
            raise RuntimeError("the coordinator's signing key is not loaded yet")
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
        runtime.signer_valid_until = None
        try:
            os.replace(staged, path)
        except OSError:
            # Published and in use: only the file is behind. Say where the key is.
            log.exception("could not move the new signing key %s into %s", staged, path)
    log.info("signing key rotated: %s retired, %s current", old_key.key_id, new_key.key_id)
    return PublicKey.of(new_key, COORDINATOR_OWNER, now)


async def follow_rotation(runtime: Runtime) -> str | None:
    """Switch to the key file's key if another coordinator rotated ours away.

    Returns None when this process signs with a current key (now or already), else
    what keeps it from doing so, for the log. The retired key's end of validity is
    recorded on the runtime, which refuses to sign with it after that.
    """
    async with runtime.rotation_lock:
        signer = runtime.signer
        if signer is None:
            return None  # not started yet
        rows = await read(runtime.engine, receipt_queries.keys_of, COORDINATOR_OWNER)
        published = {row.key_id: row for row in rows}
        own = published.get(signer.key_id)
        if own is not None and own.status == "current":
            runtime.signer_valid_until = None
            return None
        # Retired (or, oddly, unpublished: then it may not sign at all).
        until = own.valid_until if own is not None else None
        runtime.signer_valid_until = until or runtime.clock()
        path = runtime.settings.resolved_signing_key_file()
        try:
            candidate = _read_private(path)
        except InvalidRequest as exc:
            return _stuck(signer.key_id, until, exc.detail)
        row = published.get(candidate.key_id)
        if row is None or row.status != "current" or row.public_key != candidate.public_key_b64:
            current = ", ".join(key for key, r in published.items() if r.status == "current")
            return _stuck(
                signer.key_id,
                until,
                f"the key file {path} holds {candidate.key_id}, not a current key "
                f"(current: {current or 'none'}); give this coordinator the key file the "
                "others use (AITBC_SIGNING_KEY_FILE)",
            )
        runtime.signer = candidate
        runtime.signer_valid_until = None
    log.warning(
        "signing key %s was rotated by another coordinator; now signing with %s",
        signer.key_id,
        candidate.key_id,
    )
    return None


def _stuck(key_id: str, until: datetime | None, reason: str) -> str:
    ends = f"until {until:%Y-%m-%dT%H:%M:%SZ}" if until is not None else "no longer"
    return (
        f"signing key {key_id} was retired and may sign {ends}, then receipts are refused "
        f"(503): {reason}"
    )


async def follow_forever(runtime: Runtime) -> None:
    """Run :func:`follow_rotation` every ``KEY_FOLLOW_SECONDS`` until cancelled.

    A problem is logged as an error when it first appears and again whenever it
    changes, once seen twice in a row: a file that lags its publication for an
    instant (the rotating process moves it into place just after) is not reported.
    """
    previous: str | None = None
    reported: str | None = None
    while True:
        await asyncio.sleep(KEY_FOLLOW_SECONDS)
        try:
            problem = await follow_rotation(runtime)
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup must not end the check
            log.exception("signing key check failed; retrying in %.1f s", KEY_FOLLOW_SECONDS)
            continue
        if problem is not None and problem == previous and problem != reported:
            log.error("%s", problem)
            reported = problem
        if problem is None:
            reported = None
        previous = problem


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


async def published(runtime: Runtime, owner: str | Sequence[str] | None = None) -> dict[str, Any]:
    """The ``GET /v1/keys`` document: coordinator keys, or the keys of one owner (or
    of several, oldest first)."""
    owners = [owner or COORDINATOR_OWNER] if owner is None or isinstance(owner, str) else owner
    rows = await read(runtime.engine, receipt_queries.keys_of_owners, owners)
    return KeyRing(record_of(row) for row in rows).to_document()


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
        record_of(row)
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
