"""Receipts: what a completed job cost, who ran it for whom, signed (DESIGN.md section 3).

A receipt holds the seed's fields (``receipt_id, job_id, provider, client, units,
unit_type, price, model, started_at, completed_at``) plus what an offline verifier
needs: ``unit_price``, ``usage``, ``input_hash`` and ``result_hash``, the miner's
signature over the result when the miner registered a key, and last the
coordinator's ``signature`` over the canonical bytes of everything else.

``price`` = ``units`` x ``unit_price`` / 1000, computed in integer micro-AIT and
rounded half up (``aitbc.domain.money``). Verification recomputes it, so a receipt
whose arithmetic is wrong is refused even when its signature is good.

Pure: keys, times and ids come in as arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aitbc.domain.canonical import (
    MAX_SAFE_INTEGER,
    FixedShapeEncoder,
    canonical_bytes,
    sha256_hex,
)
from aitbc.domain.money import MAX_SUPPLY_MICRO, price_for_units, to_ait, to_micro
from aitbc.domain.signing import (
    COORDINATOR_OWNER,
    KeyRing,
    PublicKey,
    SigningKey,
    read_signature_object,
)
from aitbc.errors import ValidationFailed, VerificationFailed

UNIT_TYPE_TOKENS = "tokens"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# Members a receipt may carry, and those every receipt has.
RECEIPT_MEMBERS = (
    "receipt_id",
    "job_id",
    "provider",
    "client",
    "units",
    "unit_type",
    "price",
    "unit_price",
    "model",
    "started_at",
    "completed_at",
    "usage",
    "input_hash",
    "result_hash",
    "miner_signature",
    "signature",
)
REQUIRED_MEMBERS = tuple(
    name for name in RECEIPT_MEMBERS if name not in ("miner_signature", "signature")
)
MINER_STATEMENT_MEMBERS = ("job_id", "provider", "result_hash", "units", "unit_type")

_RECEIPT_ENCODER = FixedShapeEncoder(RECEIPT_MEMBERS)
_STATEMENT_ENCODER = FixedShapeEncoder(MINER_STATEMENT_MEMBERS)


def text_hash(text: str) -> str:
    """SHA-256 hex of the UTF-8 bytes of ``text`` (``input_hash``, ``result_hash``)."""
    return sha256_hex(text.encode("utf-8"))


def miner_statement(
    job_id: str, provider: str, result_hash: str, units: int, unit_type: str = UNIT_TYPE_TOKENS
) -> dict[str, Any]:
    """What a miner signs: the job, itself, the hash of its result and the units."""
    return {
        "job_id": job_id,
        "provider": provider,
        "result_hash": result_hash,
        "units": units,
        "unit_type": unit_type,
    }


def miner_statement_bytes(statement: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a miner statement (what its signature covers)."""
    return _STATEMENT_ENCODER.encode(statement)


def sign_miner_statement(key: SigningKey, statement: Mapping[str, Any]) -> dict[str, str]:
    """The miner's signature object over ``statement``."""
    return key.signature_object(miner_statement_bytes(statement))


def verify_miner_signature(
    statement: Mapping[str, Any], signature: Any, keys: KeyRing, *, at: int | None = None
) -> PublicKey:
    """The miner key that signed ``statement``, or a specific reason it did not."""
    key_id, raw = read_signature_object(signature, "miner_signature")
    key = keys.get(key_id)
    if key is None or key.owner != statement["provider"]:
        raise VerificationFailed(
            f"miner_signature is by key {key_id}, which is not a key of miner "
            f"{statement['provider']}",
            error_code="unknown_miner_key",
        )
    if at is not None and not key.allows(at):
        raise VerificationFailed(
            f"miner key {key_id} was not valid at {at}", error_code="miner_key_not_valid"
        )
    if not key.verify(raw, miner_statement_bytes(statement)):
        raise VerificationFailed(
            "miner_signature does not match the job, provider, result hash and units",
            error_code="bad_miner_signature",
        )
    return key


