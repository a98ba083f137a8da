"""Receipts, canonical bytes and signatures (``aitbc.domain.receipts``, ``canonical``,
``signing``): properties over arbitrary receipts, and the strictness of parsing,
base64url and key documents."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from aitbc.domain.canonical import FixedShapeEncoder, canonical_bytes, parse_json_object
from aitbc.domain.money import MAX_SUPPLY_MICRO, price_for_units, to_ait
from aitbc.domain.receipts import (
    MINER_STATEMENT_MEMBERS,
    RECEIPT_MEMBERS,
    ReceiptTerms,
    miner_statement,
    miner_statement_bytes,
    receipt_body,
    sign_miner_statement,
    sign_receipt,
    signed_bytes,
    verify_miner_signature,
    verify_receipt,
)
from aitbc.domain.signing import (
    KeyRing,
    PublicKey,
    SigningKey,
    b64url_decode,
    b64url_encode,
)
from aitbc.errors import VerificationFailed

MAX_SAFE = 2**53 - 1
COORDINATOR = SigningKey.from_seed(bytes(range(100, 132)))
OTHER_COORDINATOR = SigningKey.from_seed(bytes(range(140, 172)))
MINER = SigningKey.from_seed(bytes(range(200, 232)))
MINER_ID = "miner-prop-01"
KEYS = KeyRing([PublicKey.of(COORDINATOR, "coordinator")])
MINER_KEYS = KeyRing([PublicKey.of(MINER, MINER_ID)])
RECEIPT_ENCODER = FixedShapeEncoder(RECEIPT_MEMBERS)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies -------------------------------------------------------------------------

# Any Unicode scalar value (no lone surrogates: those have no UTF-8 form), with the
# characters JSON escapes over-represented.
_tricky = st.sampled_from(['"', "\\", "/", "\x00", "\b", "\x1f", "\x7f", "\u2028", "é", "🦙"])
TEXT = st.text(alphabet=st.characters(codec="utf-8") | _tricky, max_size=24)
NON_EMPTY_TEXT = st.text(alphabet=st.characters(codec="utf-8") | _tricky, min_size=1, max_size=24)
HASH = st.binary(min_size=32, max_size=32).map(bytes.hex)
UNIX = st.integers(min_value=0, max_value=MAX_SAFE)
MICRO = st.one_of(
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=MAX_SUPPLY_MICRO),
    st.sampled_from([0, 1, 499, 500, 501, 999, 1000, MAX_SUPPLY_MICRO]),
)


@st.composite
def receipt_terms(
    draw: st.DrawFn, *, payable: bool = True, miner_signed: bool | None = None
) -> ReceiptTerms:
    """Arbitrary terms; with ``payable`` the price stays within total supply (so the
    receipt verifies), else tokens go up to 2^53."""
    unit_price = draw(MICRO)
    if payable:
        max_units = min(MAX_SAFE, (MAX_SUPPLY_MICRO * 1000) // max(unit_price, 1))
    else:
        max_units = MAX_SAFE
    units_cap = draw(st.sampled_from([100, 10**6, max_units]))
    units_cap = min(units_cap, max_units)
    prompt_tokens = draw(st.integers(min_value=0, max_value=units_cap))
    completion_tokens = draw(st.integers(min_value=0, max_value=units_cap - prompt_tokens))
    started_at = draw(UNIX)
    completed_at = draw(st.integers(min_value=started_at, max_value=MAX_SAFE))
    job_id = draw(NON_EMPTY_TEXT)
    provider = draw(st.sampled_from([MINER_ID]) | NON_EMPTY_TEXT)
    result_hash = draw(HASH)
    signed = draw(st.booleans()) if miner_signed is None else miner_signed
    miner_signature = None
    if signed:
        statement = miner_statement(
            job_id, provider, result_hash, prompt_tokens + completion_tokens
        )
        miner_signature = sign_miner_statement(MINER, statement)
    return ReceiptTerms(
        receipt_id=draw(NON_EMPTY_TEXT),
        job_id=job_id,
        provider=provider,
        client=draw(NON_EMPTY_TEXT),
        model=draw(NON_EMPTY_TEXT),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        unit_price_micro=unit_price,
        started_at=started_at,
        completed_at=completed_at,
        input_hash=draw(HASH),
        result_hash=result_hash,
        miner_signature=miner_signature,
    )


def json_values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """JSON values as a parser produces them (integers JSON holds exactly)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-MAX_SAFE, max_value=MAX_SAFE),
        floats,
        TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
        max_leaves=8,
    )


