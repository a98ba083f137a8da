"""Ed25519 keys and signature objects (DESIGN.md section 3).

A signature object is ``{"alg": "ed25519", "key_id": <16 hex>, "sig": <base64url>}``
over the canonical bytes of the signed object without its ``signature`` member.
``key_id`` is the first 16 hex digits of SHA-256 of the raw 32-byte public key.
Keys are made from seeds the caller supplies (randomness is passed in), and key
records carry the period in which a key was allowed to sign, so a retired key
cannot vouch for anything dated after its retirement.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from aitbc.errors import VerificationFailed

ALGORITHM = "ed25519"
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
KEY_ID_HEX_DIGITS = 16
COORDINATOR_OWNER = "coordinator"
SIGNATURE_MEMBERS = ("alg", "key_id", "sig")
KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")

KeyStatus = Literal["current", "retired"]


def b64url_encode(raw: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: Any, expected_bytes: int, what: str) -> bytes:
    """Strict base64url (no padding, canonical trailing bits) of exactly
    ``expected_bytes``; ``malformed_<what>`` otherwise."""
    code = f"malformed_{what.replace(' ', '_')}"
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise VerificationFailed(f"{what} is not unpadded base64url text", error_code=code)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise VerificationFailed(f"{what} is not valid base64url", error_code=code) from exc
    if len(raw) != expected_bytes:
        raise VerificationFailed(
            f"{what} is {len(raw)} bytes, expected {expected_bytes}", error_code=code
        )
    # One byte string has one encoding: refuse non-zero padding bits.
    if b64url_encode(raw) != text:
        raise VerificationFailed(f"{what} is not canonical base64url", error_code=code)
    return raw


def check_public_key(raw: bytes, what: str = "public key") -> bytes:
    """``raw`` if it is a canonical Ed25519 point of prime order; ``weak_key`` otherwise.

    A small-order key (the identity point, for one) has signatures that verify for
    every message, and OpenSSL's verify does not refuse it: such a key would let a
    miner sign everything and nothing. libsodium's point check refuses it.
    """
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    if len(raw) != PUBLIC_KEY_BYTES or not crypto_core_ed25519_is_valid_point(raw):
        raise VerificationFailed(
            f"{what} is not a valid Ed25519 key (small-order or not a curve point)",
            error_code="weak_key",
        )
    return raw


def key_id_for(public_key: bytes) -> str:
    """The first 16 hex digits of SHA-256 of the raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_HEX_DIGITS]