@dataclass(frozen=True, slots=True)
class ReceiptTerms:
    """The facts of a completed job a receipt records."""

    receipt_id: str
    job_id: str
    provider: str
    client: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    unit_price_micro: int
    started_at: int
    completed_at: int
    input_hash: str
    result_hash: str
    miner_signature: Mapping[str, str] | None = None

    @property
    def units(self) -> int:
        """Tokens metered: prompt and completion together."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def price_micro(self) -> int:
        """What the client pays the miner, in µAIT."""
        return price_for_units(self.units, self.unit_price_micro)


def receipt_body(terms: ReceiptTerms) -> dict[str, Any]:
    """The receipt before signing (every member but ``signature``)."""
    body: dict[str, Any] = {
        "receipt_id": terms.receipt_id,
        "job_id": terms.job_id,
        "provider": terms.provider,
        "client": terms.client,
        "units": terms.units,
        "unit_type": UNIT_TYPE_TOKENS,
        "price": to_ait(terms.price_micro),
        "unit_price": to_ait(terms.unit_price_micro),
        "model": terms.model,
        "started_at": terms.started_at,
        "completed_at": terms.completed_at,
        "usage": {
            "prompt_tokens": terms.prompt_tokens,
            "completion_tokens": terms.completion_tokens,
        },
        "input_hash": terms.input_hash,
        "result_hash": terms.result_hash,
    }
    if terms.miner_signature is not None:
        body["miner_signature"] = dict(terms.miner_signature)
    return body


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A signed receipt as a JSON object and as its canonical bytes (what is stored,
    served, and hashed into the ledger)."""

    document: dict[str, Any]
    canonical: bytes


def sign_receipt(body: Mapping[str, Any], key: SigningKey) -> SignedReceipt:
    """Sign ``body`` with the coordinator's key: signature over its canonical bytes."""
    members = _RECEIPT_ENCODER.members(body)
    signature = key.signature_object(FixedShapeEncoder.join(members))
    members["signature"] = b'"signature":' + canonical_bytes(signature)
    document = dict(body)
    document["signature"] = signature
    return SignedReceipt(document, FixedShapeEncoder.join(members))