JSON_VALUES = json_values(st.floats(allow_nan=False, allow_infinity=False))
# No float at or above 2^53 with no fraction: see
# test_canonical_form_of_a_large_integral_float_reads_back_as_an_int.
READ_BACK_JSON_VALUES = json_values(st.floats(min_value=-(2.0**52), max_value=2.0**52))
# What a lenient parser or a careless caller can also hand over.
HOSTILE_SCALARS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 2**53, -(2**53), 2**64, -(2**70), "\ud800", "a\udfffb"]
)
# Values close to the real ones, so a mutation gets past the first checks.
NEAR_VALUES = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=10, allow_nan=False),
    HASH,
    st.binary(min_size=64, max_size=64).map(b64url_encode),
    st.sampled_from(
        [
            "ed25519",
            "Ed25519",
            "tokens",
            MINER_ID,
            COORDINATOR.key_id,
            OTHER_COORDINATOR.key_id,
            MINER.key_id,
            COORDINATOR.key_id.upper(),
        ]
    ),
)
# One third each (one_of would weigh every branch of its nested one_ofs alike).
ANY_VALUE = st.sampled_from([JSON_VALUES, NEAR_VALUES, HOSTILE_SCALARS]).flatmap(lambda s: s)


def _paths(receipt: dict[str, Any]) -> list[tuple[str, ...]]:
    """Every member of a receipt, nested members of its objects included."""
    paths: list[tuple[str, ...]] = []
    for name, value in receipt.items():
        paths.append((name,))
        if isinstance(value, dict):
            paths.extend((name, inner) for inner in value)
    return paths


