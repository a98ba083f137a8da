"""The ledger: transactions, the replay rule, account state and block headers
(DESIGN.md section 3).

A **transaction** is ``{"id", "type", "from", "to", "amount", "fee", "ref",
"timestamp", ...}``. Its ``id`` is the SHA-256 hex of the canonical bytes (RFC 8785)
of the transaction without ``id`` and ``signature``; a sender-signed transfer carries
``signature``, the sender's key over those same bytes, and an unsigned transaction
has no ``signature`` member at all. Amounts are AIT numbers (at most 6 decimals);
inside they are integers of µAIT. Extra members: ``nonce`` (an integer, required on
a ``transfer``, allowed on any type), ``receipt_id`` (a ``receipt`` transaction's,
and only there) and ``quote_amount`` (a ``trade_fill``'s, and only there: a number
with at most 6 decimals).

The **replay rule** is the same for every type: ``from`` loses ``amount + fee``,
``to`` gains ``amount``, ``treasury`` gains ``fee``, and no balance is ever negative
after a transaction. What each type may say (:func:`check_transaction_rules`):

- ``mint``: ``from`` null, ``to`` any account but ``escrow``, fee 0; supply grows by
  ``amount`` and never beyond 10^9 AIT.
- ``receipt``: ``from`` and ``to`` null, amount and fee 0, a ``receipt_id`` string and
  a ``ref`` of 64 lowercase hex (the SHA-256 of the signed receipt's canonical bytes).
- ``escrow_hold``: a user account → ``escrow``; ``escrow_release`` and
  ``escrow_refund``: ``escrow`` → a user account. Their ``ref`` (the job or trade id)
  is a non-empty string. A user account is any address but ``treasury`` and ``escrow``.
- ``transfer``: between two different accounts, neither of them ``escrow`` (escrow
  moves only by the escrow types). ``treasury`` may send and receive, so collected
  fees can be paid out. A transfer carries a ``nonce``, and must be signed when its
  sender has a key valid at its timestamp (:func:`check_sender_signature`); no other
  type carries a ``signature`` (the coordinator's block signature vouches for them).
- ``trade_fill`` (section 7): one exchange fill's AIT leg, seller (``from``) → buyer
  (``to``), two different user accounts; ``amount`` is the fill less the buyer's
  fee, ``fee`` both sides' fees; ``ref`` the exchange trade id; ``quote_amount`` the
  quote asset the buyer paid the seller, off chain.

A **block header** is ``{"height", "prev_hash", "timestamp", "tx_root", "state_root",
"tx_count", "sealer"}``; its hash is the SHA-256 hex of its canonical bytes and its
signature the sealer's (a coordinator key) over the same bytes. ``tx_root`` and
``state_root`` are RFC 6962 tree hashes (``aitbc.domain.merkle``).

Ids are computed for every transaction the coordinator writes and recomputed for
every transaction a verifier reads, so the canonical bytes of transactions, headers
and state leaves are built member by member (:func:`_value_bytes`): the forms JCS
writes without any choice (safe integers, null, booleans, printable ASCII strings,
fixed-notation floats) directly, everything else by the ``rfc8785`` library. The unit
tests check the result equals ``rfc8785.dumps`` of the whole object.

Pure: no I/O, no clock; keys and times come in as arguments.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from aitbc.domain import merkle
from aitbc.domain.canonical import MAX_SAFE_INTEGER, canonical_bytes
from aitbc.domain.money import MAX_SUPPLY_MICRO, MICRO_PER_AIT, to_ait
from aitbc.domain.signing import COORDINATOR_OWNER, KeyRing, SigningKey, read_signature_object
from aitbc.errors import VerificationFailed


class TxType(StrEnum):
    """The ledger's transaction types (sections 3 and 7)."""

    MINT = "mint"
    TRANSFER = "transfer"
    ESCROW_HOLD = "escrow_hold"
    ESCROW_RELEASE = "escrow_release"
    ESCROW_REFUND = "escrow_refund"
    RECEIPT = "receipt"
    # The AIT leg of one exchange fill (seller -> buyer), carrying its quote leg.
    TRADE_FILL = "trade_fill"


TREASURY = "treasury"
ESCROW = "escrow"
SYSTEM_ACCOUNTS = frozenset({TREASURY, ESCROW})
GENESIS_PREV_HASH = "0" * 64
MAX_BLOCK_TRANSACTIONS = 10_000