def signed_bytes(receipt: Mapping[str, Any]) -> bytes:
    """The canonical bytes a receipt's ``signature`` covers: all but ``signature``."""
    return canonical_bytes({name: value for name, value in receipt.items() if name != "signature"})


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a successful verification established."""

    receipt: Mapping[str, Any]
    key: PublicKey
    miner_key: PublicKey | None
    result_checked: bool


def verify_receipt(
    receipt: Mapping[str, Any],
    keys: KeyRing,
    *,
    miner_keys: KeyRing | None = None,
    result: str | bytes | None = None,
    prompt: str | bytes | None = None,
) -> VerifiedReceipt:
    """Check a receipt against pinned coordinator ``keys``; raise
    :class:`VerificationFailed` with a specific ``error_code`` at the first problem.

    In order: the signature object is well formed; its key is one of ``keys`` and
    a coordinator's; the signature matches the canonical bytes; every member has
    the right type; the key was valid at ``completed_at``; units and price add up;
    then, when given, the miner's signature against ``miner_keys`` and the hashes
    of the downloaded ``result`` and of the ``prompt``.
    """
    if not isinstance(receipt, Mapping):
        raise VerificationFailed("receipt is not a JSON object", error_code="invalid_json")
    if "signature" not in receipt:
        raise VerificationFailed("receipt has no signature", error_code="missing_signature")
    key_id, signature = read_signature_object(receipt["signature"])
    key = keys.get(key_id)
    if key is None:
        raise VerificationFailed(
            f"receipt is signed by key {key_id}, which is not among the pinned keys",
            error_code="unknown_key",
        )
    if key.owner != COORDINATOR_OWNER:
        raise VerificationFailed(
            f"key {key_id} belongs to {key.owner!r}, not to a coordinator",
            error_code="unknown_key",
        )
    if not key.verify(signature, signed_bytes(receipt)):
        raise VerificationFailed(
            f"signature does not match the receipt's canonical bytes under key {key_id} "
            "(a field was changed, or it was signed by another key or over other bytes)",
            error_code="bad_signature",
        )
    _check_members(receipt)
    if not key.allows(receipt["completed_at"]):
        raise VerificationFailed(
            f"key {key_id} was not valid at completed_at={receipt['completed_at']}",
            error_code="key_not_valid",
        )
    _check_arithmetic(receipt)
    miner_key = None
    if miner_keys is not None and "miner_signature" in receipt:
        statement = miner_statement(
            receipt["job_id"],
            receipt["provider"],
            receipt["result_hash"],
            receipt["units"],
            receipt["unit_type"],
        )
        miner_key = verify_miner_signature(
            statement, receipt["miner_signature"], miner_keys, at=receipt["completed_at"]
        )
    if prompt is not None:
        _check_hash(receipt, "input_hash", prompt, "prompt")
    if result is not None:
        _check_hash(receipt, "result_hash", result, "result")
    return VerifiedReceipt(receipt, key, miner_key, result is not None)


def _check_hash(receipt: Mapping[str, Any], member: str, data: str | bytes, what: str) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if sha256_hex(raw) != receipt[member]:
        raise VerificationFailed(
            f"the {what}'s SHA-256 does not equal the receipt's {member}",
            error_code=f"{member.removesuffix('_hash')}_hash_mismatch",
        )


def _invalid(member: str, why: str) -> VerificationFailed:
    return VerificationFailed(f"receipt {member} {why}", error_code="invalid_field")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_members(receipt: Mapping[str, Any]) -> None:
    missing = [name for name in REQUIRED_MEMBERS if name not in receipt]
    if missing:
        raise VerificationFailed(f"receipt lacks {', '.join(missing)}", error_code="missing_field")
    for name in ("receipt_id", "job_id", "provider", "client", "unit_type", "model"):
        if not isinstance(receipt[name], str) or not receipt[name]:
            raise _invalid(name, "is not a non-empty string")
    for name in ("units", "started_at", "completed_at"):
        if not _is_int(receipt[name]) or not 0 <= receipt[name] <= MAX_SAFE_INTEGER:
            raise _invalid(name, "is not a non-negative integer")
    if receipt["started_at"] > receipt["completed_at"]:
        raise _invalid("started_at", "is after completed_at")
    for name in ("input_hash", "result_hash"):
        if not isinstance(receipt[name], str) or not _HEX64.fullmatch(receipt[name]):
            raise _invalid(name, "is not 64 lowercase hex digits")
    usage = receipt["usage"]
    if receipt["unit_type"] == UNIT_TYPE_TOKENS and (
        not isinstance(usage, Mapping)
        or set(usage) != {"prompt_tokens", "completion_tokens"}
        or not all(_is_int(v) and v >= 0 for v in usage.values())
    ):
        raise _invalid("usage", "is not {prompt_tokens, completion_tokens} as integers")


def amount_micro(value: Any, member: str) -> int:
    """An AIT amount read from JSON as µAIT; ``invalid_amount`` if it is not one
    (negative, not a number, more than 6 decimals, beyond total supply)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VerificationFailed(f"receipt {member} is not a number", error_code="invalid_amount")
    try:
        # repr() is the shortest text that reads back as this float: the JSON text.
        micro = to_micro(Decimal(repr(value)) if isinstance(value, float) else value)
    except ValidationFailed as exc:
        raise VerificationFailed(
            f"receipt {member} is not an AIT amount: {exc.detail}", error_code="invalid_amount"
        ) from exc
    if micro > MAX_SUPPLY_MICRO:
        raise VerificationFailed(
            f"receipt {member} exceeds total supply", error_code="invalid_amount"
        )
    return micro


def _check_arithmetic(receipt: Mapping[str, Any]) -> None:
    units = receipt["units"]
    if receipt["unit_type"] == UNIT_TYPE_TOKENS:
        usage = receipt["usage"]
        if units != usage["prompt_tokens"] + usage["completion_tokens"]:
            raise VerificationFailed(
                "units do not equal prompt_tokens + completion_tokens",
                error_code="units_mismatch",
            )
    unit_price = amount_micro(receipt["unit_price"], "unit_price")
    price = amount_micro(receipt["price"], "price")
    expected = price_for_units(units, unit_price)
    if price != expected:
        raise VerificationFailed(
            f"price {to_ait(price)} is not units x unit_price / 1000 = {to_ait(expected)}",
            error_code="price_mismatch",
        )