def _replace(receipt: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(receipt)
    target = changed
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return changed


def _remove(receipt: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    changed = copy.deepcopy(receipt)
    target = changed
    for name in path[:-1]:
        target = target[name]
    del target[path[-1]]
    return changed


def _same_json(a: Any, b: Any) -> bool:
    """Whether two values are one JSON value (1 and 1.0 are; NaN is no value)."""
    try:
        return rfc8785.dumps(a) == rfc8785.dumps(b)
    except (rfc8785.CanonicalizationError, ValueError):
        return False


def _fails(receipt: Any, **kwargs: Any) -> VerificationFailed:
    """The VerificationFailed that verify_receipt raises; any other outcome fails."""
    try:
        verify_receipt(receipt, KEYS, **kwargs)
    except VerificationFailed as exc:
        return exc
    raise AssertionError("verify_receipt accepted the receipt")


# --- (a) the fixed-shape encoder is JCS -------------------------------------------------


@FAST
@given(receipt_terms(payable=False))
def test_fixed_shape_encoder_equals_rfc8785(terms: ReceiptTerms) -> None:
    body = receipt_body(terms)
    assert RECEIPT_ENCODER.encode(body) == rfc8785.dumps(body)
    assert FixedShapeEncoder(RECEIPT_MEMBERS).encode(body) == canonical_bytes(body)
    signed = sign_receipt(body, COORDINATOR)
    assert signed.canonical == rfc8785.dumps(signed.document)
    assert RECEIPT_ENCODER.encode(signed.document) == signed.canonical
    assert signed_bytes(signed.document) == rfc8785.dumps(body)
    statement = {name: body[name] for name in MINER_STATEMENT_MEMBERS}
    assert miner_statement_bytes(statement) == rfc8785.dumps(statement)


@FAST
@given(st.dictionaries(st.sampled_from(RECEIPT_MEMBERS), JSON_VALUES), TEXT, JSON_VALUES)
def test_fixed_shape_encoder_any_values_and_unknown_members(
    obj: dict[str, Any], extra_name: str, extra_value: Any
) -> None:
    """Any JSON values under known names, and objects with a member outside the set
    (which fall back to the whole-object encoder), still give the JCS bytes."""
    assert RECEIPT_ENCODER.encode(obj) == rfc8785.dumps(obj)
    with_extra = dict(obj)
    with_extra[extra_name] = extra_value
    assert RECEIPT_ENCODER.encode(with_extra) == rfc8785.dumps(with_extra)


def test_fixed_shape_encoder_refuses_non_plain_names() -> None:
    for name in ("Units", "é", "a-b", "", "1a", "a b"):
        with pytest.raises(ValueError, match="not plain ASCII"):
            FixedShapeEncoder([name])


# --- (b), (c) any change or removal is refused ------------------------------------------


@FAST
@given(receipt_terms(miner_signed=True), st.data())
def test_changing_any_member_fails_verification(terms: ReceiptTerms, data: st.DataObject) -> None:
    receipt = sign_receipt(receipt_body(terms), COORDINATOR).document
    path = data.draw(st.sampled_from(_paths(receipt)), label="path")
    old = copy.deepcopy(receipt)
    for name in path:
        old = old[name]
    new = data.draw(ANY_VALUE, label="value")
    assume(not _same_json(new, old))
    error = _fails(_replace(receipt, path, new), miner_keys=MINER_KEYS)
    event(error.error_code)


def test_removing_or_changing_any_member_of_a_fixed_receipt_fails() -> None:
    """Every member and nested member, removed or set to null, fails verification."""
    statement = miner_statement("job-1", MINER_ID, "1" * 64, 3)
    terms = ReceiptTerms(
        "rcpt-1",
        "job-1",
        MINER_ID,
        "client-1",
        "model",
        1,
        2,
        3000,
        4,
        5,
        "0" * 64,
        "1" * 64,
        miner_signature=sign_miner_statement(MINER, statement),
    )
    receipt = sign_receipt(receipt_body(terms), COORDINATOR).document
    paths = set(_paths(receipt))
    assert {(name,) for name in RECEIPT_MEMBERS} <= paths
    assert {("usage", "prompt_tokens"), ("usage", "completion_tokens")} <= paths
    for name in ("alg", "key_id", "sig"):
        assert ("signature", name) in paths
        assert ("miner_signature", name) in paths
    verify_receipt(receipt, KEYS, miner_keys=MINER_KEYS)
    for path in sorted(paths):
        _fails(_remove(receipt, path), miner_keys=MINER_KEYS)
        _fails(_replace(receipt, path, None), miner_keys=MINER_KEYS)


@FAST
@given(receipt_terms(), st.data())
def test_removing_any_member_fails_verification(terms: ReceiptTerms, data: st.DataObject) -> None:
    receipt = sign_receipt(receipt_body(terms), COORDINATOR).document
    path = data.draw(st.sampled_from(_paths(receipt)), label="path")
    error = _fails(_remove(receipt, path), miner_keys=MINER_KEYS)
    if path == ("signature",):
        assert error.error_code == "missing_signature"
    elif path[0] == "signature":
        assert error.error_code == "malformed_signature"
    else:
        # Every other member is under the signature.
        assert error.error_code == "bad_signature"


@FAST
@given(receipt_terms(miner_signed=True), st.data())
def test_correctly_signed_changes_fail_only_with_verification_failed(
    terms: ReceiptTerms, data: st.DataObject
) -> None:
    """A member changed and the receipt signed again (a coordinator bug, or a key
    compromise): the content checks answer with VerificationFailed or accept it, and
    raise nothing else."""
    body = receipt_body(terms)
    path = data.draw(st.sampled_from(_paths(body)), label="path")
    changed = _replace(body, path, data.draw(st.one_of(JSON_VALUES, NEAR_VALUES), label="value"))
    receipt = dict(changed, signature=COORDINATOR.signature_object(rfc8785.dumps(changed)))
    try:
        verify_receipt(receipt, KEYS, miner_keys=MINER_KEYS)
    except VerificationFailed as exc:
        assert exc.error_code != "bad_signature"


# --- (d) price arithmetic, and every signed receipt verifies ----------------------------


@FAST
@given(
    st.integers(min_value=0, max_value=MAX_SAFE),
    st.integers(min_value=0, max_value=MAX_SUPPLY_MICRO),
)
@example(1501, 500)  # 750.5 -> 751
@example(1, 500)  # 0.5 -> 1
@example(1, 499)  # 0.499 -> 0
@example(3, 500)  # 1.5 -> 2 (half-even would give 2 too)
@example(5, 500)  # 2.5 -> 3 (half-even would give 2)
def test_price_is_exact_product_rounded_half_up(units: int, unit_price: int) -> None:
    """price = units x unit_price / 1000 to the nearest uAIT, halves up. Precisely:
    -500 < 1000 * price - units * unit_price <= 500, so a receipt never charges more
    than half a uAIT above the exact amount, nor half a uAIT or more below it; and the
    price never falls when units or unit_price rise."""
    price = price_for_units(units, unit_price)
    # Enough digits for the largest product (2^53 x 10^15): the default 28 would round.
    with localcontext(prec=60):
        exact = Decimal(units * unit_price) / 1000
        assert price == int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert -500 < 1000 * price - units * unit_price <= 500
    assert math.floor(exact) <= price <= math.ceil(exact)
    assert price_for_units(units + 1, unit_price) >= price
    assert price_for_units(units, unit_price + 1) >= price
    assert (price == 0) == (units * unit_price < 500)


@FAST
@given(receipt_terms())
def test_verify_accepts_every_receipt_it_signs(terms: ReceiptTerms) -> None:
    signed = sign_receipt(receipt_body(terms), COORDINATOR)
    document = signed.document
    assert document["units"] == terms.prompt_tokens + terms.completion_tokens
    assert document["price"] == to_ait(terms.price_micro)
    copies = [
        document,
        json.loads(json.dumps(document)),
        json.loads(json.dumps(document, ensure_ascii=False, indent=1)),
        orjson.loads(orjson.dumps(document)),
        parse_json_object(signed.canonical),
        parse_json_object(signed.canonical.decode("utf-8")),
        parse_json_object(orjson.dumps(document)),
    ]
    miner_keys = MINER_KEYS if terms.provider == MINER_ID else None
    for receipt in copies:
        assert rfc8785.dumps(receipt) == signed.canonical
        verified = verify_receipt(receipt, KEYS, miner_keys=miner_keys)
        assert verified.key.key_id == COORDINATOR.key_id
        assert (verified.miner_key is not None) == (
            miner_keys is not None and terms.miner_signature is not None
        )


def test_price_amounts_read_back_exactly() -> None:
    """Amounts are floats in JSON: every uAIT amount up to total supply survives
    to_ait, JSON text and re-reading (spot checks at the awkward places)."""
    for micro in (1, 3, 7, 10, 100_001, 123_456_789, 999_999_999_999_999, MAX_SUPPLY_MICRO):
        for text in (json.dumps(to_ait(micro)), orjson.dumps(to_ait(micro)).decode()):
            assert Decimal(repr(json.loads(text))) * 1_000_000 == micro


# --- key rotation -----------------------------------------------------------------------

ROTATION = datetime(2026, 2, 13, 10, 0, 0, tzinfo=UTC)
T = int(ROTATION.timestamp())


def _rotation_ring() -> KeyRing:
    retired = PublicKey(
        OTHER_COORDINATOR.key_id,
        OTHER_COORDINATOR.public_key,
        "coordinator",
        "retired",
        ROTATION - timedelta(days=30),
        ROTATION,
    )
    return KeyRing([retired, PublicKey.of(COORDINATOR, "coordinator", ROTATION)])


def _receipt_at(completed_at: int, key: SigningKey) -> dict[str, Any]:
    terms = ReceiptTerms(
        "rcpt-rot",
        "job-rot",
        MINER_ID,
        "client-1",
        "m",
        10,
        20,
        50_000,
        completed_at - 5,
        completed_at,
        "a" * 64,
        "b" * 64,
    )
    return sign_receipt(receipt_body(terms), key).document


def test_key_rotation_keeps_old_receipts_valid() -> None:
    ring = _rotation_ring()
    # A document served by GET /v1/keys reads back to the same ring.
    ring = KeyRing.from_document(json.loads(json.dumps(ring.to_document())))
    old = OTHER_COORDINATOR
    for completed_at in (T - 30 * 86_400, T - 3600, T - 1, T):
        assert verify_receipt(_receipt_at(completed_at, old), ring).key.key_id == old.key_id
    for completed_at in (T + 1, T + 86_400):
        with pytest.raises(VerificationFailed) as caught:
            verify_receipt(_receipt_at(completed_at, old), ring)
        assert caught.value.error_code == "key_not_valid"
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(_receipt_at(T - 30 * 86_400 - 1, old), ring)
    assert caught.value.error_code == "key_not_valid"
    for completed_at in (T, T + 1, T + 10 * 365 * 86_400):
        verified = verify_receipt(_receipt_at(completed_at, COORDINATOR), ring)
        assert verified.key.key_id == COORDINATOR.key_id
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(_receipt_at(T - 1, COORDINATOR), ring)
    assert caught.value.error_code == "key_not_valid"


def test_only_coordinator_keys_sign_receipts() -> None:
    ring = KeyRing([PublicKey.of(COORDINATOR, "coordinator"), PublicKey.of(MINER, MINER_ID)])
    assert verify_receipt(_receipt_at(T, COORDINATOR), ring)
    with pytest.raises(VerificationFailed) as caught:
        verify_receipt(_receipt_at(T, MINER), ring)
    assert caught.value.error_code == "unknown_key"
    assert len(ring.owned_by(MINER_ID)) == 1


# --- base64url --------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=80))
def test_b64url_round_trip(raw: bytes) -> None:
    text = b64url_encode(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text, len(raw), "thing") == raw


@FAST
@given(st.text(max_size=90), st.integers(min_value=0, max_value=66))
def test_b64url_decode_is_strict_or_exact(text: str, length: int) -> None:
    """Any text either decodes to bytes that encode back to exactly it, or is refused
    with malformed_<what>; nothing else."""
    try:
        raw = b64url_decode(text, length, "sig thing")
    except VerificationFailed as exc:
        assert exc.error_code == "malformed_sig_thing"
    else:
        assert len(raw) == length and b64url_encode(raw) == text


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("AAECAw==", 4),  # padding
        ("AAECAw=", 4),
        ("AAECAx", 4),  # non-zero unused bits: decodes to the same bytes as AAECAw
        ("AAECAw", 3),  # wrong length
        ("AAECAw", 5),
        ("AAECA", 4),  # impossible length (4k + 1 characters)
        ("AA+/", 3),  # standard alphabet
        ("AA EC", 3),
        ("AAECAw\n", 4),
        (" AAECAw", 4),
        ("ＡＡＥＣＡｗ", 4),  # fullwidth letters
        ("", 1),
    ],
)
def test_b64url_decode_refuses(text: str, length: int) -> None:
    with pytest.raises(VerificationFailed) as caught:
        b64url_decode(text, length, "signature")
    assert caught.value.error_code == "malformed_signature"


