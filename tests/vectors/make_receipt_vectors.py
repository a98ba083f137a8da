"""Write ``tests/vectors/receipt_v1.json``: fixed test vectors for signed receipts.

Run from the repository root::

    .venv/bin/python tests/vectors/make_receipt_vectors.py

Everything is deterministic (fixed seeds, fixed terms; Ed25519 signatures are
deterministic), so running it again writes the same file. The JSON is committed and
the tests only read it: ``tests/unit/test_receipt_vectors.py`` checks the code still
produces these exact bytes, and that an independent Ed25519 (PyNaCl) accepts them.
Outside verifiers can use the file to check their own implementation of DESIGN.md
section 3.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc8785

from aitbc.domain.money import price_for_units, to_ait
from aitbc.domain.receipts import (
    ReceiptTerms,
    miner_statement,
    miner_statement_bytes,
    receipt_body,
    sign_miner_statement,
    sign_receipt,
    text_hash,
)
from aitbc.domain.signing import (
    COORDINATOR_OWNER,
    KeyRing,
    PublicKey,
    SigningKey,
    b64url_encode,
)

OUT = Path(__file__).with_name("receipt_v1.json")

# RFC 8032 section 7.1, TEST 1 secret key: its public key is known independently
# (d75a9801...511a), so the vector file can be checked against the RFC itself.
COORDINATOR_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
# RFC 8032 section 7.1, TEST 2 secret key: the coordinator's previous, retired key.
RETIRED_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
MINER_SEED = bytes(range(32))
STRANGER_SEED = bytes(range(32, 64))  # a key nobody pinned

MINER_ID = "miner-gpu-01"
RETIRED_FROM = datetime(2026, 1, 1, tzinfo=UTC)
ROTATED_AT = datetime(2026, 2, 13, 10, 0, 0, tzinfo=UTC)  # retired key's valid_until
ROTATED_AT_UNIX = int(ROTATED_AT.timestamp())  # 1770976800
MINER_REGISTERED = datetime(2026, 2, 13, 10, 5, 0, tzinfo=UTC)

COORDINATOR = SigningKey.from_seed(COORDINATOR_SEED)
RETIRED = SigningKey.from_seed(RETIRED_SEED)
MINER = SigningKey.from_seed(MINER_SEED)
STRANGER = SigningKey.from_seed(STRANGER_SEED)
SIGNERS = {"coordinator": COORDINATOR, "retired": RETIRED}


def key_entry(key: SigningKey, seed: bytes) -> dict[str, str]:
    return {"seed_hex": seed.hex(), "public_key": key.public_key_b64, "key_id": key.key_id}


def keys_documents() -> dict[str, Any]:
    current = PublicKey.of(COORDINATOR, COORDINATOR_OWNER, ROTATED_AT)
    retired = PublicKey(
        RETIRED.key_id, RETIRED.public_key, COORDINATOR_OWNER, "retired", RETIRED_FROM, ROTATED_AT
    )
    miner = PublicKey.of(MINER, MINER_ID, MINER_REGISTERED)
    return {
        # GET /v1/keys
        "coordinator": KeyRing([current, retired]).to_document(),
        # GET /v1/keys?owner=miner-gpu-01
        "miner": KeyRing([miner]).to_document(),
        # A (mis)configured ring that pins the miner's key next to the coordinator's.
        "coordinator_and_miner": KeyRing([current, retired, miner]).to_document(),
    }


def terms_dict(terms: ReceiptTerms) -> dict[str, Any]:
    return {
        "receipt_id": terms.receipt_id,
        "job_id": terms.job_id,
        "provider": terms.provider,
        "client": terms.client,
        "model": terms.model,
        "prompt_tokens": terms.prompt_tokens,
        "completion_tokens": terms.completion_tokens,
        "unit_price_micro": terms.unit_price_micro,
        "started_at": terms.started_at,
        "completed_at": terms.completed_at,
        "input_hash": terms.input_hash,
        "result_hash": terms.result_hash,
    }


def positive(
    name: str,
    description: str,
    *,
    signer: str,
    serial: int,
    model: str,
    prompt: str,
    result: str,
    prompt_tokens: int,
    completion_tokens: int,
    unit_price_micro: int,
    started_at: int,
    completed_at: int,
    miner_signed: bool,
) -> dict[str, Any]:
    job_id = f"job_{serial:032x}"
    terms = ReceiptTerms(
        receipt_id=f"rcpt_{serial:032x}",
        job_id=job_id,
        provider=MINER_ID,
        client=f"client_{0xC1:032x}",
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        unit_price_micro=unit_price_micro,
        started_at=started_at,
        completed_at=completed_at,
        input_hash=text_hash(prompt),
        result_hash=text_hash(result),
    )
    vector: dict[str, Any] = {
        "name": name,
        "description": description,
        "signer": signer,
        "prompt": prompt,
        "result": result,
        "terms": terms_dict(terms),
        "units": terms.units,
        "price_micro": terms.price_micro,
        "miner_signed": miner_signed,
    }
    if miner_signed:
        statement = miner_statement(job_id, MINER_ID, terms.result_hash, terms.units)
        signature = sign_miner_statement(MINER, statement)
        terms = ReceiptTerms(**terms_dict(terms), miner_signature=signature)
        vector["miner_statement"] = statement
        vector["miner_statement_canonical"] = miner_statement_bytes(statement).decode("utf-8")
        vector["miner_signature"] = signature
    body = receipt_body(terms)
    signed = sign_receipt(body, SIGNERS[signer])
    signed_canonical = rfc8785.dumps(body)
    assert signed.canonical == rfc8785.dumps(signed.document)
    vector["signed_canonical"] = signed_canonical.decode("utf-8")
    vector["signature"] = signed.document["signature"]
    vector["canonical"] = signed.canonical.decode("utf-8")
    vector["sha256"] = hashlib.sha256(signed.canonical).hexdigest()
    vector["receipt"] = signed.document
    return vector


def positives() -> list[dict[str, Any]]:
    start = ROTATED_AT_UNIX + 600
    return [
        positive(
            "with_miner_signature",
            "A typical receipt: miner-signed result, price 1700 x 0.05 / 1000 = 0.085 AIT.",
            signer="coordinator",
            serial=1,
            model="llama3.2:3b",
            prompt="Explain RFC 8785 in one paragraph.",
            result="RFC 8785 (JCS) defines one canonical serialization of a JSON value.",
            prompt_tokens=412,
            completion_tokens=1288,
            unit_price_micro=50_000,
            started_at=start,
            completed_at=start + 42,
            miner_signed=True,
        ),
        positive(
            "without_miner_signature",
            "A miner that registered no key: no miner_signature member. Integer-valued "
            "amounts (price 2.0, unit_price 1.0) are written 2 and 1 in canonical bytes.",
            signer="coordinator",
            serial=2,
            model="mistral:7b",
            prompt="Count to three.",
            result="One, two, three.",
            prompt_tokens=1500,
            completion_tokens=500,
            unit_price_micro=1_000_000,
            started_at=start + 100,
            completed_at=start + 107,
            miner_signed=False,
        ),
        positive(
            "price_rounds_half_up",
            "1501 x 500 uAIT / 1000 = 750.5 uAIT exactly: rounded half up to 751 uAIT "
            "(0.000751 AIT); half-even or truncation would give 750.",
            signer="coordinator",
            serial=3,
            model="phi3:mini",
            prompt="Say hello.",
            result="Hello!",
            prompt_tokens=1234,
            completion_tokens=267,
            unit_price_micro=500,
            started_at=start + 200,
            completed_at=start + 200,
            miner_signed=True,
        ),
        positive(
            "non_ascii_and_escapes",
            "A model name with non-ASCII characters (Latin-1, CJK, an astral-plane emoji), "
            "a quote, a backslash and control characters: JCS writes non-ASCII as raw "
            "UTF-8, escapes \\t as \\t and U+001F as \\u001f, leaves U+007F and U+2028 raw.",
            signer="coordinator",
            serial=4,
            model='qwen2.5:7b-ünïcödé-模型-🦙 "q4"\\\t\x1f\x7f\u2028',
            prompt="Résumé en français : « 你好 » 🦙\n",
            result="Bonjour ! 👋",
            prompt_tokens=3,
            completion_tokens=4,
            unit_price_micro=1_500_000,
            started_at=start + 300,
            completed_at=start + 301,
            miner_signed=True,
        ),
        positive(
            "zero_units",
            "A job that produced no tokens: units 0, price 0.",
            signer="coordinator",
            serial=5,
            model="llama3.2:3b",
            prompt="",
            result="",
            prompt_tokens=0,
            completion_tokens=0,
            unit_price_micro=50_000,
            started_at=start + 400,
            completed_at=start + 400,
            miner_signed=False,
        ),
        positive(
            "retired_key_at_valid_until",
            "Signed by the retired key with completed_at equal to its valid_until "
            "(inclusive): still valid after the rotation.",
            signer="retired",
            serial=6,
            model="llama3.2:3b",
            prompt="Old job.",
            result="Old result.",
            prompt_tokens=10,
            completion_tokens=20,
            unit_price_micro=50_000,
            started_at=ROTATED_AT_UNIX - 30,
            completed_at=ROTATED_AT_UNIX,
            miner_signed=False,
        ),
    ]


def resign(receipt: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """``receipt`` (its signature dropped) signed again, correctly, by ``key``."""
    body = {name: value for name, value in receipt.items() if name != "signature"}
    body["signature"] = key.signature_object(rfc8785.dumps(body))
    return body


def negative(
    name: str,
    description: str,
    expected: str,
    *,
    receipt: dict[str, Any] | None = None,
    receipt_text: str | None = None,
    keys: str = "coordinator",
    miner_keys: str | None = None,
) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "description": description, "keys": keys}
    if miner_keys is not None:
        case["miner_keys"] = miner_keys
    if receipt is not None:
        case["receipt"] = receipt
    else:
        case["receipt_text"] = receipt_text
    case["expected_error_code"] = expected
    return case


def negatives(vectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    good = vectors[0]["receipt"]
    good_text = vectors[0]["canonical"]
    integer_priced = vectors[1]["receipt"]
    cases: list[dict[str, Any]] = []

    tampered = copy.deepcopy(good)
    tampered["units"] += 1
    tampered["usage"]["completion_tokens"] += 1
    tampered["price"] = to_ait(price_for_units(tampered["units"], 50_000))
    cases.append(
        negative(
            "tampered_units",
            "units and usage raised by one and price recomputed: consistent, but the "
            "signature no longer matches.",
            "bad_signature",
            receipt=tampered,
        )
    )
    tampered = copy.deepcopy(good)
    tampered["unit_price"] = 0.04
    tampered["price"] = to_ait(price_for_units(tampered["units"], 40_000))
    cases.append(
        negative(
            "tampered_price",
            "unit_price lowered to 0.04 and price to the matching 0.068: the arithmetic "
            "adds up, the signature does not.",
            "bad_signature",
            receipt=tampered,
        )
    )
    tampered = copy.deepcopy(good)
    tampered["client"] = f"client_{0xC2:032x}"
    cases.append(
        negative(
            "tampered_client", "client changed to another id.", "bad_signature", receipt=tampered
        )
    )
    cases.append(
        negative(
            "unknown_key",
            "Correctly signed, but by a key that is not pinned (its own key_id).",
            "unknown_key",
            receipt=resign(good, STRANGER),
        )
    )
    forged = copy.deepcopy(good)
    forged["signature"] = resign(good, STRANGER)["signature"] | {"key_id": COORDINATOR.key_id}
    cases.append(
        negative(
            "signature_by_other_key_under_pinned_key_id",
            "A signature over the right bytes made by an unpinned key, labelled with the "
            "pinned coordinator key_id.",
            "bad_signature",
            receipt=forged,
        )
    )
    raw_sig = base64.urlsafe_b64decode(good["signature"]["sig"] + "==")
    truncated = copy.deepcopy(good)
    truncated["signature"]["sig"] = b64url_encode(raw_sig[:63])
    cases.append(
        negative(
            "truncated_signature",
            "sig is base64url of the first 63 of the 64 signature bytes.",
            "malformed_signature",
            receipt=truncated,
        )
    )
    extra_member = copy.deepcopy(good)
    extra_member["signature"]["note"] = "added after signing"
    cases.append(
        negative(
            "signature_extra_member",
            "The signature object gains a member; it must be exactly {alg, key_id, sig}, "
            "or the receipt's hash could change while it still verified.",
            "malformed_signature",
            receipt=extra_member,
        )
    )
    padded = copy.deepcopy(good)
    padded["signature"]["sig"] += "=="
    cases.append(
        negative(
            "padded_signature",
            "sig carries base64 '=' padding; the format is unpadded base64url.",
            "malformed_signature",
            receipt=padded,
        )
    )
    standard = copy.deepcopy(good)
    standard["signature"]["sig"] = standard["signature"]["sig"].replace("-", "+").replace("_", "/")
    if standard["signature"]["sig"] != good["signature"]["sig"]:
        cases.append(
            negative(
                "standard_base64_signature",
                "sig written with the standard base64 alphabet (+ and /), not base64url.",
                "malformed_signature",
                receipt=standard,
            )
        )
    bits = copy.deepcopy(good)
    sig_text = bits["signature"]["sig"]
    # 64 bytes are 86 base64 characters: the last one carries 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bits["signature"]["sig"] = sig_text[:-1] + alphabet[alphabet.index(sig_text[-1]) | 1]
    assert bits["signature"]["sig"] != sig_text
    cases.append(
        negative(
            "non_canonical_signature_bits",
            "The last sig character has a non-zero unused bit: it decodes to the same "
            "64 bytes, but one byte string has one encoding.",
            "malformed_signature",
            receipt=bits,
        )
    )
    rsa = copy.deepcopy(good)
    rsa["signature"]["alg"] = "rsa"
    cases.append(
        negative(
            "unsupported_algorithm",
            'signature alg is "rsa".',
            "unsupported_algorithm",
            receipt=rsa,
        )
    )
    unsigned = copy.deepcopy(good)
    del unsigned["signature"]
    cases.append(
        negative("missing_signature", "No signature member.", "missing_signature", receipt=unsigned)
    )
    body = {name: value for name, value in integer_priced.items() if name != "signature"}
    dumped = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert dumped != rfc8785.dumps(body)
    wrong_bytes = dict(body, signature=COORDINATOR.signature_object(dumped))
    cases.append(
        negative(
            "signed_over_json_dumps",
            "Signed over json.dumps(sort_keys=True, separators=(',', ':')) instead of "
            "RFC 8785: json.dumps writes 2.0 and 1.0 where JCS writes 2 and 1.",
            "bad_signature",
            receipt=wrong_bytes,
        )
    )
    duplicate = '{"units":1701,' + good_text[1:]
    cases.append(
        negative(
            "duplicate_member",
            "units appears twice (1701, then the signed 1700): a last-wins parser would "
            "accept the signature while a first-wins parser reads 1701.",
            "duplicate_member",
            receipt_text=duplicate,
        )
    )
    assert '"price":0.085' in good_text
    cases.append(
        negative(
            "nan_in_text",
            "price is the non-JSON literal NaN (refused while parsing, as not_canonical).",
            "not_canonical",
            receipt_text=good_text.replace('"price":0.085', '"price":NaN'),
        )
    )
    cases.append(
        negative(
            "infinity_in_text",
            "price is the non-JSON literal Infinity.",
            "not_canonical",
            receipt_text=good_text.replace('"price":0.085', '"price":Infinity'),
        )
    )
    cases.append(
        negative(
            "number_overflows_double",
            "price is 1e400, valid JSON text that no IEEE double holds: no canonical form.",
            "not_canonical",
            receipt_text=good_text.replace('"price":0.085', '"price":1e400'),
        )
    )
    assert '"units":1700' in good_text
    cases.append(
        negative(
            "integer_above_2_53",
            "units is 2^53 + 1, beyond the integers JSON numbers hold exactly.",
            "not_canonical",
            receipt_text=good_text.replace('"units":1700', f'"units":{2**53 + 1}'),
        )
    )
    cases.append(
        negative(
            "invalid_json_text",
            "The canonical text cut short.",
            "invalid_json",
            receipt_text=good_text[:-2],
        )
    )
    cases.append(
        negative(
            "not_an_object",
            "A JSON array holding the receipt.",
            "invalid_json",
            receipt_text="[" + good_text + "]",
        )
    )
    # 20 + 5 = 25 tokens at 500 uAIT per 1000: exactly 12.5 uAIT, so 13 uAIT.
    small = copy.deepcopy(vectors[2]["receipt"])
    small["usage"] = {"prompt_tokens": 20, "completion_tokens": 5}
    small["units"] = 25
    small["price"] = 0.0000125
    cases.append(
        negative(
            "price_with_seven_decimals",
            "Correctly signed, but price 0.0000125 AIT is 12.5 uAIT: amounts have at most "
            "6 decimals.",
            "invalid_amount",
            receipt=resign(small, COORDINATOR),
        )
    )
    small["price"] = 0.000012
    cases.append(
        negative(
            "price_rounded_half_down",
            "Correctly signed, but price 0.000012 is 25 x 500 / 1000 = 12.5 uAIT rounded "
            "down (half-even would also give 12); halves round up, to 13.",
            "price_mismatch",
            receipt=resign(small, COORDINATOR),
        )
    )
    wrong = copy.deepcopy(good)
    wrong["price"] = 0.086
    cases.append(
        negative(
            "price_mismatch",
            "Correctly signed, but price 0.086 is not 1700 x 0.05 / 1000 = 0.085.",
            "price_mismatch",
            receipt=resign(wrong, COORDINATOR),
        )
    )
    wrong = copy.deepcopy(vectors[1]["receipt"])
    wrong["units"] = 2001
    wrong["price"] = to_ait(price_for_units(2001, 1_000_000))
    cases.append(
        negative(
            "units_mismatch",
            "Correctly signed, price consistent with units, but units 2001 is not "
            "prompt_tokens + completion_tokens = 2000.",
            "units_mismatch",
            receipt=resign(wrong, COORDINATOR),
        )
    )
    late = copy.deepcopy(vectors[5]["receipt"])
    late["completed_at"] = ROTATED_AT_UNIX + 1
    cases.append(
        negative(
            "retired_key_after_valid_until",
            "Signed by the retired key, with completed_at one second after its valid_until.",
            "key_not_valid",
            receipt=resign(late, RETIRED),
        )
    )
    early = copy.deepcopy(vectors[1]["receipt"])
    early["started_at"] = ROTATED_AT_UNIX - 10
    early["completed_at"] = ROTATED_AT_UNIX - 1
    cases.append(
        negative(
            "current_key_before_valid_from",
            "Signed by the current key, with completed_at one second before its valid_from.",
            "key_not_valid",
            receipt=resign(early, COORDINATOR),
        )
    )
    cases.append(
        negative(
            "signed_by_miner_key",
            "Correctly signed by the miner's key, which the ring pins, but as the key of "
            "miner-gpu-01, not of a coordinator.",
            "unknown_key",
            receipt=resign(good, MINER),
            keys="coordinator_and_miner",
        )
    )
    other = copy.deepcopy(good)
    statement = miner_statement(other["job_id"], MINER_ID, "0" * 64, other["units"])
    other["miner_signature"] = sign_miner_statement(MINER, statement)
    cases.append(
        negative(
            "bad_miner_signature",
            "Correctly signed by the coordinator, but the miner signed another result_hash.",
            "bad_miner_signature",
            receipt=resign(other, COORDINATOR),
            miner_keys="miner",
        )
    )
    other = copy.deepcopy(good)
    statement = miner_statement(other["job_id"], MINER_ID, other["result_hash"], other["units"])
    other["miner_signature"] = sign_miner_statement(STRANGER, statement)
    cases.append(
        negative(
            "unknown_miner_key",
            "Correctly signed by the coordinator, but miner_signature is by a key that is "
            "not one of miner-gpu-01's.",
            "unknown_miner_key",
            receipt=resign(other, COORDINATOR),
            miner_keys="miner",
        )
    )
    other = copy.deepcopy(good)
    del other["usage"]
    cases.append(
        negative(
            "missing_usage",
            "Correctly signed, but without the required usage member.",
            "missing_field",
            receipt=resign(other, COORDINATOR),
        )
    )
    return cases


def build() -> dict[str, Any]:
    vectors = positives()
    return {
        "description": (
            "AITBC signed receipt test vectors (DESIGN.md section 3). Canonical bytes "
            "are RFC 8785; signatures Ed25519 (RFC 8032) over the canonical bytes of the "
            "receipt without its signature member; key_id is the first 16 hex digits of "
            "SHA-256 of the raw public key; amounts are AIT, 1 AIT = 10^6 uAIT. "
            "Written by tests/vectors/make_receipt_vectors.py."
        ),
        "version": 1,
        "keys": {
            "coordinator": key_entry(COORDINATOR, COORDINATOR_SEED),
            "retired": key_entry(RETIRED, RETIRED_SEED),
            "miner": key_entry(MINER, MINER_SEED) | {"owner": MINER_ID},
            "stranger": key_entry(STRANGER, STRANGER_SEED),
        },
        "keys_documents": keys_documents(),
        "receipts": vectors,
        "negative": negatives(vectors),
    }


def main() -> None:
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