class SigningKey:
    """An Ed25519 private key with its public half and key id."""

    __slots__ = ("_private", "key_id", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id_for(self.public_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose RFC 8032 private key (seed) is these 32 bytes."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Load a PKCS#8 PEM private key (what :meth:`to_pem` writes)."""
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("the key file does not hold an Ed25519 private key")
        return cls(private)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted: the file holding it must be private (0600)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_key_b64(self) -> str:
        """The raw public key as base64url, as ``GET /v1/keys`` publishes it."""
        return b64url_encode(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._private.sign(data)

    def signature_object(self, data: bytes) -> dict[str, str]:
        """``{"alg", "key_id", "sig"}`` over ``data`` (already canonical bytes)."""
        return {"alg": ALGORITHM, "key_id": self.key_id, "sig": b64url_encode(self.sign(data))}


def read_signature_object(value: Any, what: str = "signature") -> tuple[str, bytes]:
    """``(key_id, 64 signature bytes)`` of a signature object, or a specific reason."""
    code = f"malformed_{what}"
    if not isinstance(value, Mapping):
        raise VerificationFailed(f"{what} is not an object", error_code=code)
    missing = [name for name in SIGNATURE_MEMBERS if name not in value]
    if missing:
        raise VerificationFailed(f"{what} lacks {', '.join(missing)}", error_code=code)
    # Exactly these members: anything else would change the receipt's hash (its
    # ledger reference) without touching what the signature covers.
    extra = sorted(str(name) for name in value if name not in SIGNATURE_MEMBERS)
    if extra:
        raise VerificationFailed(f"{what} has unknown members {extra}", error_code=code)
    if value["alg"] != ALGORITHM:
        raise VerificationFailed(
            f"{what} algorithm {value['alg']!r} is not supported (only {ALGORITHM})",
            error_code="unsupported_algorithm",
        )
    key_id = value["key_id"]
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise VerificationFailed(f"{what} key_id is not 16 lowercase hex digits", error_code=code)
    signature = b64url_decode(value["sig"], SIGNATURE_BYTES, what)
    return key_id, signature


def _unix_floor(moment: datetime) -> int:
    return math.floor(moment.timestamp())


def _unix_ceil(moment: datetime) -> int:
    return math.ceil(moment.timestamp())


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A published public key: whose it is, and when it was allowed to sign."""

    key_id: str
    public_key: bytes
    owner: str
    status: KeyStatus = "current"
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    @classmethod
    def of(cls, key: SigningKey, owner: str, valid_from: datetime | None = None) -> PublicKey:
        """The current public record of ``key``."""
        return cls(key.key_id, key.public_key, owner, "current", valid_from, None)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def allows(self, unix_seconds: int) -> bool:
        """Whether the key was valid at that time (whole seconds, inclusive)."""
        if self.status == "retired" and self.valid_until is None:
            return False  # a retired key with no end date vouches for nothing
        if self.valid_from is not None and unix_seconds < _unix_floor(self.valid_from):
            return False
        return self.valid_until is None or unix_seconds <= _unix_ceil(self.valid_until)

    def to_document(self) -> dict[str, Any]:
        """The ``GET /v1/keys`` entry."""
        return {
            "key_id": self.key_id,
            "alg": ALGORITHM,
            "public_key": b64url_encode(self.public_key),
            "owner": self.owner,
            "status": self.status,
            "valid_from": _iso(self.valid_from),
            "valid_until": _iso(self.valid_until),
        }

    @classmethod
    def from_document(cls, entry: Any) -> PublicKey:
        """Read one ``GET /v1/keys`` entry, checking that its key_id matches its key."""
        if not isinstance(entry, Mapping):
            raise VerificationFailed("key entry is not an object", error_code="malformed_key")
        if entry.get("alg", ALGORITHM) != ALGORITHM:
            raise VerificationFailed(
                f"key algorithm {entry.get('alg')!r} is not supported",
                error_code="unsupported_algorithm",
            )
        raw = check_public_key(
            b64url_decode(entry.get("public_key"), PUBLIC_KEY_BYTES, "public key")
        )
        key_id = key_id_for(raw)
        if entry.get("key_id", key_id) != key_id:
            raise VerificationFailed(
                f"key_id {entry.get('key_id')!r} does not match its public key ({key_id})",
                error_code="malformed_key",
            )
        status = entry.get("status", "current")
        if status not in ("current", "retired"):
            raise VerificationFailed(f"unknown key status {status!r}", error_code="malformed_key")
        owner = entry.get("owner", COORDINATOR_OWNER)
        if not isinstance(owner, str):
            raise VerificationFailed("key owner is not text", error_code="malformed_key")
        return cls(
            key_id,
            raw,
            owner,
            status,
            _parse_time(entry.get("valid_from")),
            _parse_time(entry.get("valid_until")),
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise VerificationFailed(
                f"key date {value!r} has no time zone", error_code="malformed_key"
            )
        # Dates a UTC clock cannot show (year 0 or 10000 once shifted) are refused.
        return moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise VerificationFailed(f"bad key date {value!r}", error_code="malformed_key") from exc


class KeyRing:
    """Keys a verifier trusts, by key id: pinned from a file or fetched once."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: PublicKey) -> None:
        """Trust ``key`` (a later record of the same key id replaces the earlier one)."""
        self._keys[key.key_id] = key

    def get(self, key_id: str) -> PublicKey | None:
        """The key with this id, or None."""
        return self._keys.get(key_id)

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def owned_by(self, owner: str) -> KeyRing:
        """The keys of one owner."""
        return KeyRing(key for key in self if key.owner == owner)

    @classmethod
    def from_document(cls, document: Any) -> KeyRing:
        """Keys from a ``GET /v1/keys`` document (``{"keys": [...]}``) or its list."""
        entries = document.get("keys") if isinstance(document, Mapping) else document
        if not isinstance(entries, list):
            raise VerificationFailed("key document has no 'keys' list", error_code="malformed_key")
        return cls(PublicKey.from_document(entry) for entry in entries)

    def to_document(self) -> dict[str, Any]:
        """The ``GET /v1/keys`` document of these keys."""
        return {"keys": [key.to_document() for key in self]}