@pytest.mark.parametrize("value", [None, b"AAECAw", 0, ["AAECAw"], {"sig": "AAECAw"}])
def test_b64url_decode_refuses_non_text(value: Any) -> None:
    with pytest.raises(VerificationFailed) as caught:
        b64url_decode(value, 4, "public key")
    assert caught.value.error_code == "malformed_public_key"


def test_b64url_decode_accepts_canonical() -> None:
    assert b64url_decode("AAECAw", 4, "x") == bytes([0, 1, 2, 3])
    assert b64url_decode("", 0, "x") == b""
    assert b64url_decode("-_8", 2, "x") == bytes([0xFB, 0xFF])


# --- key documents ----------------------------------------------------------------------


def _entry(**changes: Any) -> dict[str, Any]:
    return PublicKey.of(COORDINATOR, "coordinator", ROTATION).to_document() | changes


def test_public_key_document_round_trip() -> None:
    entry = _entry()
    assert entry["valid_from"] == "2026-02-13T10:00:00Z"
    key = PublicKey.from_document(entry)
    assert key == PublicKey.of(COORDINATOR, "coordinator", ROTATION)
    assert key.to_document() == entry


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"key_id": MINER.key_id}, "malformed_key"),
        ({"key_id": COORDINATOR.key_id.upper()}, "malformed_key"),
        ({"key_id": COORDINATOR.key_id[:-1]}, "malformed_key"),
        ({"public_key": MINER.public_key_b64}, "malformed_key"),  # key_id of another key
        ({"public_key": COORDINATOR.public_key_b64 + "="}, "malformed_public_key"),
        ({"public_key": b64url_encode(COORDINATOR.public_key[:31])}, "malformed_public_key"),
        ({"public_key": None}, "malformed_public_key"),
        ({"alg": "rsa"}, "unsupported_algorithm"),
        ({"status": "revoked"}, "malformed_key"),
        ({"owner": 7}, "malformed_key"),
        ({"valid_from": "2026-02-13T10:00:00"}, "malformed_key"),  # no time zone
        ({"valid_until": "yesterday"}, "malformed_key"),
    ],
)
def test_public_key_from_document_refuses(changes: dict[str, Any], code: str) -> None:
    with pytest.raises(VerificationFailed) as caught:
        PublicKey.from_document(_entry(**changes))
    assert caught.value.error_code == code


