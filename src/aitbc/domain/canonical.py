"""Canonical bytes and hashes of signed objects (DESIGN.md section 3).

Canonical bytes are RFC 8785 (JCS), produced by the ``rfc8785`` library (Trail of
Bits, also used by sigstore), never by ``json.dumps(sort_keys=True)``, whose
number and string forms differ from JCS. Parsing of objects to verify is strict:
duplicate members, NaN and other values with no canonical form are refused with a
specific reason, because two verifiers must never read one document differently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import rfc8785

from aitbc.errors import VerificationFailed

MAX_SAFE_INTEGER = 2**53 - 1
# Member names the fixed-shape encoder accepts: ASCII, so Python's sort order equals
# the UTF-16 code unit order RFC 8785 prescribes.
_PLAIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 canonical bytes of a JSON value; ``not_canonical`` if it has none
    (NaN, infinities, integers beyond 2^53, lone surrogates, non-string keys)."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise VerificationFailed(
            f"value has no canonical JSON form: {exc}", error_code="not_canonical"
        ) from exc
    except (TypeError, ValueError) as exc:  # e.g. a Decimal or another non-JSON type
        raise VerificationFailed(f"value is not JSON: {exc}", error_code="not_canonical") from exc
    except RecursionError as exc:
        raise VerificationFailed("value is nested too deeply", error_code="not_canonical") from exc


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as lowercase hex."""
    return hashlib.sha256(data).hexdigest()


class FixedShapeEncoder:
    """Canonical bytes of objects whose member names come from a known set.

    RFC 8785 serializes an object as its members sorted by name, each as
    ``canonical(name) ":" canonical(value)``. For objects of a fixed schema (a
    receipt) the names' canonical forms are computed once, here, by the library;
    every value is still canonicalized by the library on each call. That halves the
    cost of canonicalizing a receipt without writing a JSON encoder of our own, and
    ``tests/unit/test_receipts.py`` checks the result equals ``rfc8785.dumps`` of
    the whole object. Objects with a member outside the set go through
    ``canonical_bytes`` whole.
    """

    __slots__ = ("_prefixes",)

    def __init__(self, names: Iterable[str]) -> None:
        prefixes: dict[str, bytes] = {}
        for name in names:
            if not _PLAIN_NAME.fullmatch(name):
                raise ValueError(f"member name {name!r} is not plain ASCII")
            prefixes[name] = rfc8785.dumps(name) + b":"
        self._prefixes = prefixes

    def members(self, obj: Mapping[str, Any]) -> dict[str, bytes]:
        """Each member's canonical ``"name":value`` bytes, by name."""
        prefixes = self._prefixes
        try:
            return {name: prefixes[name] + canonical_bytes(obj[name]) for name in obj}
        except KeyError as exc:
            raise ValueError(f"member {exc.args[0]!r} is not in this encoder's set") from exc

    @staticmethod
    def join(members: Mapping[str, bytes]) -> bytes:
        """The canonical object from members made by :meth:`members`."""
        return b"{" + b",".join([members[name] for name in sorted(members)]) + b"}"

    def encode(self, obj: Mapping[str, Any]) -> bytes:
        """Canonical bytes of ``obj`` (equal to ``canonical_bytes(obj)``)."""
        try:
            return self.join(self.members(obj))
        except ValueError:
            return canonical_bytes(obj)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise VerificationFailed(
                f"member {name!r} appears twice; a signed object must have one reading",
                error_code="duplicate_member",
            )
        result[name] = value
    return result


def _no_constant(name: str) -> Any:
    raise VerificationFailed(f"{name} is not JSON", error_code="not_canonical")


def parse_json_object(data: bytes | bytearray | str) -> dict[str, Any]:
    """A JSON object from text, refusing what would make its canonical form ambiguous:
    invalid UTF-8 or JSON, duplicate member names, NaN/Infinity, a non-object."""
    try:
        text = bytes(data).decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError as exc:
        raise VerificationFailed("document is not UTF-8", error_code="invalid_json") from exc
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise VerificationFailed(f"document is not JSON: {exc}", error_code="invalid_json") from exc
    if not isinstance(value, dict):
        raise VerificationFailed("document is not a JSON object", error_code="invalid_json")
    return value
