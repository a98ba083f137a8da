"""The ledger's pure rules (``aitbc.domain.ledger``): transaction ids against
``rfc8785`` itself, strict parsing, the replay rule under random interleavings, state
and transaction roots against the RFC's definitions, block signatures and proofs."""

from __future__ import annotations

import hashlib
import json
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aitbc.domain.ledger import (
    BLOCK_HEADER_MEMBERS,
    ESCROW,
    GENESIS_PREV_HASH,
    MAX_BLOCK_TRANSACTIONS,
    SYSTEM_ACCOUNTS,
    TRANSACTION_MEMBERS,
    TREASURY,
    LedgerState,
    Transaction,
    TxType,
    block_hash,
    block_header,
    check_block_contents,
    check_block_header,
    check_block_link,
    check_sender_signature,
    finish_transaction,
    header_bytes,
    inclusion_proof,
    requires_sender_signature,
    sign_block,
    sign_transaction,
    signing_bytes,
    state_leaf,
    state_root,
    transaction_body,
    transaction_id,
    tx_root,
    verify_block_signature,
    verify_inclusion_proof,
    verify_transaction_signature,
)
from aitbc.domain.money import MAX_SUPPLY_MICRO, to_ait
from aitbc.domain.receipts import amount_micro
from aitbc.domain.signing import KeyRing, PublicKey, SigningKey
from aitbc.errors import VerificationFailed

MAX_SAFE = 2**53 - 1
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEALER = SigningKey.from_seed(bytes(32))
OTHER_SEALER = SigningKey.from_seed(bytes(range(1, 33)))
KEYS = KeyRing([PublicKey.of(SEALER, "coordinator")])
ALICE = "client_" + "a" * 32
BOB = "client_" + "b" * 32
MINER = "miner-01"
ALICE_KEY = SigningKey.from_seed(bytes(range(64, 96)))
RECEIPT_REF = hashlib.sha256(b"a signed receipt").hexdigest()


# --- strategies ---------------------------------------------------------------------------