@pytest.mark.parametrize("document", [None, {}, {"keys": {}}, {"keys": "x"}, "keys", 3])
def test_keyring_from_document_refuses_non_documents(document: Any) -> None:
    with pytest.raises(VerificationFailed) as caught:
        KeyRing.from_document(document)
    assert caught.value.error_code == "malformed_key"
    assert len(KeyRing.from_document([])) == len(KeyRing.from_document({"keys": []})) == 0


def test_keyring_from_document_refuses_a_bad_entry() -> None:
    with pytest.raises(VerificationFailed) as caught:
        KeyRing.from_document({"keys": [_entry(), "not an entry"]})
    assert caught.value.error_code == "malformed_key"


# --- strict parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"a": 1, "a": 1}', "duplicate_member"),
        ('{"a": 1, "b": {"c": 2, "c": 3}}', "duplicate_member"),
        ('{"a": [{"x": 1, "x": 1}]}', "duplicate_member"),
        ('{"a": NaN}', "not_canonical"),
        ('{"a": Infinity}', "not_canonical"),
        ('{"a": -Infinity}', "not_canonical"),
        ('{"a": [1, NaN]}', "not_canonical"),
        ("[1, 2]", "invalid_json"),
        ('"receipt"', "invalid_json"),
        ("1", "invalid_json"),
        ("null", "invalid_json"),
        ("", "invalid_json"),
        ("{", "invalid_json"),
        ('{"a": 1} x', "invalid_json"),
        ('{"a": 1}{"a": 1}', "invalid_json"),
        ("{'a': 1}", "invalid_json"),
        ('{"a": 01}', "invalid_json"),
        ('{"a": 1,}', "invalid_json"),
        ('\ufeff{"a": 1}', "invalid_json"),
        ('{"a": "' + "\x01" + '"}', "invalid_json"),  # raw control character in a string
        ('{"a": ' + "1" * 5000 + "}", "invalid_json"),  # beyond int's digit limit
    ],
)
def test_parse_json_object_refuses(text: str, code: str) -> None:
    for data in (text, text.encode("utf-8")):
        with pytest.raises(VerificationFailed) as caught:
            parse_json_object(data)
        assert caught.value.error_code == code


