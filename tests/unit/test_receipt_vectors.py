"""The committed receipt test vectors (``tests/vectors/receipt_v1.json``).

The file is written once by ``tests/vectors/make_receipt_vectors.py`` and never
regenerated here: these tests check that the code still produces those exact bytes,
and that an independent implementation (``rfc8785`` for JCS, PyNaCl/libsodium for
Ed25519) agrees with them, so a change of canonical form or signature scheme cannot
pass unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import pytest
import rfc8785

from aitbc.domain.canonical import parse_json_object, sha256_hex
from aitbc.domain.money import price_for_units, to_ait
from aitbc.domain.receipts import (
    ReceiptTerms,
    miner_statement,
    miner_statement_bytes,
    receipt_body,
    sign_miner_statement,
    sign_receipt,
    text_hash,
    verify_receipt,
)
from aitbc.domain.signing import KeyRing, SigningKey, b64url_decode, key_id_for
from aitbc.errors import VerificationFailed

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "receipt_v1.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
RECEIPTS: list[dict[str, Any]] = VECTORS["receipts"]
NEGATIVE: list[dict[str, Any]] = VECTORS["negative"]
KEYS: dict[str, dict[str, str]] = VECTORS["keys"]
RFC8032_TEST1_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def _raw(b64url: str) -> bytes:
    return base64.urlsafe_b64decode(b64url + "=" * (-len(b64url) % 4))


def _signing_key(name: str) -> SigningKey:
    return SigningKey.from_seed(bytes.fromhex(KEYS[name]["seed_hex"]))


def _ring(name: str) -> KeyRing:
    return KeyRing.from_document(VECTORS["keys_documents"][name])


def _by_name(cases: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[case["name"] for case in cases])


def _without_signature(receipt: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in receipt.items() if name != "signature"}


# --- keys -------------------------------------------------------------------------------


def test_file_shape() -> None:
    assert VECTORS["version"] == 1
    assert len(RECEIPTS) >= 4
    assert len(NEGATIVE) >= 20
    names = [case["name"] for case in RECEIPTS + NEGATIVE]
    assert len(names) == len(set(names))


def test_coordinator_key_is_rfc8032_test_1() -> None:
    """The coordinator seed is RFC 8032 7.1 TEST 1: its public key is known from the RFC."""
    assert _raw(KEYS["coordinator"]["public_key"]).hex() == RFC8032_TEST1_PUBLIC


@pytest.mark.parametrize("name", ["coordinator", "retired", "miner", "stranger"])
def test_key_entries(name: str) -> None:
    entry = KEYS[name]
    seed = bytes.fromhex(entry["seed_hex"])
    ours = SigningKey.from_seed(seed)
    theirs = nacl.signing.SigningKey(seed).verify_key.encode()
    assert ours.public_key == theirs
    assert ours.public_key_b64 == entry["public_key"]
    assert b64url_decode(entry["public_key"], 32, "public key") == theirs
    assert entry["key_id"] == hashlib.sha256(theirs).hexdigest()[:16] == key_id_for(theirs)
    assert ours.key_id == entry["key_id"]


@pytest.mark.parametrize("name", ["coordinator", "miner", "coordinator_and_miner"])
def test_keys_documents_round_trip(name: str) -> None:
    document = VECTORS["keys_documents"][name]
    assert KeyRing.from_document(document).to_document() == document


def test_coordinator_keys_document() -> None:
    """GET /v1/keys: the current key from the rotation, the old one retired at it."""
    ring = _ring("coordinator")
    current = ring.get(KEYS["coordinator"]["key_id"])
    retired = ring.get(KEYS["retired"]["key_id"])
    assert current is not None and retired is not None
    assert (current.owner, current.status, current.valid_until) == ("coordinator", "current", None)
    assert (retired.owner, retired.status) == ("coordinator", "retired")
    assert retired.valid_until == current.valid_from
    entries = VECTORS["keys_documents"]["coordinator"]["keys"]
    assert entries[0]["valid_from"] == "2026-02-13T10:00:00Z"
    assert VECTORS["keys_documents"]["miner"]["keys"][0]["owner"] == KEYS["miner"]["owner"]


# --- good receipts: bytes ---------------------------------------------------------------


def _terms(vector: dict[str, Any]) -> ReceiptTerms:
    miner_signature = None
    if vector["miner_signed"]:
        terms = vector["terms"]
        statement = miner_statement(
            terms["job_id"], terms["provider"], terms["result_hash"], vector["units"]
        )
        miner_signature = sign_miner_statement(_signing_key("miner"), statement)
    return ReceiptTerms(**vector["terms"], miner_signature=miner_signature)


@_by_name(RECEIPTS)
def test_terms_are_consistent(case: dict[str, Any]) -> None:
    terms = _terms(case)
    assert terms.units == case["units"] == case["receipt"]["units"]
    assert terms.price_micro == case["price_micro"]
    assert case["terms"]["input_hash"] == text_hash(case["prompt"])
    assert case["terms"]["result_hash"] == text_hash(case["result"])
    assert case["receipt"]["price"] == to_ait(case["price_micro"])
    assert case["receipt"]["unit_price"] == to_ait(case["terms"]["unit_price_micro"])


@_by_name(RECEIPTS)
def test_signing_reproduces_the_vector(case: dict[str, Any]) -> None:
    """Ed25519 is deterministic: the same seed and terms give the same bytes."""
    terms = _terms(case)
    if case["miner_signed"]:
        assert terms.miner_signature == case["miner_signature"]
    body = receipt_body(terms)
    assert rfc8785.dumps(body) == case["signed_canonical"].encode("utf-8")
    signed = sign_receipt(body, _signing_key(case["signer"]))
    assert signed.document["signature"] == case["signature"]
    assert signed.canonical == case["canonical"].encode("utf-8")
    assert signed.document == case["receipt"]
    assert sha256_hex(signed.canonical) == case["sha256"]


@_by_name(RECEIPTS)
def test_stored_bytes_agree_with_rfc8785(case: dict[str, Any]) -> None:
    receipt = case["receipt"]
    signed_canonical = case["signed_canonical"].encode("utf-8")
    canonical = case["canonical"].encode("utf-8")
    assert rfc8785.dumps(_without_signature(receipt)) == signed_canonical
    assert rfc8785.dumps(receipt) == canonical
    assert hashlib.sha256(canonical).hexdigest() == case["sha256"]
    assert receipt["signature"] == case["signature"]
    # The canonical text is itself the receipt, and is its own canonical form.
    assert parse_json_object(canonical) == receipt
    assert rfc8785.dumps(json.loads(canonical)) == canonical


def test_non_ascii_vector_bytes() -> None:
    """JCS writes non-ASCII as raw UTF-8 and escapes only what it must."""
    (case,) = [case for case in RECEIPTS if case["name"] == "non_ascii_and_escapes"]
    canonical = case["canonical"].encode("utf-8")
    model = case["receipt"]["model"]
    assert any(ord(char) > 0xFFFF for char in model)
    expected = '"model":"qwen2.5:7b-ünïcödé-模型-🦙 \\"q4\\"\\\\\\t\\u001f\x7f\u2028"'
    assert expected.encode("utf-8") in canonical
    assert b"\\u" + b"007f" not in canonical


def test_half_up_vector() -> None:
    (case,) = [case for case in RECEIPTS if case["name"] == "price_rounds_half_up"]
    terms = case["terms"]
    exact_times_1000 = case["units"] * terms["unit_price_micro"]
    assert exact_times_1000 % 1000 == 500  # exactly .5 uAIT
    assert case["price_micro"] == exact_times_1000 // 1000 + 1
    assert b'"price":0.000751' in case["canonical"].encode("utf-8")


# --- good receipts: an independent Ed25519 ----------------------------------------------


def _nacl_verify(public_key_b64: str, signature_b64: str, data: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(_raw(public_key_b64)).verify(data, _raw(signature_b64))
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _flip_one_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return bytes(flipped)


@_by_name(RECEIPTS)
def test_pynacl_verifies_coordinator_signature(case: dict[str, Any]) -> None:
    public_key = KEYS[case["signer"]]["public_key"]
    signature = case["signature"]
    assert signature["alg"] == "ed25519"
    assert signature["key_id"] == KEYS[case["signer"]]["key_id"]
    data = case["signed_canonical"].encode("utf-8")
    assert _nacl_verify(public_key, signature["sig"], data)
    # libsodium signs the same bytes to the same signature.
    seed = bytes.fromhex(KEYS[case["signer"]]["seed_hex"])
    assert nacl.signing.SigningKey(seed).sign(data).signature == _raw(signature["sig"])
    for bit in (0, 7, 8 * len(data) // 2, 8 * len(data) - 1):
        assert not _nacl_verify(public_key, signature["sig"], _flip_one_bit(data, bit))
    raw_sig = _raw(signature["sig"])
    for bit in (0, 255, 256, 511):
        flipped = base64.urlsafe_b64encode(_flip_one_bit(raw_sig, bit)).decode()
        assert not _nacl_verify(public_key, flipped, data)
    assert not _nacl_verify(KEYS["stranger"]["public_key"], signature["sig"], data)


@_by_name([case for case in RECEIPTS if case["miner_signed"]])
def test_pynacl_verifies_miner_signature(case: dict[str, Any]) -> None:
    receipt = case["receipt"]
    statement = {name: receipt[name] for name in case["miner_statement"]}
    assert statement == case["miner_statement"]
    data = case["miner_statement_canonical"].encode("utf-8")
    assert rfc8785.dumps(statement) == data == miner_statement_bytes(statement)
    signature = receipt["miner_signature"]
    assert signature == case["miner_signature"]
    assert signature["key_id"] == KEYS["miner"]["key_id"]
    assert _nacl_verify(KEYS["miner"]["public_key"], signature["sig"], data)
    assert not _nacl_verify(KEYS["miner"]["public_key"], signature["sig"], _flip_one_bit(data, 3))


# --- verify_receipt -------------------------------------------------------------------


@_by_name(RECEIPTS)
def test_verify_receipt_accepts_good_vectors(case: dict[str, Any]) -> None:
    receipt = case["receipt"]
    keys = _ring("coordinator")
    miner_keys = _ring("miner")
    verified = verify_receipt(
        receipt, keys, miner_keys=miner_keys, prompt=case["prompt"], result=case["result"]
    )
    assert verified.key.key_id == KEYS[case["signer"]]["key_id"]
    assert verified.result_checked
    if case["miner_signed"]:
        assert verified.miner_key is not None
        assert verified.miner_key.key_id == KEYS["miner"]["key_id"]
    else:
        assert verified.miner_key is None
    # The same from the canonical text, strictly parsed, and without the extras.
    verify_receipt(parse_json_object(case["canonical"].encode("utf-8")), keys)
    assert verify_receipt(receipt, keys).miner_key is None


@_by_name(RECEIPTS)
def test_verify_receipt_checks_prompt_and_result(case: dict[str, Any]) -> None:
    keys = _ring("coordinator")
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(case["receipt"], keys, result=case["result"] + " ")
    assert caught.value.error_code == "result_hash_mismatch"
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(case["receipt"], keys, prompt=case["prompt"] + " ")
    assert caught.value.error_code == "input_hash_mismatch"


def _negative_receipt(case: dict[str, Any]) -> Any:
    if "receipt_text" in case:
        return parse_json_object(case["receipt_text"].encode("utf-8"))
    return case["receipt"]


@_by_name(NEGATIVE)
def test_verify_receipt_rejects_negative_case(case: dict[str, Any]) -> None:
    keys = _ring(case["keys"])
    miner_keys = _ring(case["miner_keys"]) if "miner_keys" in case else None
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(_negative_receipt(case), keys, miner_keys=miner_keys)
    assert caught.value.error_code == case["expected_error_code"], caught.value.detail


@_by_name([case for case in NEGATIVE if "receipt_text" in case])
def test_negative_text_cases_through_bytes_and_str(case: dict[str, Any]) -> None:
    """A text case fails the same way whether handed over as bytes or as str."""
    keys = _ring(case["keys"])
    for text in (case["receipt_text"], case["receipt_text"].encode("utf-8")):
        with pytest.raises(VerificationFailed) as caught:
            verify_receipt(parse_json_object(text), keys)
        assert caught.value.error_code == case["expected_error_code"]


def test_duplicate_member_would_fool_a_last_wins_parser() -> None:
    """Why duplicates are refused: Python's plain json.loads keeps the last value, and
    the signature then checks out over a text that also says units=1701."""
    (case,) = [case for case in NEGATIVE if case["name"] == "duplicate_member"]
    lenient = json.loads(case["receipt_text"])
    assert verify_receipt(lenient, _ring("coordinator")).receipt["units"] == 1700


def test_json_dumps_case_signed_other_bytes() -> None:
    (case,) = [case for case in NEGATIVE if case["name"] == "signed_over_json_dumps"]
    body = _without_signature(case["receipt"])
    dumped = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert dumped != rfc8785.dumps(body)
    public_key = KEYS["coordinator"]["public_key"]
    assert _nacl_verify(public_key, case["receipt"]["signature"]["sig"], dumped)
    assert not _nacl_verify(public_key, case["receipt"]["signature"]["sig"], rfc8785.dumps(body))


@_by_name(
    [
        case
        for case in NEGATIVE
        if case["expected_error_code"]
        in {"invalid_amount", "price_mismatch", "units_mismatch", "key_not_valid", "missing_field"}
    ]
)
def test_correctly_signed_negative_cases_have_good_signatures(case: dict[str, Any]) -> None:
    """These cases fail on their content alone: the signature itself is genuine."""
    receipt = case["receipt"]
    signer = {KEYS[name]["key_id"]: name for name in KEYS}[receipt["signature"]["key_id"]]
    assert _nacl_verify(
        KEYS[signer]["public_key"],
        receipt["signature"]["sig"],
        rfc8785.dumps(_without_signature(receipt)),
    )


def test_price_cases_arithmetic() -> None:
    by_name = {case["name"]: case["receipt"] for case in NEGATIVE if "receipt" in case}
    half = by_name["price_rounded_half_down"]
    assert half["units"] * 500 == 12_500  # 12.5 uAIT
    assert price_for_units(half["units"], 500) == 13
    assert by_name["price_with_seven_decimals"]["price"] == 0.0000125
