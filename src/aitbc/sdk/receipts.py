"""Verify receipts offline, against keys the verifier pinned beforehand, and their
place in the ledger: offline from a bundle, or online from the public explorer.

A verifier trusts keys it pinned (a key file, or keys fetched once from a
coordinator and stored), never a key that arrives with the receipt: the server that
hands over a receipt is not asked whether it is genuine.

    keys = load_keyring(default_keyring_path())        # or fetch_keys(url) once
    verified = verify_receipt(receipt_bytes, keys, result=downloaded_text)
    included = verify_bundle(bundle_bytes, keys)        # GET /v1/receipts/{id}/bundle
    included = verify_inclusion(verified.receipt, keys, url)   # or fetched online

A **bundle** is ``{"receipt", "transaction", "proof", "block": {"header",
"signature"}}``: the signed receipt, the ``receipt`` transaction anchoring it, that
transaction's inclusion proof, and the signed header of its block. It checks out
when the receipt's signature does, the block's signature is a pinned coordinator
key's (valid at the block's timestamp), the transaction is a ``receipt``
transaction whose ``ref`` is the SHA-256 of the receipt's canonical bytes and whose
``receipt_id`` is the receipt's, its id (recomputed) is the proof's ``tx_id``, and
the proof leads to the header's ``tx_root`` (RFC 9162).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aitbc.domain import receipts
from aitbc.domain.canonical import canonical_bytes, parse_json_object, sha256_hex
from aitbc.domain.ledger import (
    Transaction,
    TxType,
    block_hash,
    check_transaction_rules,
    verify_block_signature,
    verify_inclusion_proof,
)
from aitbc.domain.signing import (
    COORDINATOR_OWNER,
    PUBLIC_KEY_BYTES,
    KeyRing,
    PublicKey,
    b64url_decode,
    key_id_for,
)
from aitbc.errors import AITBCError, VerificationFailed

KEYRING_ENV = "AITBC_KEYRING"
HTTP_TIMEOUT_SECONDS = 30.0
BUNDLE_MEMBERS = ("receipt", "transaction", "proof", "block")


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


# --- the ledger: bundles and inclusion --------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedInclusion:
    """A receipt verified, and the sealed block that holds its receipt transaction."""

    receipt: receipts.VerifiedReceipt
    tx_id: str
    block_height: int
    block_hash: str
    leaf_index: int
    tree_size: int
    sealer: str


class InclusionUnavailable(AITBCError):
    """The explorer has no proof for the receipt (yet): ``error_code`` is its answer,
    ``not_sealed`` while the receipt's block is not sealed, ``not_anchored`` for a
    receipt the ledger does not record (issued before it), ``receipt_not_found``."""

    error_code = "inclusion_unavailable"


def is_bundle(document: Mapping[str, Any]) -> bool:
    """Whether a parsed document is a bundle rather than a receipt."""
    return "receipt_id" not in document and "receipt" in document and "proof" in document


def _member(document: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in document:
        raise VerificationFailed(f"{what} lacks {name}", error_code="malformed_bundle")
    return document[name]


def check_inclusion(
    receipt: Mapping[str, Any],
    transaction: Any,
    proof: Any,
    block: Any,
    keys: KeyRing,
) -> tuple[Transaction, Mapping[str, Any]]:
    """That ``transaction`` anchors ``receipt`` and is in the block whose signed
    header ``block`` (``{"header", "signature"}``) is, by ``proof`` (module
    docstring). Returns the transaction and the header; :class:`VerificationFailed`
    otherwise (``malformed_bundle``, a block signature's reason, ``anchor_mismatch``,
    ``receipt_hash_mismatch``, ``transaction_after_block``, ``proof_mismatch``,
    ``bad_proof`` ...). Check the receipt's own signature first."""
    if not isinstance(block, Mapping):
        raise VerificationFailed(
            "the bundle's block is not an object", error_code="malformed_bundle"
        )
    header = _member(block, "header", "the bundle's block")
    verify_block_signature(header, _member(block, "signature", "the bundle's block"), keys)
    tx = Transaction.parse(transaction)
    if tx.tx_type is not TxType.RECEIPT:
        raise VerificationFailed(
            f"transaction {tx.id} is a {tx.tx_type.value}, not a receipt transaction",
            error_code="anchor_mismatch",
        )
    check_transaction_rules(tx)
    digest = sha256_hex(canonical_bytes(receipt))
    if tx.ref != digest:
        raise VerificationFailed(
            f"transaction {tx.id} anchors {tx.ref}, but the receipt hashes to {digest}",
            error_code="receipt_hash_mismatch",
        )
    if tx.receipt_id != receipt.get("receipt_id"):
        raise VerificationFailed(
            f"transaction {tx.id} names receipt {tx.receipt_id}, not {receipt.get('receipt_id')}",
            error_code="anchor_mismatch",
        )
    if tx.timestamp > header["timestamp"]:
        raise VerificationFailed(
            f"transaction {tx.id} is dated after block {header['height']}",
            error_code="transaction_after_block",
        )
    verify_inclusion_proof(proof, header)
    if proof["tx_id"] != tx.id:
        raise VerificationFailed(
            f"the proof is of transaction {proof['tx_id']}, not of the anchor {tx.id}",
            error_code="proof_mismatch",
        )
    return tx, header