@pytest.mark.parametrize(
    "data",
    [b'{"a": "\xff"}', b'{"a": "\xc3"}', b'{"a": "\xed\xa0\x80"}', b"\xfe\xff\x00{\x00}"],
)
def test_parse_json_object_refuses_invalid_utf8(data: bytes) -> None:
    with pytest.raises(VerificationFailed) as caught:
        parse_json_object(data)
    assert caught.value.error_code == "invalid_json"


@pytest.mark.parametrize("depth", [2_000, 100_000])
@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ('{"a":', "}")])
def test_parse_json_object_refuses_deep_nesting(depth: int, open_: str, close: str) -> None:
    text = '{"a":' + open_ * depth + "1" * (open_ != "[") + close * depth + "}"
    with pytest.raises(VerificationFailed) as caught:
        parse_json_object(text)
    assert caught.value.error_code == "invalid_json"


def test_parse_json_object_reads_what_canonical_form_allows() -> None:
    text = '{"b": [1, 2.5, "é", null, true], "a": {"x": -0}, "c": "\\ud83e\\udd99"}'
    assert parse_json_object(text) == {
        "b": [1, 2.5, "é", None, True],
        "a": {"x": 0},
        "c": "🦙",
    }
    # A lone surrogate escape parses, but has no canonical form.
    lone = parse_json_object('{"a": "\\ud800"}')
    with pytest.raises(VerificationFailed) as caught:
        canonical_bytes(lone)
    assert caught.value.error_code == "not_canonical"