_tricky = st.sampled_from(['"', "\\", "/", "\x00", "\b", "\x1f", "\x7f", "\u2028", "é", "🦙"])
TEXT = st.text(alphabet=st.characters(codec="utf-8") | _tricky, max_size=20)
ADDRESS = st.sampled_from([ALICE, BOB, MINER, TREASURY, ESCROW]) | TEXT.filter(bool)
MICRO = st.one_of(
    st.integers(min_value=0, max_value=10_000_000),
    st.integers(min_value=0, max_value=MAX_SUPPLY_MICRO),
    st.sampled_from([0, 1, 99, 100, 10**6, MAX_SUPPLY_MICRO - 1, MAX_SUPPLY_MICRO]),
)
UNIX = st.integers(min_value=0, max_value=MAX_SAFE)
HASH = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Transaction bodies of every type, their fields arbitrary (not always valid)."""
    tx_type = draw(st.sampled_from(list(TxType)))
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["nonce"] = draw(UNIX)
    if tx_type is TxType.RECEIPT or draw(st.booleans()):
        extra["receipt_id"] = draw(TEXT.filter(bool))
    return transaction_body(
        tx_type=tx_type,
        sender=draw(st.none() | ADDRESS),
        recipient=draw(st.none() | ADDRESS),
        amount_micro=draw(MICRO),
        fee_micro=draw(MICRO),
        ref=draw(st.none() | TEXT | HASH),
        timestamp=draw(UNIX),
        extra=extra,
    )


def _expected_id(doc: dict[str, Any]) -> str:
    hashed = {name: value for name, value in doc.items() if name not in ("id", "signature")}
    return hashlib.sha256(rfc8785.dumps(hashed)).hexdigest()


def _body(**changes: Any) -> dict[str, Any]:
    """A valid transfer body (Alice to Bob, nonce 7) with members replaced."""
    body = transaction_body(
        tx_type=TxType.TRANSFER,
        sender=ALICE,
        recipient=BOB,
        amount_micro=1_500_000,
        fee_micro=50_000,
        ref=None,
        timestamp=1_760_000_000,
        extra={"nonce": 7},
    )
    body.update(changes)
    return body


def _doc(**changes: Any) -> dict[str, Any]:
    """A transfer with members changed and a correct id, so only the change is wrong
    (an id of zeros when the change leaves it no canonical form to hash)."""
    body = _body(**changes)
    try:
        tx_id = _expected_id(body)
    except rfc8785.CanonicalizationError:
        tx_id = "0" * 64
    return {"id": tx_id, **body}


def _fails(code: str | set[str], call: Any, *args: Any) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as info:
        call(*args)
    codes = {code} if isinstance(code, str) else code
    assert info.value.error_code in codes, info.value.detail
    return info.value


# --- ids and canonical bytes ----------------------------------------------------------------


@FAST
@given(bodies())
def test_ids_equal_sha256_of_rfc8785_bytes(body: dict[str, Any]) -> None:
    doc = finish_transaction(body)
    assert signing_bytes(doc) == rfc8785.dumps(body)
    assert doc["id"] == transaction_id(body) == _expected_id(doc)
    assert "signature" not in doc
    # A signature is outside what the id covers.
    signed = finish_transaction(body, {"alg": "ed25519", "key_id": "0" * 16, "sig": "x"})
    assert signed["id"] == doc["id"]
    assert signing_bytes(signed) == signing_bytes(body)
    # What a JSON parser reads back hashes the same.
    assert transaction_id(json.loads(json.dumps(doc))) == doc["id"]


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-MAX_SAFE, max_value=MAX_SAFE),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-5, max_value=1e17),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@FAST
@given(st.dictionaries(st.sampled_from(TRANSACTION_MEMBERS), JSON_VALUES))
def test_signing_bytes_equal_rfc8785_for_any_values(doc: dict[str, Any]) -> None:
    hashed = {name: value for name, value in doc.items() if name not in ("id", "signature")}
    assert signing_bytes(doc) == rfc8785.dumps(hashed)


@FAST
@given(
    st.dictionaries(TEXT, SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(TRANSACTION_MEMBERS), SCALARS),
)
def test_signing_bytes_of_other_members_fall_back_to_the_library(
    others: dict[str, Any], known: dict[str, Any]
) -> None:
    doc = {**known, **others}
    hashed = {name: value for name, value in doc.items() if name not in ("id", "signature")}
    assert signing_bytes(doc) == rfc8785.dumps(hashed)


@FAST
@given(st.fixed_dictionaries({name: SCALARS for name in BLOCK_HEADER_MEMBERS}))
def test_header_bytes_equal_rfc8785(header: dict[str, Any]) -> None:
    assert header_bytes(header) == rfc8785.dumps(header)


def test_values_with_no_canonical_form_are_refused() -> None:
    for value in (math.nan, math.inf, 2**53, "\ud800"):
        _fails("not_canonical", signing_bytes, {"ref": value})


def test_amounts_are_written_as_jcs_numbers() -> None:
    body = transaction_body(
        tx_type=TxType.ESCROW_RELEASE,
        sender=ESCROW,
        recipient=MINER,
        amount_micro=50_000,
        fee_micro=1,
        ref="job_1",
        timestamp=5,
    )
    assert body["amount"] == 0.05
    assert b'"amount":0.05' in signing_bytes(body)
    assert b'"fee":0.000001' in signing_bytes(body)
    whole = transaction_body(
        tx_type=TxType.MINT,
        sender=None,
        recipient=ALICE,
        amount_micro=5_000_000,
        fee_micro=0,
        ref=None,
        timestamp=5,
    )
    assert signing_bytes(whole) == (
        b'{"amount":5,"fee":0,"from":null,"ref":null,"timestamp":5,'
        b'"to":"client_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","type":"mint"}'
    )


def test_builders_refuse_what_has_no_place_in_a_transaction() -> None:
    with pytest.raises(ValueError):
        _body_with(amount_micro=-1)
    with pytest.raises(ValueError):
        _body_with(fee_micro=True)
    with pytest.raises(ValueError):
        _body_with(timestamp=1.5)
    with pytest.raises(ValueError):
        _body_with(extra={"amount": 1})
    with pytest.raises(ValueError):
        _body_with(extra={"signature": {}})
    with pytest.raises(ValueError):
        finish_transaction(finish_transaction(_body()))


def _body_with(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "tx_type": TxType.TRANSFER,
        "sender": ALICE,
        "recipient": BOB,
        "amount_micro": 1,
        "fee_micro": 0,
        "ref": None,
        "timestamp": 1,
        "extra": {"nonce": 1},
    }
    arguments.update(overrides)
    return transaction_body(**arguments)


# --- parsing ----------------------------------------------------------------------------------


@FAST
@given(bodies())
def test_parse_reads_back_what_was_built(body: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(finish_transaction(body)))
    tx = Transaction.parse(doc)
    assert tx.id == doc["id"]
    assert tx.tx_type.value == body["type"]
    assert (tx.sender, tx.recipient, tx.ref, tx.timestamp) == (
        body["from"],
        body["to"],
        body["ref"],
        body["timestamp"],
    )
    assert to_ait(tx.amount_micro) == body["amount"]
    assert to_ait(tx.fee_micro) == body["fee"]
    assert tx.document == doc
    assert tx.nonce == body.get("nonce")
    assert tx.receipt_id == body.get("receipt_id")
    assert tx.signature is None


@FAST
@given(
    st.one_of(st.floats(min_value=0, max_value=2e9), MICRO.map(to_ait), st.integers(0, 2 * 10**9))
)
def test_parse_reads_amounts_as_the_receipt_reader_does(value: float) -> None:
    try:
        expected: int | None = amount_micro(value, "amount")
    except VerificationFailed:
        expected = None
    try:
        got: int | None = Transaction.parse(_doc(amount=value)).amount_micro
    except VerificationFailed as exc:
        assert exc.error_code == "invalid_amount"
        got = None
    assert got == expected


@FAST
@given(MICRO)
def test_every_whole_micro_amount_reads_back_exactly(micro: int) -> None:
    doc = json.loads(json.dumps(_doc(amount=to_ait(micro))))
    assert Transaction.parse(doc).amount_micro == micro


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"amount": True}, "invalid_amount"),
        ({"fee": False}, "invalid_amount"),
        ({"amount": 0.0000001}, "invalid_amount"),
        ({"amount": 1.0000001}, "invalid_amount"),
        ({"fee": 0.1234567}, "invalid_amount"),
        ({"amount": -1}, "invalid_amount"),
        ({"amount": -0.5}, "invalid_amount"),
        ({"amount": "1.5"}, "invalid_amount"),
        ({"amount": None}, "invalid_amount"),
        ({"amount": 10**9 + 1}, "invalid_amount"),
        ({"amount": 1e10}, "invalid_amount"),
        ({"amount": math.nan}, "invalid_amount"),
        ({"amount": math.inf}, "invalid_amount"),
        ({"timestamp": True}, "malformed_transaction"),
        ({"timestamp": 1.0}, "malformed_transaction"),
        ({"timestamp": -1}, "malformed_transaction"),
        ({"timestamp": "1760000000"}, "malformed_transaction"),
        ({"nonce": True}, "malformed_transaction"),
        ({"nonce": -1}, "malformed_transaction"),
        ({"type": "burn"}, "unknown_transaction_type"),
        ({"type": "Transfer"}, "unknown_transaction_type"),
        ({"type": 1}, "unknown_transaction_type"),
        ({"from": 5}, "malformed_transaction"),
        ({"from": ""}, "malformed_transaction"),
        ({"to": ["b"]}, "malformed_transaction"),
        ({"ref": 3}, "malformed_transaction"),
        ({"receipt_id": 3}, "malformed_transaction"),
        ({"signature": "sig"}, "malformed_transaction"),
        ({"memo": "hi"}, "malformed_transaction"),
        ({"ref": "\ud800"}, "not_canonical"),
    ],
)
def test_parse_refuses_malformed_members(changes: dict[str, Any], code: str) -> None:
    _fails(code, Transaction.parse, _doc(**changes))


@pytest.mark.parametrize(
    "member", ["id", "type", "from", "to", "amount", "fee", "ref", "timestamp"]
)
def test_parse_refuses_a_missing_member(member: str) -> None:
    doc = _doc()
    del doc[member]
    _fails("malformed_transaction", Transaction.parse, doc)


def test_parse_refuses_a_wrong_id() -> None:
    doc = _doc()
    Transaction.parse(doc)
    _fails("bad_transaction_id", Transaction.parse, {**doc, "id": "0" * 64})
    _fails("bad_transaction_id", Transaction.parse, {**doc, "amount": 1.6})
    _fails("malformed_transaction", Transaction.parse, {**doc, "id": doc["id"].upper()})
    _fails("malformed_transaction", Transaction.parse, {**doc, "id": doc["id"][:63]})
    _fails("malformed_transaction", Transaction.parse, [doc])


def test_parse_accepts_integers_and_floats_for_one_amount_alike() -> None:
    as_int = Transaction.parse(_doc(amount=2))
    as_float = Transaction.parse(_doc(amount=2.0))
    assert as_int.amount_micro == as_float.amount_micro == 2_000_000
    assert as_int.id == as_float.id


# --- the replay rule --------------------------------------------------------------------------

ACCOUNTS = [ALICE, BOB, MINER, TREASURY, ESCROW]
USERS = [ALICE, BOB, MINER]
AMOUNTS = st.sampled_from([0, 1, 10, 999, 10**6]) | st.integers(min_value=0, max_value=3 * 10**6)
FEES = st.sampled_from([0, 0, 1, 50]) | st.integers(min_value=0, max_value=10**5)
Op = tuple[TxType, str | None, str | None, int, int]


@st.composite
def well_typed_ops(draw: st.DrawFn) -> Op:
    """Operations whose parties fit their type (balances may still refuse them)."""
    kind = draw(st.sampled_from(list(TxType)))
    user = st.sampled_from(USERS)
    if kind is TxType.MINT:
        return kind, None, draw(st.sampled_from([*USERS, TREASURY])), draw(AMOUNTS), 0
    if kind is TxType.RECEIPT:
        return kind, None, None, 0, 0
    if kind is TxType.TRANSFER:
        sender, recipient = draw(
            st.lists(st.sampled_from([*USERS, TREASURY]), min_size=2, max_size=2, unique=True)
        )
        return kind, sender, recipient, draw(AMOUNTS), draw(FEES)
    if kind is TxType.ESCROW_HOLD:
        return kind, draw(user), ESCROW, draw(AMOUNTS), draw(FEES)
    if kind is TxType.TRADE_FILL:
        seller, buyer = draw(st.lists(user, min_size=2, max_size=2, unique=True))
        return kind, seller, buyer, draw(AMOUNTS), draw(FEES)
    return kind, ESCROW, draw(user), draw(AMOUNTS), draw(FEES)


ANY_OPS = st.tuples(
    st.sampled_from(list(TxType)),
    st.sampled_from([None, *ACCOUNTS]),
    st.sampled_from([None, *ACCOUNTS]),
    AMOUNTS,
    FEES,
)
# Mostly operations that make sense, with arbitrary ones mixed in.
OPS = st.one_of(well_typed_ops(), well_typed_ops(), well_typed_ops(), ANY_OPS)


def _build(op: Op, serial: int) -> Transaction:
    tx_type, sender, recipient, amount, fee = op
    extra: dict[str, Any] = {"nonce": serial}
    ref: str | None = f"job_{serial}"
    if tx_type is TxType.RECEIPT:
        extra["receipt_id"] = f"rcpt_{serial}"
        ref = RECEIPT_REF
    if tx_type is TxType.TRADE_FILL:
        extra["quote_amount"] = 1.5
        ref = f"trd_{serial}"
    body = transaction_body(
        tx_type=tx_type,
        sender=sender,
        recipient=recipient,
        amount_micro=amount,
        fee_micro=fee,
        ref=ref,
        timestamp=1_000 + serial,
        extra=extra,
    )
    return Transaction.parse(finish_transaction(body))


def _model_allows(tx: Transaction) -> bool:
    """The type rules of section 3, written out again."""
    s, r, kind = tx.sender, tx.recipient, tx.tx_type
    user = {ALICE, BOB, MINER}
    if kind is TxType.MINT:
        return s is None and r is not None and r != ESCROW and tx.fee_micro == 0
    if kind is TxType.RECEIPT:
        return s is None and r is None and tx.amount_micro == 0 and tx.fee_micro == 0
    if kind is TxType.TRANSFER:
        return None not in (s, r) and s != r and ESCROW not in (s, r)
    if kind is TxType.ESCROW_HOLD:
        return s in user and r == ESCROW
    if kind is TxType.TRADE_FILL:
        return s in user and r in user and s != r
    return s == ESCROW and r in user


def _snapshot(state: LedgerState) -> tuple[dict[str, int], int, int]:
    return dict(state.balances), state.supply_micro, state.fees_micro


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=40), st.lists(st.sampled_from(ACCOUNTS[:3]), max_size=3))
def test_random_interleavings_keep_every_invariant(ops: list[Op], grants: list[str]) -> None:
    state = LedgerState()
    model = dict.fromkeys(ACCOUNTS, 0)
    minted = fees = 0
    serial = 0
    # Start-up grants, so transfers and holds have something to move.
    for address in grants:
        serial += 1
        state.apply(_build((TxType.MINT, None, address, 2 * 10**6, 0), serial))
        model[address] += 2 * 10**6
        minted += 2 * 10**6
    for op in ops:
        serial += 1
        tx = _build(op, serial)
        before = _snapshot(state)
        root_before = state.state_root()
        expected = dict(model)
        if tx.sender is not None:
            expected[tx.sender] -= tx.amount_micro + tx.fee_micro
        if tx.recipient is not None:
            expected[tx.recipient] += tx.amount_micro
        expected[TREASURY] += tx.fee_micro
        allowed = _model_allows(tx)
        solvent = all(value >= 0 for value in expected.values())
        try:
            state.apply(tx)
        except VerificationFailed as exc:
            # Refused: nothing changed at all.
            assert _snapshot(state) == before
            assert state.state_root() == root_before
            assert exc.error_code == ("negative_balance" if allowed else "invalid_transaction")
            assert not (allowed and solvent)
            continue
        assert allowed and solvent
        model = expected
        if tx.tx_type is TxType.MINT:
            minted += tx.amount_micro
        fees += tx.fee_micro
        # Supply changes only by mint; the balances always add up to it.
        assert state.supply_micro == minted
        assert sum(state.balances.values()) == state.supply_micro
        assert state.fees_micro == fees
        assert all(value > 0 for value in state.balances.values())
        assert {a: state.balance(a) for a in ACCOUNTS} == model
        assert state.state_root() == state_root(model)


def test_fees_go_to_the_treasury_exactly() -> None:
    state = LedgerState()
    state.apply(_build((TxType.MINT, None, ALICE, 10**6, 0), 1))
    state.apply(_build((TxType.ESCROW_HOLD, ALICE, ESCROW, 600_000, 0), 2))
    state.apply(_build((TxType.ESCROW_RELEASE, ESCROW, MINER, 475_000, 25_000), 3))
    state.apply(_build((TxType.ESCROW_REFUND, ESCROW, ALICE, 100_000, 0), 4))
    assert state.balances == {ALICE: 500_000, MINER: 475_000, TREASURY: 25_000}
    assert state.fees_micro == 25_000
    assert state.supply_micro == 10**6
    # A receipt moves nothing.
    receipt = _build((TxType.RECEIPT, None, None, 0, 0), 5)
    state.apply(receipt)
    assert state.balances == {ALICE: 500_000, MINER: 475_000, TREASURY: 25_000}
    # The treasury may pay out what it collected, with its own fee coming back to it.
    state.apply(_build((TxType.TRANSFER, TREASURY, BOB, 20_000, 5_000), 6))
    assert state.balances == {ALICE: 500_000, MINER: 475_000, TREASURY: 5_000, BOB: 20_000}
    _fails("negative_balance", state.apply, _build((TxType.TRANSFER, TREASURY, BOB, 5_001, 1), 7))


def test_an_account_that_reaches_zero_leaves_the_state() -> None:
    state = LedgerState()
    state.apply(_build((TxType.MINT, None, ALICE, 10, 0), 1))
    state.apply(_build((TxType.TRANSFER, ALICE, BOB, 10, 0), 2))
    assert state.balances == {BOB: 10}
    assert state.balance(ALICE) == 0


def test_a_copy_is_independent() -> None:
    state = LedgerState()
    state.apply(_build((TxType.MINT, None, ALICE, 10, 0), 1))
    copy = state.copy()
    copy.apply(_build((TxType.TRANSFER, ALICE, BOB, 4, 1), 2))
    assert state.balances == {ALICE: 10}
    assert copy.balances == {ALICE: 5, BOB: 4, TREASURY: 1}
    assert (state.fees_micro, copy.fees_micro) == (0, 1)


def test_mints_stop_at_total_supply() -> None:
    state = LedgerState()
    state.apply(_build((TxType.MINT, None, ALICE, MAX_SUPPLY_MICRO, 0), 1))
    _fails("invalid_transaction", state.apply, _build((TxType.MINT, None, BOB, 1, 0), 2))


def _parsed(**changes: Any) -> Transaction:
    """A transfer with members changed (a signature too), parsed with a correct id."""
    body = _body(**changes)
    return Transaction.parse({"id": transaction_id(body), **body})


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "mint", "from": None, "to": ALICE, "fee": 0.1},
        {"type": "mint", "from": None, "to": None},
        {"type": "mint", "from": None, "to": ESCROW},
        {"type": "mint", "from": ALICE, "to": BOB},
        {"type": "receipt", "from": None, "to": None, "amount": 0, "fee": 0, "ref": RECEIPT_REF},
        {"type": "receipt", "from": None, "to": None, "amount": 0, "fee": 0, "receipt_id": "r"},
        {
            "type": "receipt",
            "from": None,
            "to": None,
            "amount": 0,
            "fee": 0,
            "receipt_id": "r",
            "ref": RECEIPT_REF.upper(),
        },
        {
            "type": "receipt",
            "from": None,
            "to": ALICE,
            "amount": 0,
            "fee": 0,
            "receipt_id": "r",
            "ref": RECEIPT_REF,
        },
        {
            "type": "receipt",
            "from": None,
            "to": None,
            "amount": 1,
            "fee": 0,
            "receipt_id": "r",
            "ref": RECEIPT_REF,
        },
        {"receipt_id": "r"},
        {"to": ALICE},
        {"to": ESCROW},
        {"from": ESCROW},
        {"from": None},
        {"to": None},
        {"type": "escrow_hold", "to": ESCROW, "ref": "job_1", "from": TREASURY},
        {"type": "escrow_hold", "to": BOB, "ref": "job_1"},
        {"type": "escrow_hold", "to": ESCROW, "ref": None},
        {"type": "escrow_hold", "to": ESCROW, "ref": ""},
        {"type": "escrow_release", "from": ESCROW, "to": TREASURY, "ref": "job_1"},
        {"type": "escrow_release", "from": ALICE, "to": MINER, "ref": "job_1"},
        {"type": "escrow_refund", "from": ESCROW, "to": None, "ref": "job_1"},
        {"type": "escrow_hold", "to": ESCROW, "ref": "job_1", "signature": {}},
    ],
)
def test_type_rules_refuse_and_change_nothing(changes: dict[str, Any]) -> None:
    tx = _parsed(**changes)
    state = LedgerState({ALICE: 10**9, ESCROW: 10**9, TREASURY: 10**9})
    before = _snapshot(state)
    _fails("invalid_transaction", state.apply, tx)
    assert _snapshot(state) == before


def test_a_transfer_without_a_nonce_is_refused() -> None:
    body = _body()
    del body["nonce"]
    tx = Transaction.parse(finish_transaction(body))
    _fails("invalid_transaction", LedgerState({ALICE: 10**9}).apply, tx)


def test_system_account_names() -> None:
    assert frozenset({TREASURY, ESCROW}) == SYSTEM_ACCOUNTS
    assert GENESIS_PREV_HASH == "0" * 64
    assert MAX_BLOCK_TRANSACTIONS == 10_000


# --- roots ----------------------------------------------------------------------------------


def _naive_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _naive_mth(leaves[:k]) + _naive_mth(leaves[k:])).digest()


def _naive_state_root(balances: dict[str, int]) -> str:
    accounts = sorted((a for a in balances if balances[a]), key=lambda a: a.encode("utf-8"))
    leaves = [rfc8785.dumps({"address": a, "balance": to_ait(balances[a])}) for a in accounts]
    return _naive_mth(leaves).hex()


BALANCES = st.dictionaries(
    ADDRESS | st.sampled_from(["\uffff", "😀", "é", "Z", "a"]),
    st.sampled_from([0, 0, 1]) | MICRO,
    max_size=25,
)


@FAST
@given(BALANCES, st.randoms(use_true_random=False))
def test_state_root_is_the_rfc6962_hash_of_sorted_accounts(
    balances: dict[str, int], rng: random.Random
) -> None:
    expected = _naive_state_root(balances)
    assert state_root(balances) == expected
    shuffled = list(balances.items())
    rng.shuffle(shuffled)
    assert state_root(dict(shuffled)) == expected
    # Zero balances are not accounts of the state.
    assert state_root({**balances, "nobody": 0}) == expected
    assert LedgerState(balances).state_root() == expected
    for address, value in balances.items():
        if value:
            assert state_leaf(address, value) == rfc8785.dumps(
                {"address": address, "balance": to_ait(value)}
            )


def test_state_root_sorts_by_utf8_bytes_not_utf16() -> None:
    # U+FFFF sorts after U+1F600 in UTF-16 code units, before it in UTF-8 bytes.
    balances = {"😀": 1, "\uffff": 2}
    assert (
        state_root(balances)
        == _naive_mth(
            [
                rfc8785.dumps({"address": "\uffff", "balance": 0.000002}),
                rfc8785.dumps({"address": "😀", "balance": 0.000001}),
            ]
        ).hex()
    )


def test_state_root_of_no_accounts_is_the_empty_root() -> None:
    assert state_root({}) == hashlib.sha256(b"").hexdigest()
    assert LedgerState().state_root() == state_root({ALICE: 0})


@FAST
@given(st.lists(HASH, max_size=40))
def test_tx_root_hashes_the_raw_id_bytes(ids: list[str]) -> None:
    assert tx_root(ids) == _naive_mth([bytes.fromhex(i) for i in ids]).hex()


def test_tx_root_refuses_what_is_not_an_id() -> None:
    with pytest.raises(ValueError):
        tx_root(["ab"])
    with pytest.raises(ValueError):
        tx_root(["zz" * 32])


# --- blocks ---------------------------------------------------------------------------------


def _header(**changes: Any) -> dict[str, Any]:
    ids = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    header = block_header(
        height=1,
        prev_hash="ab" * 32,
        timestamp=1_760_000_000,
        tx_root=tx_root(ids),
        state_root=state_root({ALICE: 5}),
        tx_count=3,
        sealer=SEALER.key_id,
    )
    header.update(changes)
    return header


def test_block_hash_and_signature_round_trip() -> None:
    header = _header()
    assert list(header) == list(BLOCK_HEADER_MEMBERS)
    assert block_hash(header) == hashlib.sha256(rfc8785.dumps(header)).hexdigest()
    signature = sign_block(header, SEALER)
    assert signature["key_id"] == SEALER.key_id
    verify_block_signature(header, signature, KEYS)
    verify_block_signature(json.loads(json.dumps(header)), signature, KEYS)


@FAST
@given(st.sampled_from(BLOCK_HEADER_MEMBERS), st.data())
def test_tampering_with_any_header_member_breaks_the_signature(
    member: str, data: st.DataObject
) -> None:
    header = _header()
    signature = sign_block(header, SEALER)
    original = header[member]
    if isinstance(original, int):
        value: Any = data.draw(UNIX.filter(lambda v: v != original) | st.just(True))
    elif member == "sealer":
        value = data.draw(st.sampled_from([OTHER_SEALER.key_id, "0" * 16, original.upper()]))
    else:
        value = data.draw(HASH.filter(lambda v: v != original))
    tampered = {**header, member: value}
    _fails(
        {"bad_signature", "sealer_mismatch", "malformed_block"},
        verify_block_signature,
        tampered,
        signature,
        KEYS,
    )


def test_block_signature_checks_key_and_sealer() -> None:
    header = _header()
    signature = sign_block(header, SEALER)
    # Signed by a key other than the sealer named in the header.
    _fails(
        "sealer_mismatch", verify_block_signature, header, sign_block(header, OTHER_SEALER), KEYS
    )
    # A key the verifier did not pin, or one that is not a coordinator's.
    other = _header(sealer=OTHER_SEALER.key_id)
    _fails("unknown_key", verify_block_signature, other, sign_block(other, OTHER_SEALER), KEYS)
    miner_ring = KeyRing([PublicKey.of(SEALER, MINER)])
    _fails("unknown_key", verify_block_signature, header, signature, miner_ring)
    # A key that was not yet valid at the block's timestamp.
    later = datetime.fromtimestamp(header["timestamp"], UTC) + timedelta(days=1)
    late_ring = KeyRing([PublicKey.of(SEALER, "coordinator", valid_from=later)])
    _fails("key_not_valid", verify_block_signature, header, signature, late_ring)
    # Extra or missing members, a malformed signature object.
    _fails("malformed_block", verify_block_signature, {**header, "x": 1}, signature, KEYS)
    _fails("malformed_signature", verify_block_signature, header, {**signature, "sig": "AA"}, KEYS)
    _fails("malformed_signature", verify_block_signature, header, None, KEYS)


@pytest.mark.parametrize(
    "changes",
    [
        {"height": -1},
        {"height": 1.0},
        {"timestamp": False},
        {"tx_count": MAX_BLOCK_TRANSACTIONS + 1},
        {"prev_hash": "AB" * 32},
        {"tx_root": "ab" * 31},
        {"state_root": None},
        {"sealer": "0" * 15},
    ],
)
def test_check_block_header_refuses_malformed_headers(changes: dict[str, Any]) -> None:
    _fails("malformed_block", check_block_header, _header(**changes))


def test_block_links() -> None:
    genesis = _header(height=0, prev_hash=GENESIS_PREV_HASH, timestamp=100)
    check_block_link(genesis, None)
    _fails("bad_height", check_block_link, _header(height=1, prev_hash=GENESIS_PREV_HASH), None)
    _fails("bad_prev_hash", check_block_link, _header(height=0), None)
    child = _header(height=1, prev_hash=block_hash(genesis), timestamp=100)
    check_block_link(child, genesis)
    _fails("bad_height", check_block_link, {**child, "height": 2}, genesis)
    _fails("bad_prev_hash", check_block_link, {**child, "prev_hash": "ab" * 32}, genesis)
    _fails("timestamp_decreased", check_block_link, {**child, "timestamp": 99}, genesis)


def test_block_contents_and_inclusion_proofs() -> None:
    txs = [_build((TxType.MINT, None, ALICE, 10 + i, 0), i) for i in range(5)]
    ids = [tx.id for tx in txs]
    header = _header(tx_root=tx_root(ids), tx_count=5, timestamp=1_004)
    check_block_contents(header, txs)
    _fails("tx_count_mismatch", check_block_contents, header, txs[:4])
    _fails("tx_root_mismatch", check_block_contents, header, list(reversed(txs)))
    _fails("duplicate_transaction", check_block_contents, header, [*txs[:4], txs[0]])
    _fails("transaction_after_block", check_block_contents, {**header, "timestamp": 1_003}, txs)
    digest = block_hash(header)
    for index in range(5):
        proof = inclusion_proof(ids, index, block_height=1, block_hash=digest)
        assert proof["tx_root"] == header["tx_root"]
        verify_inclusion_proof(json.loads(json.dumps(proof)), header)
        wrong_leaf = {**proof, "leaf_index": (index + 1) % 5}
        _fails("bad_proof", verify_inclusion_proof, wrong_leaf, header)
        _fails("bad_proof", verify_inclusion_proof, {**proof, "tx_id": "ab" * 32}, header)
        _fails("proof_mismatch", verify_inclusion_proof, {**proof, "block_hash": "ab" * 32}, header)
        _fails("proof_mismatch", verify_inclusion_proof, {**proof, "tree_size": 6}, header)
        _fails("malformed_proof", verify_inclusion_proof, {**proof, "audit_path": ["x"]}, header)
        _fails("malformed_proof", verify_inclusion_proof, {**proof, "leaf_index": True}, header)
    with pytest.raises(ValueError):
        inclusion_proof(ids, 5, block_height=1, block_hash=digest)


# --- sender signatures ------------------------------------------------------------------------

ALICE_KEYS = KeyRing([PublicKey.of(ALICE_KEY, ALICE)])


def _signed_transfer(key: SigningKey = ALICE_KEY, **changes: Any) -> Transaction:
    body = _body(**changes)
    return Transaction.parse(
        json.loads(json.dumps(finish_transaction(body, sign_transaction(body, key))))
    )


def test_a_signed_transfer_verifies() -> None:
    tx = _signed_transfer()
    assert tx.signature is not None
    assert tx.id == transaction_id(_body())
    verify_transaction_signature(tx, ALICE_KEYS)
    check_sender_signature(tx, ALICE_KEYS)
    assert requires_sender_signature(tx, ALICE_KEYS)
    LedgerState({ALICE: 10**7}).apply(tx)


def test_sender_signature_failures() -> None:
    tx = _signed_transfer()
    # Signed by a key that is not the sender's.
    bob_ring = KeyRing([PublicKey.of(ALICE_KEY, BOB)])
    _fails("unknown_key", verify_transaction_signature, tx, bob_ring)
    _fails("unknown_key", verify_transaction_signature, _signed_transfer(SEALER), ALICE_KEYS)
    # A key not valid at the transaction's timestamp.
    later = datetime.fromtimestamp(tx.timestamp, UTC) + timedelta(seconds=1)
    late = KeyRing([PublicKey.of(ALICE_KEY, ALICE, valid_from=later)])
    _fails("key_not_valid", verify_transaction_signature, tx, late)
    assert not requires_sender_signature(tx, late)
    # A signature over other bytes.
    other = _signed_transfer()
    forged_doc = dict(other.document)
    forged_doc["signature"] = sign_transaction({**_body(), "amount": 9.0}, ALICE_KEY)
    _fails("bad_signature", verify_transaction_signature, Transaction.parse(forged_doc), ALICE_KEYS)
    # An unsigned transfer from an account with a current key.
    unsigned = _parsed()
    assert requires_sender_signature(unsigned, ALICE_KEYS)
    _fails("missing_signature", check_sender_signature, unsigned, ALICE_KEYS)
    check_sender_signature(unsigned, KeyRing())  # no key: no signature needed
    _fails("missing_signature", verify_transaction_signature, unsigned, ALICE_KEYS)
    # Changing a signed member changes the id, so the transaction no longer parses.
    changed = {**tx.document, "amount": 2.5}
    _fails("bad_transaction_id", Transaction.parse, changed)


@settings(max_examples=200, deadline=None)
@given(
    amount=st.integers(min_value=0, max_value=10**15),
    fee=st.integers(min_value=0, max_value=10**6),
    nonce=st.none() | st.integers(min_value=0, max_value=2**53 - 1),
    ref=st.none() | st.text(max_size=20),
    signed=st.booleans(),
)
def test_document_bytes_equal_rfc8785_of_the_whole_transaction(
    amount: int, fee: int, nonce: int | None, ref: str | None, signed: bool
) -> None:
    from aitbc.domain.ledger import document_bytes

    body = transaction_body(
        tx_type=TxType.TRANSFER,
        sender="client_a",
        recipient="client_b",
        amount_micro=amount,
        fee_micro=fee,
        ref=ref,
        timestamp=1_770_000_000,
        extra=None if nonce is None else {"nonce": nonce},
    )
    signature = {"alg": "ed25519", "key_id": "0" * 16, "sig": "A" * 86} if signed else None
    document = finish_transaction(body, signature)
    assert document_bytes(document) == rfc8785.dumps(document)


@settings(max_examples=200, deadline=None)
@given(
    amount=st.integers(min_value=0, max_value=10**15),
    ref=st.none() | st.text(max_size=20),
    nonce=st.none() | st.integers(min_value=0, max_value=2**53 - 1),
    receipt=st.none() | st.text(min_size=1, max_size=10),
    signed=st.booleans(),
)
def test_encode_transaction_is_finish_plus_rfc8785(
    amount: int, ref: str | None, nonce: int | None, receipt: str | None, signed: bool
) -> None:
    from aitbc.domain.ledger import encode_transaction

    extra: dict[str, object] = {}
    if nonce is not None:
        extra["nonce"] = nonce
    if receipt is not None:
        extra["receipt_id"] = receipt
    body = transaction_body(
        tx_type=TxType.TRANSFER,
        sender="client_a",
        recipient="client_é",
        amount_micro=amount,
        fee_micro=0,
        ref=ref,
        timestamp=1_770_000_000,
        extra=extra or None,
    )
    signature = {"alg": "ed25519", "key_id": "0" * 16, "sig": "A" * 86} if signed else None
    document, encoded = encode_transaction(body, signature)
    assert document == finish_transaction(body, signature)
    assert encoded == rfc8785.dumps(document)
    # A member outside the schema takes the library's path, with the same result.
    odd = {**body, "memo": "x"}
    document, encoded = encode_transaction(odd)
    assert encoded == rfc8785.dumps(document) and document["id"] == transaction_id(odd)
