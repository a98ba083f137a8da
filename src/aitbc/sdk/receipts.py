"""Verify receipts offline, against keys the verifier pinned beforehand.

A verifier trusts keys it pinned (a key file, or keys fetched once from a
coordinator and stored), never a key that arrives with the receipt: the server that
hands over a receipt is not asked whether it is genuine.

    keys = load_keyring(default_keyring_path())        # or fetch_keys(url) once
    verified = verify_receipt(receipt_bytes, keys, result=downloaded_text)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aitbc.domain import receipts
from aitbc.domain.canonical import parse_json_object
from aitbc.domain.signing import (
    COORDINATOR_OWNER,
    PUBLIC_KEY_BYTES,
    KeyRing,
    PublicKey,
    b64url_decode,
    key_id_for,
)
from aitbc.errors import VerificationFailed

KEYRING_ENV = "AITBC_KEYRING"
HTTP_TIMEOUT_SECONDS = 30.0


def default_keyring_path() -> Path:
    """Where pinned keys live: ``$AITBC_KEYRING``, else ``$XDG_CONFIG_HOME/aitbc/keys.json``
    (``~/.config/aitbc/keys.json``)."""
    configured = os.environ.get(KEYRING_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aitbc" / "keys.json"


def load_receipt(data: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """A receipt from JSON text (strictly parsed) or an already-parsed object."""
    if isinstance(data, Mapping):
        return dict(data)
    return parse_json_object(data)


def verify_receipt(
    receipt: bytes | str | Mapping[str, Any],
    keys: KeyRing,
    *,
    miner_keys: KeyRing | None = None,
    result: str | bytes | None = None,
    prompt: str | bytes | None = None,
) -> receipts.VerifiedReceipt:
    """Check a receipt (JSON text or object) against pinned coordinator ``keys``.

    Raises :class:`aitbc.errors.VerificationFailed` whose ``error_code`` names the
    reason (``bad_signature``, ``unknown_key``, ``malformed_signature``,
    ``not_canonical``, ``duplicate_member``, ``price_mismatch``, ``key_not_valid``,
    ``result_hash_mismatch`` ...). ``miner_keys`` also checks the miner's signature;
    ``result`` / ``prompt`` check the hashes of a downloaded result and of the prompt.
    """
    document = load_receipt(receipt)
    return receipts.verify_receipt(
        document, keys, miner_keys=miner_keys, result=result, prompt=prompt
    )


def fetch_keys(
    url: str, *, owner: str | None = None, client: httpx.Client | None = None
) -> KeyRing:
    """The keys a coordinator publishes at ``GET /v1/keys`` (pin them; do not refetch
    them for every receipt, or the server vouches for itself)."""
    params = {"owner": owner} if owner else None
    endpoint = url.rstrip("/") + "/v1/keys"
    if client is None:
        response = httpx.get(endpoint, params=params, timeout=HTTP_TIMEOUT_SECONDS)
    else:
        response = client.get(endpoint, params=params)
    response.raise_for_status()
    return KeyRing.from_document(parse_json_object(response.content))


def _key_from_text(text: str) -> PublicKey:
    """A single coordinator key: a PEM public key, or its raw bytes as base64url."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_public_key(stripped.encode())
        except ValueError as exc:
            raise VerificationFailed(
                f"not a PEM public key: {exc}", error_code="malformed_key"
            ) from exc
        if not isinstance(loaded, Ed25519PublicKey):
            raise VerificationFailed("the PEM key is not Ed25519", error_code="malformed_key")
        raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = b64url_decode(stripped, PUBLIC_KEY_BYTES, "public key")
    return PublicKey(key_id_for(raw), raw, COORDINATOR_OWNER)


def load_keyring(path: Path) -> KeyRing:
    """Pinned keys from a file: a ``GET /v1/keys`` document (what ``aitbc keys pin``
    stores), a PEM public key, or a raw public key in base64url."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationFailed(f"{path} is not UTF-8 text", error_code="malformed_key") from exc
    if text.lstrip().startswith("{"):
        try:
            return KeyRing.from_document(parse_json_object(text))
        except VerificationFailed as exc:
            raise VerificationFailed(f"{path}: {exc.detail}", error_code="malformed_key") from exc
    return KeyRing([_key_from_text(text)])


def save_keyring(path: Path, keys: KeyRing) -> None:
    """Write ``keys`` as a ``GET /v1/keys`` document (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(keys.to_document(), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def pin_keys(url: str, path: Path, *, owner: str | None = None) -> tuple[KeyRing, list[str]]:
    """Fetch a coordinator's keys (or one miner's) and add them to the keyring at
    ``path``; returns the keyring and the ids that were new."""
    keyring = load_keyring(path) if path.exists() else KeyRing()
    fetched = fetch_keys(url, owner=owner)
    added = [key.key_id for key in fetched if keyring.get(key.key_id) is None]
    for key in fetched:
        keyring.add(key)
    save_keyring(path, keyring)
    return keyring, added