REQUIRED_TRANSACTION_MEMBERS = ("id", "type", "from", "to", "amount", "fee", "ref", "timestamp")
OPTIONAL_TRANSACTION_MEMBERS = ("nonce", "receipt_id", "quote_amount", "signature")
TRANSACTION_MEMBERS = REQUIRED_TRANSACTION_MEMBERS + OPTIONAL_TRANSACTION_MEMBERS
BLOCK_HEADER_MEMBERS = (
    "height",
    "prev_hash",
    "timestamp",
    "tx_root",
    "state_root",
    "tx_count",
    "sealer",
)
INCLUSION_PROOF_MEMBERS = (
    "tx_id",
    "block_height",
    "block_hash",
    "leaf_index",
    "tree_size",
    "audit_path",
    "tx_root",
)
# Members outside what the id covers.
UNHASHED_MEMBERS = frozenset({"id", "signature"})

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_TYPES: dict[str, TxType] = {member.value: member for member in TxType}
_MAX_SUPPLY_AIT = MAX_SUPPLY_MICRO // MICRO_PER_AIT
_sha256 = hashlib.sha256


# --- canonical bytes ----------------------------------------------------------------------


def _value_bytes(value: Any) -> bytes:
    """RFC 8785 bytes of one JSON value, equal to ``canonical_bytes(value)``.

    The shortcuts are the cases where JCS leaves no choice and ``rfc8785`` itself does
    exactly this: an integer of at most 2^53 - 1 is its decimal digits; a string of
    printable ASCII without ``"`` or ``\\`` is itself in quotes; a float in
    [1e-4, 1e16) is Python's shortest round-trip form (which has no exponent there)
    less a trailing ``.0``. Anything else goes to the library.
    """
    if value is None:
        return b"null"
    kind = type(value)
    if kind is str:
        text: str = value
        if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
            return b'"' + text.encode("ascii") + b'"'
    elif kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return str(value).encode("ascii")
    elif kind is float:
        if 1e-4 <= value < 1e16:
            shortest = repr(value)
            return (shortest[:-2] if shortest.endswith(".0") else shortest).encode("ascii")
    elif kind is bool:
        return b"true" if value else b"false"
    return canonical_bytes(value)


def _member_prefixes(names: Sequence[str]) -> dict[str, bytes]:
    return {name: canonical_bytes(name) + b":" for name in names}


_TX_PREFIXES = _member_prefixes([n for n in TRANSACTION_MEMBERS if n not in UNHASHED_MEMBERS])
_HEADER_PREFIXES = _member_prefixes(BLOCK_HEADER_MEMBERS)


def _object_bytes(
    obj: Mapping[str, Any], prefixes: Mapping[str, bytes], skip: frozenset[str]
) -> bytes:
    """Canonical bytes of ``obj`` less the members in ``skip``; members named in
    ``prefixes`` (plain ASCII, so Python's sort is RFC 8785's) are joined here, an
    object with any other member goes to the library whole."""
    try:
        parts = [
            prefixes[name] + _value_bytes(obj[name]) for name in sorted(obj) if name not in skip
        ]
    except (KeyError, TypeError):
        return canonical_bytes({name: value for name, value in obj.items() if name not in skip})
    return b"{" + b",".join(parts) + b"}"