@FAST
@given(st.binary(max_size=64))
def test_parse_json_object_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        value = parse_json_object(data)
    except VerificationFailed as exc:
        assert exc.error_code in {"invalid_json", "duplicate_member", "not_canonical"}
    else:
        assert isinstance(value, dict)


@FAST
@given(st.dictionaries(TEXT, READ_BACK_JSON_VALUES, max_size=4))
def test_parse_json_object_reads_canonical_bytes_back(value: dict[str, Any]) -> None:
    """Canonical text parses back to a value with the same canonical text (but see
    the large integral float case below)."""
    canonical = rfc8785.dumps(value)
    parsed = parse_json_object(canonical)
    assert rfc8785.dumps(parsed) == canonical


# --- canonical_bytes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"price": math.nan},
        [1, math.inf],
        2**53,
        2**53 + 1,
        -(2**53),
        2**64,
        {"units": 2**63},
        "\ud800",
        "a\udc00",
        {"model": "\udfff"},
        {"\ud800": 1},
        Decimal("0.05"),
        {"price": Decimal("1")},
        {1: "a"},
        b"bytes",
        {1, 2},
        object(),
    ],
    ids=repr,
)
def test_canonical_bytes_refuses_what_has_no_canonical_form(value: Any) -> None:
    with pytest.raises(VerificationFailed) as caught:
        canonical_bytes(value)
    assert caught.value.error_code == "not_canonical"


def test_canonical_bytes_edges() -> None:
    assert canonical_bytes(2**53 - 1) == b"9007199254740991"
    assert canonical_bytes(-(2**53) + 1) == b"-9007199254740991"
    assert canonical_bytes({"b": 1.0, "a": -0.0, "c": 1e-7, "d": 1e21}) == (
        b'{"a":0,"b":1,"c":1e-7,"d":1e+21}'
    )
    # Members sort by UTF-16 code units: an astral character (a surrogate pair, D83E)
    # sorts before U+FF21, though its code point is larger.
    assert canonical_bytes({"\uff21": 1, "z": 2, "é": 3, "\U0001f999": 4}) == (
        '{"z":2,"é":3,"\U0001f999":4,"\uff21":1}'.encode()
    )