def verify_bundle(
    bundle: bytes | str | Mapping[str, Any],
    keys: KeyRing,
    *,
    miner_keys: KeyRing | None = None,
    result: str | bytes | None = None,
    prompt: str | bytes | None = None,
) -> VerifiedInclusion:
    """Check a bundle (JSON text or object) offline against pinned coordinator
    ``keys``: the receipt as :func:`verify_receipt` does, then its inclusion
    (:func:`check_inclusion`)."""
    document = load_receipt(bundle)
    receipt = _member(document, "receipt", "the bundle")
    if not isinstance(receipt, Mapping):
        raise VerificationFailed(
            "the bundle's receipt is not an object", error_code="malformed_bundle"
        )
    verified = verify_receipt(receipt, keys, miner_keys=miner_keys, result=result, prompt=prompt)
    if "transaction" not in document:
        raise VerificationFailed(
            "the bundle has no anchor transaction: its proof cannot be tied to the receipt",
            error_code="malformed_bundle",
        )
    proof = _member(document, "proof", "the bundle")
    tx, header = check_inclusion(
        receipt, document["transaction"], proof, _member(document, "block", "the bundle"), keys
    )
    return VerifiedInclusion(
        verified,
        tx.id,
        int(header["height"]),
        block_hash(header),
        int(proof["leaf_index"]),
        int(proof["tree_size"]),
        str(header["sealer"]),
    )


def _explorer_json(client: httpx.Client, path: str, accept: tuple[int, ...] = ()) -> Any:
    response = client.get(path)
    if response.status_code in accept:
        try:
            body = response.json()
            code, detail = str(body.get("error_code")), str(body.get("detail"))
        except (ValueError, AttributeError):
            code, detail = f"http_{response.status_code}", response.text[:200]
        raise InclusionUnavailable(detail, error_code=code)
    response.raise_for_status()
    return parse_json_object(response.content)


def fetch_bundle(
    url: str, receipt_id: str, *, client: httpx.Client | None = None
) -> dict[str, Any]:
    """A bundle for ``receipt_id`` built from the public explorer alone
    (``…/receipts/{id}/proof``, ``…/transactions/{tx_id}``, ``…/blocks/{height}``):
    nothing in it is trusted until :func:`verify_bundle` checked it.
    :class:`InclusionUnavailable` when there is no proof (yet); ``httpx`` errors
    when the explorer cannot be reached."""
    own = client is None
    http = client or httpx.Client(base_url=url.rstrip("/"), timeout=HTTP_TIMEOUT_SECONDS)
    try:
        quoted = urllib.parse.quote(receipt_id, safe="")
        served = _explorer_json(http, f"/v1/explorer/receipts/{quoted}/proof", (404, 409))
        proof = served.get("proof")
        if not isinstance(proof, Mapping) or not isinstance(proof.get("tx_id"), str):
            raise VerificationFailed(
                "the explorer's proof is malformed", error_code="malformed_proof"
            )
        record = _explorer_json(http, f"/v1/explorer/transactions/{proof['tx_id']}")
        height = proof.get("block_height")
        if type(height) is not int:
            raise VerificationFailed(
                "the explorer's proof has no block height", error_code="malformed_proof"
            )
        block = _explorer_json(http, f"/v1/explorer/blocks/{height}")
    finally:
        if own:
            http.close()
    return {
        "receipt": served.get("receipt"),
        "transaction": record.get("transaction"),
        "proof": proof,
        "block": {"header": block.get("header"), "signature": block.get("signature")},
    }


def verify_inclusion(
    receipt: Mapping[str, Any],
    keys: KeyRing,
    url: str,
    *,
    client: httpx.Client | None = None,
) -> VerifiedInclusion:
    """That an already verified ``receipt`` is in a sealed block, checked against
    pinned ``keys`` with what the explorer at ``url`` serves (:func:`fetch_bundle`).
    ``receipt_hash_mismatch`` when the coordinator anchors another receipt under
    this id; :class:`InclusionUnavailable` when it anchors none (yet)."""
    receipt_id = receipt.get("receipt_id")
    if not isinstance(receipt_id, str):
        raise VerificationFailed("receipt has no receipt_id", error_code="missing_field")
    bundle = fetch_bundle(url, receipt_id, client=client)
    served = bundle["receipt"]
    if not isinstance(served, Mapping) or canonical_bytes(served) != canonical_bytes(receipt):
        raise VerificationFailed(
            f"the coordinator anchors another receipt under the id {receipt_id}",
            error_code="receipt_hash_mismatch",
        )
    bundle["receipt"] = receipt
    return verify_bundle(bundle, keys)