def signing_bytes(tx: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a transaction without ``id`` and ``signature``: what its id
    hashes and what a sender's signature covers."""
    return _object_bytes(tx, _TX_PREFIXES, UNHASHED_MEMBERS)


_DOCUMENT_PREFIXES = _member_prefixes(TRANSACTION_MEMBERS)


def document_bytes(tx: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a whole transaction (with ``id`` and any ``signature``): what
    the coordinator stores and serves."""
    return _object_bytes(tx, _DOCUMENT_PREFIXES, frozenset())


def transaction_id(tx: Mapping[str, Any]) -> str:
    """SHA-256 hex of :func:`signing_bytes`."""
    return _sha256(signing_bytes(tx)).hexdigest()


# --- building transactions -------------------------------------------------------------------


def _check_micro(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SUPPLY_MICRO:
        raise ValueError(f"{what} must be an integer of µAIT in [0, 10^15], got {value!r}")


def transaction_body(
    *,
    tx_type: TxType,
    sender: str | None,
    recipient: str | None,
    amount_micro: int,
    fee_micro: int,
    ref: str | None,
    timestamp: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A transaction before its id (and signature): ``{"type", "from", "to", "amount",
    "fee", "ref", "timestamp", **extra}``, amounts as AIT numbers. ``extra`` holds
    ``nonce`` (transfers) or ``receipt_id`` (receipt transactions). ``ValueError`` for
    a negative amount, a non-integer timestamp, or ``extra`` naming a core member."""
    _check_micro(amount_micro, "amount")
    _check_micro(fee_micro, "fee")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ValueError(f"timestamp must be integer Unix seconds, got {timestamp!r}")
    if not 0 <= timestamp <= MAX_SAFE_INTEGER:
        raise ValueError(f"timestamp {timestamp} is out of range")
    body: dict[str, Any] = {
        "type": TxType(tx_type).value,
        "from": sender,
        "to": recipient,
        "amount": to_ait(amount_micro),
        "fee": to_ait(fee_micro),
        "ref": ref,
        "timestamp": timestamp,
    }
    if extra:
        clash = sorted(name for name in extra if name in body or name in UNHASHED_MEMBERS)
        if clash:
            raise ValueError(f"extra members {clash} would replace core members")
        body.update(extra)
    return body


def finish_transaction(
    body: Mapping[str, Any], signature: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The complete transaction: ``id`` first, then ``body``, then ``signature`` when the
    sender signed (never a null ``signature``). ``body`` is not changed; ``ValueError``
    if it already has an ``id`` or a ``signature``."""
    if "id" in body or "signature" in body:
        raise ValueError("a transaction body has no id or signature member")
    document: dict[str, Any] = {"id": transaction_id(body)}
    document.update(body)
    if signature is not None:
        document["signature"] = dict(signature)
    return document


def encode_transaction(
    body: Mapping[str, Any], signature: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], bytes]:
    """:func:`finish_transaction` and :func:`document_bytes` of the result in one pass:
    each member is encoded once, for the id's bytes and the document's (what the
    coordinator does for every transaction it writes)."""
    if "id" in body or "signature" in body:
        raise ValueError("a transaction body has no id or signature member")
    try:
        parts = {name: _TX_PREFIXES[name] + _value_bytes(body[name]) for name in body}
    except (KeyError, TypeError):  # a member outside the schema: the library, whole
        finished = finish_transaction(body, signature)
        return finished, document_bytes(finished)
    tx_id = _sha256(b"{" + b",".join([parts[name] for name in sorted(parts)]) + b"}").hexdigest()
    document: dict[str, Any] = {"id": tx_id}
    document.update(body)
    parts["id"] = _DOCUMENT_PREFIXES["id"] + b'"' + tx_id.encode("ascii") + b'"'
    if signature is not None:
        document["signature"] = dict(signature)
        parts["signature"] = _DOCUMENT_PREFIXES["signature"] + canonical_bytes(
            document["signature"]
        )
    return document, b"{" + b",".join([parts[name] for name in sorted(parts)]) + b"}"


def sign_transaction(body: Mapping[str, Any], key: SigningKey) -> dict[str, str]:
    """The sender's signature object over a transaction body (its :func:`signing_bytes`)."""
    return key.signature_object(signing_bytes(body))


# --- reading transactions ---------------------------------------------------------------------


def _malformed(tx_id: Any, why: str) -> VerificationFailed:
    label = tx_id if isinstance(tx_id, str) else "?"
    return VerificationFailed(f"transaction {label}: {why}", error_code="malformed_transaction")


def _micro(value: Any, member: str, tx_id: Any) -> int:
    """An AIT amount from JSON as µAIT: an integer, or a float that is the double nearest
    a whole number of µAIT (what the number written with at most 6 decimals reads as);
    ``invalid_amount`` for a negative one, a bool, more decimals, more than 10^9 AIT."""
    kind = type(value)
    if kind is int:
        if 0 <= value <= _MAX_SUPPLY_AIT:
            return int(value * MICRO_PER_AIT)
    elif kind is float and 0.0 <= value <= _MAX_SUPPLY_AIT:  # also refuses NaN
        # For value == k / 10^6 (k <= 10^15) the product is within 0.25 of k, so the
        # rounding finds k; no other double passes the equality check.
        number: float = value
        micro = round(number * MICRO_PER_AIT)
        if micro / MICRO_PER_AIT == number:
            return micro
    label = tx_id if isinstance(tx_id, str) else "?"
    raise VerificationFailed(
        f"transaction {label}: {member} {value!r} is not an AIT amount "
        "(a number >= 0 with at most 6 decimals, at most 10^9)",
        error_code="invalid_amount",
    )


def _safe_int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER


def _address(value: Any, member: str, tx_id: Any) -> str | None:
    if value is None or (type(value) is str and value):
        return value
    raise _malformed(tx_id, f"{member} is neither an address (a non-empty string) nor null")


class Transaction(NamedTuple):
    """A transaction read and checked for shape, with amounts in µAIT; ``document`` is
    the JSON object exactly as hashed (a copy of what was parsed). Immutable; a named
    tuple rather than a frozen dataclass because a verifier builds one per transaction
    and a tuple is three times quicker to make."""

    id: str
    tx_type: TxType
    sender: str | None
    recipient: str | None
    amount_micro: int
    fee_micro: int
    ref: str | None
    timestamp: int
    document: Mapping[str, Any]

    @property
    def nonce(self) -> int | None:
        """The sender's nonce (transfers), or None."""
        value = self.document.get("nonce")
        return value if type(value) is int else None

    @property
    def receipt_id(self) -> str | None:
        """The receipt a ``receipt`` transaction records, or None."""
        value = self.document.get("receipt_id")
        return value if type(value) is str else None

    @property
    def signature(self) -> Mapping[str, Any] | None:
        """The sender's signature object, or None when unsigned."""
        value = self.document.get("signature")
        return value if isinstance(value, Mapping) else None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Transaction:
        """Read a transaction document strictly; :class:`VerificationFailed` at the first
        problem: ``malformed_transaction`` (not an object, a member missing or unknown,
        a member of the wrong type), ``unknown_transaction_type``, ``invalid_amount``,
        ``not_canonical`` (a value with no canonical form), ``bad_transaction_id`` (the
        id is not the hash of the rest). The rules of each type are
        :func:`check_transaction_rules`'."""
        if not isinstance(doc, Mapping):
            raise _malformed(None, "is not a JSON object")
        tx_id = doc.get("id")
        missing = [name for name in REQUIRED_TRANSACTION_MEMBERS if name not in doc]
        if missing:
            raise _malformed(tx_id, f"lacks {', '.join(missing)}")
        if len(doc) > len(REQUIRED_TRANSACTION_MEMBERS):
            unknown = sorted(str(name) for name in doc if name not in TRANSACTION_MEMBERS)
            if unknown:
                raise _malformed(tx_id, f"has unknown members {unknown}")
        if type(tx_id) is not str or not _HEX64.fullmatch(tx_id):
            raise _malformed(tx_id, "id is not 64 lowercase hex digits")
        type_name = doc["type"]
        tx_type = _TYPES.get(type_name) if type(type_name) is str else None
        if tx_type is None:
            if isinstance(type_name, TxType):
                tx_type = type_name
            else:
                raise VerificationFailed(
                    f"transaction {tx_id}: unknown type {type_name!r}",
                    error_code="unknown_transaction_type",
                )
        sender = _address(doc["from"], "from", tx_id)
        recipient = _address(doc["to"], "to", tx_id)
        amount = _micro(doc["amount"], "amount", tx_id)
        fee = _micro(doc["fee"], "fee", tx_id)
        ref = doc["ref"]
        if ref is not None and type(ref) is not str:
            raise _malformed(tx_id, "ref is neither a string nor null")
        timestamp = doc["timestamp"]
        if not _safe_int(timestamp):
            raise _malformed(tx_id, "timestamp is not integer Unix seconds")
        if "nonce" in doc and not _safe_int(doc["nonce"]):
            raise _malformed(tx_id, "nonce is not a non-negative integer")
        if "receipt_id" in doc and (type(doc["receipt_id"]) is not str or not doc["receipt_id"]):
            raise _malformed(tx_id, "receipt_id is not a non-empty string")
        if "signature" in doc and not isinstance(doc["signature"], Mapping):
            raise _malformed(tx_id, "signature is not an object")
        if "quote_amount" in doc:
            # The quote asset's amounts have 6 decimals too (micro units).
            _micro(doc["quote_amount"], "quote_amount", tx_id)
        if transaction_id(doc) != tx_id:
            raise VerificationFailed(
                f"transaction {tx_id}: id is not the SHA-256 of its canonical bytes "
                "(a member was changed after it was hashed)",
                error_code="bad_transaction_id",
            )
        return cls(tx_id, tx_type, sender, recipient, amount, fee, ref, timestamp, dict(doc))


def _invalid(tx: Transaction, why: str) -> VerificationFailed:
    return VerificationFailed(
        f"transaction {tx.id} ({tx.tx_type.value}): {why}", error_code="invalid_transaction"
    )


def _is_user(address: str | None) -> bool:
    return address is not None and address not in SYSTEM_ACCOUNTS


def check_transaction_rules(tx: Transaction) -> None:
    """What a transaction of its type may say, apart from balances (module docstring);
    ``invalid_transaction`` otherwise."""
    kind = tx.tx_type
    sender, recipient = tx.sender, tx.recipient
    document = tx.document
    if "receipt_id" in document and kind is not TxType.RECEIPT:
        raise _invalid(tx, "only a receipt transaction carries receipt_id")
    if "signature" in document and kind is not TxType.TRANSFER:
        raise _invalid(tx, "only a transfer is signed by its sender")
    if "quote_amount" in document and kind is not TxType.TRADE_FILL:
        raise _invalid(tx, "only a trade_fill carries quote_amount")
    if kind is TxType.TRANSFER:
        if sender is None or recipient is None:
            raise _invalid(tx, "a transfer has a sender and a recipient")
        if sender == recipient:
            raise _invalid(tx, "a transfer goes to another account")
        if sender == ESCROW or recipient == ESCROW:
            raise _invalid(tx, "escrow moves only by escrow_hold, escrow_release, escrow_refund")
        if "nonce" not in document:
            raise _invalid(tx, "a transfer carries its sender's nonce")
    elif kind is TxType.MINT:
        if sender is not None:
            raise _invalid(tx, "a mint comes from no account (from: null)")
        if recipient is None or recipient == ESCROW:
            raise _invalid(tx, "a mint goes to an account other than escrow")
        if tx.fee_micro:
            raise _invalid(tx, "a mint has no fee")
    elif kind is TxType.RECEIPT:
        if sender is not None or recipient is not None:
            raise _invalid(tx, "a receipt transaction moves nothing (from and to null)")
        if tx.amount_micro or tx.fee_micro:
            raise _invalid(tx, "a receipt transaction has amount and fee 0")
        if type(document.get("receipt_id")) is not str or not document["receipt_id"]:
            raise _invalid(tx, "a receipt transaction carries receipt_id")
        if tx.ref is None or not _HEX64.fullmatch(tx.ref):
            raise _invalid(tx, "a receipt transaction's ref is the receipt's SHA-256 (64 hex)")
    elif kind is TxType.TRADE_FILL:
        if not _is_user(sender) or not _is_user(recipient):
            raise _invalid(tx, "a trade_fill goes from a user account (the seller) to another")
        if sender == recipient:
            raise _invalid(tx, "a trade_fill's seller and buyer differ")
        if not tx.ref:
            raise _invalid(tx, "a trade_fill's ref is its exchange trade id")
        if "quote_amount" not in document:
            raise _invalid(tx, "a trade_fill carries its quote leg (quote_amount)")
    else:  # the escrow types
        if not tx.ref:
            raise _invalid(tx, "an escrow transaction's ref is its job or trade id")
        if kind is TxType.ESCROW_HOLD:
            if not _is_user(sender) or recipient != ESCROW:
                raise _invalid(tx, "escrow_hold goes from a user account to escrow")
        elif sender != ESCROW or not _is_user(recipient):
            raise _invalid(tx, f"{kind.value} goes from escrow to a user account")


# --- signatures on transactions --------------------------------------------------------------


def requires_sender_signature(tx: Transaction, keys: KeyRing) -> bool:
    """Whether ``tx`` is a transfer whose sender has a key in ``keys`` valid at its
    timestamp (then it must be signed by one)."""
    if tx.tx_type is not TxType.TRANSFER or tx.sender is None:
        return False
    sender, at = tx.sender, tx.timestamp
    return any(key.owner == sender and key.allows(at) for key in keys)


def verify_transaction_signature(tx: Transaction, keys: KeyRing) -> None:
    """Check the sender's signature on ``tx``: ``missing_signature``,
    ``malformed_signature``, ``unknown_key`` (not a key of the sender in ``keys``),
    ``key_not_valid`` (not at the transaction's timestamp) or ``bad_signature``."""
    if "signature" not in tx.document:
        raise VerificationFailed(
            f"transaction {tx.id} is not signed", error_code="missing_signature"
        )
    key_id, raw = read_signature_object(tx.document["signature"])
    key = keys.get(key_id)
    if key is None or tx.sender is None or key.owner != tx.sender:
        raise VerificationFailed(
            f"transaction {tx.id} is signed by key {key_id}, which is not a key of its "
            f"sender {tx.sender!r}",
            error_code="unknown_key",
        )
    if not key.allows(tx.timestamp):
        raise VerificationFailed(
            f"key {key_id} was not valid at the transaction's timestamp {tx.timestamp}",
            error_code="key_not_valid",
        )
    if not key.verify(raw, signing_bytes(tx.document)):
        raise VerificationFailed(
            f"signature of transaction {tx.id} does not match its canonical bytes",
            error_code="bad_signature",
        )


def check_sender_signature(tx: Transaction, keys: KeyRing) -> None:
    """The signature rule of section 3: a signature present must verify, and a transfer
    whose sender has a key valid at its timestamp must carry one (``missing_signature``)."""
    if "signature" in tx.document or requires_sender_signature(tx, keys):
        verify_transaction_signature(tx, keys)


# --- state ----------------------------------------------------------------------------------


def state_leaf(address: str, balance_micro: int) -> bytes:
    """A state_root leaf: canonical bytes of ``{"address", "balance"}`` (balance in AIT)."""
    return (
        b'{"address":'
        + _value_bytes(address)
        + b',"balance":'
        + _value_bytes(to_ait(balance_micro))
        + b"}"
    )


def _state_leaf_hash(address: str, balance_micro: int) -> bytes:
    return _sha256(b"\x00" + state_leaf(address, balance_micro)).digest()


def state_root(balances: Mapping[str, int]) -> str:
    """RFC 6962 tree hash (hex) over every account with a non-zero balance, sorted by
    the UTF-8 bytes of the address, each leaf :func:`state_leaf`."""
    # Code point order is UTF-8 byte order (for strings UTF-8 can encode at all).
    hashes = [
        _state_leaf_hash(address, balances[address])
        for address in sorted(balances)
        if balances[address]
    ]
    return merkle.root_of_leaf_hashes(hashes).hex()


def tx_root(tx_ids: Sequence[str]) -> str:
    """RFC 6962 tree hash (hex) over transaction ids in block order, each leaf the id's 32
    raw bytes; SHA-256 of nothing for an empty block. ``ValueError`` for an id that is
    not 64 hex digits."""
    sha256 = _sha256
    raws = [bytes.fromhex(tx_id) for tx_id in tx_ids]
    if any(len(raw) != merkle.HASH_BYTES for raw in raws):
        raise ValueError("a transaction id is not 64 hex digits (32 bytes)")
    return merkle.root_of_leaf_hashes([sha256(b"\x00" + raw).digest() for raw in raws]).hex()


def balance_deltas(
    sender: str | None, recipient: str | None, amount_micro: int, fee_micro: int
) -> dict[str, int]:
    """The replay rule as balance changes: ``from`` loses amount + fee, ``to`` gains
    amount, ``treasury`` gains fee (the same for every type). What the verifier
    replays and what the coordinator writes to live balances come from here."""
    deltas: dict[str, int] = {}
    if sender is not None:
        deltas[sender] = -(amount_micro + fee_micro)
    if recipient is not None:
        deltas[recipient] = deltas.get(recipient, 0) + amount_micro
    if fee_micro:
        deltas[TREASURY] = deltas.get(TREASURY, 0) + fee_micro
    return deltas


class LedgerState:
    """Balances (µAIT) replayed from genesis, with total supply and fees collected.

    ``balances`` holds only non-zero balances. :meth:`apply` checks a transaction and
    changes the state only when it is accepted; a refused one changes nothing.
    """

    __slots__ = ("_leaves", "balances", "fees_micro", "supply_micro")

    def __init__(
        self,
        balances: Mapping[str, int] | None = None,
        *,
        supply_micro: int | None = None,
        fees_micro: int = 0,
    ) -> None:
        self.balances: dict[str, int] = {}
        for address, value in (balances or {}).items():
            if value < 0:
                raise ValueError(f"balance of {address!r} is negative")
            if value:
                self.balances[address] = value
        self.supply_micro = sum(self.balances.values()) if supply_micro is None else supply_micro
        self.fees_micro = fees_micro
        # State leaf hashes by address, with the balance each was computed for.
        self._leaves: dict[str, tuple[int, bytes]] = {}

    def balance(self, address: str) -> int:
        """The balance of ``address`` in µAIT (0 for an account never seen)."""
        return self.balances.get(address, 0)

    def copy(self) -> LedgerState:
        """An independent copy."""
        other = LedgerState(supply_micro=self.supply_micro, fees_micro=self.fees_micro)
        other.balances = dict(self.balances)
        other._leaves = dict(self._leaves)
        return other

    def apply(self, tx: Transaction) -> None:
        """Replay ``tx``: ``from`` loses amount + fee, ``to`` gains amount, ``treasury``
        gains fee, a mint adds to supply. ``invalid_transaction`` when its type forbids
        what it says, ``negative_balance`` when an account would go below zero; in both
        cases nothing changes."""
        check_transaction_rules(tx)
        amount, fee = tx.amount_micro, tx.fee_micro
        if tx.tx_type is TxType.MINT and self.supply_micro + amount > MAX_SUPPLY_MICRO:
            raise _invalid(tx, "the mint would take total supply beyond 10^9 AIT")
        deltas = balance_deltas(tx.sender, tx.recipient, amount, fee)
        balances = self.balances
        after: list[tuple[str, int]] = []
        for address, delta in deltas.items():
            if delta:
                value = balances.get(address, 0) + delta
                if value < 0:
                    raise VerificationFailed(
                        f"transaction {tx.id} ({tx.tx_type.value}) would leave {address} at "
                        f"{to_ait(value)} AIT",
                        error_code="negative_balance",
                        address=address,
                    )
                after.append((address, value))
        for address, value in after:
            if value:
                balances[address] = value
            else:
                del balances[address]
                self._leaves.pop(address, None)
        if tx.tx_type is TxType.MINT:
            self.supply_micro += amount
        self.fees_micro += fee

    def state_root(self) -> str:
        """:func:`state_root` of the current balances, reusing the leaf hashes of
        accounts that did not change."""
        balances, leaves = self.balances, self._leaves
        hashes: list[bytes] = []
        for address in sorted(balances):
            value = balances[address]
            cached = leaves.get(address)
            if cached is None or cached[0] != value:
                cached = (value, _state_leaf_hash(address, value))
                leaves[address] = cached
            hashes.append(cached[1])
        return merkle.root_of_leaf_hashes(hashes).hex()


# --- blocks ---------------------------------------------------------------------------------


def block_header(
    *,
    height: int,
    prev_hash: str,
    timestamp: int,
    tx_root: str,
    state_root: str,
    tx_count: int,
    sealer: str,
) -> dict[str, Any]:
    """The seven members a block's hash and signature cover."""
    return {
        "height": height,
        "prev_hash": prev_hash,
        "timestamp": timestamp,
        "tx_root": tx_root,
        "state_root": state_root,
        "tx_count": tx_count,
        "sealer": sealer,
    }


def header_bytes(header: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a block header (what its hash and signature cover)."""
    return _object_bytes(header, _HEADER_PREFIXES, frozenset())


def block_hash(header: Mapping[str, Any]) -> str:
    """SHA-256 hex of the header's canonical bytes."""
    return _sha256(header_bytes(header)).hexdigest()


def sign_block(header: Mapping[str, Any], key: SigningKey) -> dict[str, str]:
    """The sealer's signature object over the header's canonical bytes."""
    return key.signature_object(header_bytes(header))


def _malformed_block(why: str) -> VerificationFailed:
    return VerificationFailed(f"block header {why}", error_code="malformed_block")


def check_block_header(header: Any) -> None:
    """The header's shape: exactly the seven members, heights, times and counts as
    integers, hashes as 64 lowercase hex, the sealer a key id; ``malformed_block``."""
    if not isinstance(header, Mapping):
        raise _malformed_block("is not a JSON object")
    if set(header) != set(BLOCK_HEADER_MEMBERS):
        raise _malformed_block(
            f"has members {sorted(map(str, header))}, expected {sorted(BLOCK_HEADER_MEMBERS)}"
        )
    for name in ("height", "timestamp", "tx_count"):
        if not _safe_int(header[name]):
            raise _malformed_block(f"{name} is not a non-negative integer")
    if header["tx_count"] > MAX_BLOCK_TRANSACTIONS:
        raise _malformed_block(f"tx_count is above {MAX_BLOCK_TRANSACTIONS}")
    for name in ("prev_hash", "tx_root", "state_root"):
        if type(header[name]) is not str or not _HEX64.fullmatch(header[name]):
            raise _malformed_block(f"{name} is not 64 lowercase hex digits")
    if type(header["sealer"]) is not str or not _KEY_ID.fullmatch(header["sealer"]):
        raise _malformed_block("sealer is not a key id (16 lowercase hex digits)")


def verify_block_signature(header: Mapping[str, Any], signature: Any, keys: KeyRing) -> None:
    """Check a block's signature against pinned coordinator ``keys``:
    ``malformed_block``, ``malformed_signature``, ``sealer_mismatch`` (signed by another
    key than the header's sealer), ``unknown_key``, ``bad_signature``, ``key_not_valid``
    (the key was not valid at the block's timestamp)."""
    check_block_header(header)
    key_id, raw = read_signature_object(signature)
    if key_id != header["sealer"]:
        raise VerificationFailed(
            f"block {header['height']} is signed by key {key_id}, not by its sealer "
            f"{header['sealer']}",
            error_code="sealer_mismatch",
        )
    key = keys.get(key_id)
    if key is None or key.owner != COORDINATOR_OWNER:
        raise VerificationFailed(
            f"block {header['height']} is sealed by key {key_id}, which is not a pinned "
            "coordinator key",
            error_code="unknown_key",
        )
    if not key.verify(raw, header_bytes(header)):
        raise VerificationFailed(
            f"signature of block {header['height']} does not match its header",
            error_code="bad_signature",
        )
    if not key.allows(header["timestamp"]):
        raise VerificationFailed(
            f"key {key_id} was not valid at block {header['height']}'s timestamp "
            f"{header['timestamp']}",
            error_code="key_not_valid",
        )


def check_block_link(header: Mapping[str, Any], previous: Mapping[str, Any] | None) -> None:
    """How a (well-formed) header follows the one before it (``None`` for genesis):
    height one more (genesis 0), ``prev_hash`` the previous block's hash (genesis 64
    zeros), timestamp not earlier. ``bad_height``, ``bad_prev_hash``,
    ``timestamp_decreased``."""
    if previous is None:
        expected_height, expected_prev = 0, GENESIS_PREV_HASH
    else:
        expected_height, expected_prev = previous["height"] + 1, block_hash(previous)
    if header["height"] != expected_height:
        raise VerificationFailed(
            f"block height {header['height']} should be {expected_height}",
            error_code="bad_height",
        )
    if header["prev_hash"] != expected_prev:
        raise VerificationFailed(
            f"block {header['height']}'s prev_hash is not the hash of the block before it",
            error_code="bad_prev_hash",
        )
    if previous is not None and header["timestamp"] < previous["timestamp"]:
        raise VerificationFailed(
            f"block {header['height']}'s timestamp is before its predecessor's",
            error_code="timestamp_decreased",
        )


def check_block_contents(header: Mapping[str, Any], transactions: Sequence[Transaction]) -> None:
    """A (well-formed) header against its transactions, in block order: ``tx_count``
    (``tx_count_mismatch``), no id twice (``duplicate_transaction``), no transaction
    dated after the block (``transaction_after_block``), ``tx_root``
    (``tx_root_mismatch``). The state root is checked after replaying them."""
    height = header["height"]
    if len(transactions) != header["tx_count"]:
        raise VerificationFailed(
            f"block {height} holds {len(transactions)} transactions, its header says "
            f"{header['tx_count']}",
            error_code="tx_count_mismatch",
        )
    ids = [tx.id for tx in transactions]
    if len(set(ids)) != len(ids):
        raise VerificationFailed(
            f"block {height} holds a transaction twice", error_code="duplicate_transaction"
        )
    limit = header["timestamp"]
    for tx in transactions:
        if tx.timestamp > limit:
            raise VerificationFailed(
                f"transaction {tx.id} is dated after block {height}",
                error_code="transaction_after_block",
            )
    if tx_root(ids) != header["tx_root"]:
        raise VerificationFailed(
            f"block {height}'s tx_root is not the tree hash of its transaction ids",
            error_code="tx_root_mismatch",
        )


# --- inclusion proofs ------------------------------------------------------------------------


def inclusion_proof(
    tx_ids: Sequence[str], index: int, *, block_height: int, block_hash: str
) -> dict[str, Any]:
    """The inclusion proof of transaction ``index`` of a block whose ids, in block order,
    are ``tx_ids``. ``ValueError`` for an index outside the block."""
    hashes = [_sha256(b"\x00" + bytes.fromhex(tx_id)).digest() for tx_id in tx_ids]
    path = merkle.audit_path(hashes, index)
    return {
        "tx_id": tx_ids[index],
        "block_height": block_height,
        "block_hash": block_hash,
        "leaf_index": index,
        "tree_size": len(tx_ids),
        "audit_path": [node.hex() for node in path],
        "tx_root": merkle.root_of_leaf_hashes(hashes).hex(),
    }


def verify_inclusion_proof(proof: Any, header: Mapping[str, Any]) -> None:
    """Check an inclusion proof against a header already verified: ``malformed_proof``,
    ``proof_mismatch`` (its block height, hash, tx_root or tree size are not the
    header's), ``bad_proof`` (RFC 9162 section 2.1.3.2 fails)."""

    def malformed(why: str) -> VerificationFailed:
        return VerificationFailed(f"inclusion proof {why}", error_code="malformed_proof")

    if not isinstance(proof, Mapping):
        raise malformed("is not a JSON object")
    missing = [name for name in INCLUSION_PROOF_MEMBERS if name not in proof]
    if missing:
        raise malformed(f"lacks {', '.join(missing)}")
    for name in ("tx_id", "block_hash", "tx_root"):
        if type(proof[name]) is not str or not _HEX64.fullmatch(proof[name]):
            raise malformed(f"{name} is not 64 lowercase hex digits")
    for name in ("block_height", "leaf_index", "tree_size"):
        if not _safe_int(proof[name]):
            raise malformed(f"{name} is not a non-negative integer")
    path = proof["audit_path"]
    if not isinstance(path, list) or not all(
        type(node) is str and _HEX64.fullmatch(node) for node in path
    ):
        raise malformed("audit_path is not a list of 64-hex hashes")
    expected = {
        "block_height": header["height"],
        "block_hash": block_hash(header),
        "tx_root": header["tx_root"],
        "tree_size": header["tx_count"],
    }
    for name, value in expected.items():
        if proof[name] != value:
            raise VerificationFailed(
                f"inclusion proof {name} is not the header's", error_code="proof_mismatch"
            )
    leaf = _sha256(b"\x00" + bytes.fromhex(proof["tx_id"])).digest()
    if not merkle.verify_inclusion(
        leaf,
        proof["leaf_index"],
        proof["tree_size"],
        [bytes.fromhex(node) for node in path],
        bytes.fromhex(header["tx_root"]),
    ):
        raise VerificationFailed(
            f"audit path does not lead from transaction {proof['tx_id']} to tx_root",
            error_code="bad_proof",
        )