def test_canonical_form_of_a_large_integral_float_reads_back_as_an_int() -> None:
    """A JCS quirk worth knowing: a float at or above 2^53 with no fraction is written
    as digits, which a parser reads back as an integer beyond 2^53, which has no
    canonical form. Receipt amounts stay below 10^9 AIT, so receipts never get there."""
    assert canonical_bytes({"a": 2.0**53}) == b'{"a":9007199254740992}'
    with pytest.raises(VerificationFailed) as caught:
        canonical_bytes(parse_json_object(b'{"a":9007199254740992}'))
    assert caught.value.error_code == "not_canonical"


# --- found by these tests: see the report -----------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_canonical_bytes_of_deep_nesting_is_verification_failed() -> None:
    """rfc8785 recurses once per level: a RecursionError must surface as
    VerificationFailed, so verify_receipt never raises anything else."""
    with pytest.raises(VerificationFailed) as caught:
        canonical_bytes({"model": _nested(5_000)})
    assert caught.value.error_code == "not_canonical"


def test_verify_receipt_of_deep_nesting_is_verification_failed() -> None:
    """The same for a receipt object nested deeper than the recursion limit."""
    receipt = _receipt_at(T, COORDINATOR)
    receipt["model"] = _nested(5_000)
    _fails(receipt)


def test_signature_object_with_extra_member_is_refused() -> None:
    """The signature object is exactly ``{"alg", "key_id", "sig"}``: nothing covers it,
    so an extra member would change the receipt's canonical bytes, and so its SHA-256
    (a ledger ``ref``), while it still verified."""
    receipt = _receipt_at(T, COORDINATOR)
    receipt["signature"] = dict(receipt["signature"], note="added later")
    error = _fails(receipt)
    assert error.error_code == "malformed_signature"


def test_miner_signature_with_extra_member_is_refused() -> None:
    """The same for miner_signature (there the coordinator's signature covers it, so
    only a coordinator could add one; still not the DESIGN.md shape)."""
    statement = miner_statement("job-1", MINER_ID, "1" * 64, 3)
    signature = sign_miner_statement(MINER, statement) | {"note": "x"}
    with pytest.raises(VerificationFailed) as caught:
        verify_miner_signature(statement, signature, MINER_KEYS)
    assert caught.value.error_code == "malformed_miner_signature"


@pytest.mark.parametrize(
    "raw",
    [
        bytes([1]) + bytes(31),  # the identity point: one signature fits every message
        bytes(32),  # a point of order 4 (y = 0)
        bytes([0xEC]) + bytes([0xFF]) * 30 + bytes([0x7F]),  # y = p - 1: order 2
        bytes([0xED]) + bytes([0xFF]) * 30 + bytes([0x7F]),  # y = p: not canonical
    ],
)
def test_weak_public_keys_are_refused(raw: bytes) -> None:
    from aitbc.domain.signing import PublicKey, b64url_encode, check_public_key

    with pytest.raises(VerificationFailed) as caught:
        check_public_key(raw)
    assert caught.value.error_code == "weak_key"
    with pytest.raises(VerificationFailed):
        PublicKey.from_document({"public_key": b64url_encode(raw)})


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_key_dates_outside_what_utc_can_show_are_refused(when: str) -> None:
    from aitbc.domain.signing import PublicKey, SigningKey

    entry = PublicKey.of(SigningKey.from_seed(bytes(32)), "coordinator").to_document()
    entry["valid_from"] = when
    with pytest.raises(VerificationFailed) as caught:
        PublicKey.from_document(entry)
    assert caught.value.error_code == "malformed_key"
