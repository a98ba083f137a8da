"""Benchmark: receipts signed and verified per second, against the bare Ed25519 library.

Everything runs in this one process on one core. Each round times, on the same
receipt and the same bytes, interleaved so machine noise hits all of them alike:

- ``bare sign``: ``cryptography``'s Ed25519 ``sign`` of the receipt's canonical bytes;
- ``canonicalise + sign``: RFC 8785 canonical bytes of the receipt body (the
  ``rfc8785`` library, names pre-encoded per receipt schema) then the same sign;
- ``issue receipt``: what the coordinator does per completion: build the body from
  the job's terms, canonicalise, sign, and produce the stored canonical document;
- ``bare verify``: ``verify`` of the signature over those bytes;
- ``verify receipt``: ``aitbc.sdk.verify_receipt`` of the receipt's JSON text: strict
  parse, canonicalise, signature, member types, key period, price arithmetic.

Prints the median per-operation time over the rounds, operations per second, and
the ratios to the bare library calls. The issue's targets: canonicalise + sign at
most 2x the bare sign, and at least 5,000 receipts signed per second per core.

    python bench/receipts.py --rounds 15 --ops 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import rfc8785

from aitbc.domain import receipts
from aitbc.domain.signing import COORDINATOR_OWNER, KeyRing, PublicKey, SigningKey
from aitbc.sdk import verify_receipt

SIGN_TARGET_RATIO = 2.0
SIGN_TARGET_PER_SECOND = 5_000


def sample_terms(miner_signature: dict[str, str] | None) -> receipts.ReceiptTerms:
    """A realistic receipt: ids as the coordinator makes them, a priced job."""
    return receipts.ReceiptTerms(
        receipt_id="rcpt_" + "3a2c8904076e272722cdaf0d1dea30f7",
        job_id="job_" + "98956684c9ce0d1941856ae0d20a963f",
        provider="gpu-miner-07",
        client="client_" + "5c71b49518ef07c38ab22f90dc2df023",
        model="smollm2-135m",
        prompt_tokens=42,
        completion_tokens=187,
        unit_price_micro=20_000,
        started_at=1_795_496_186,
        completed_at=1_795_496_189,
        input_hash=receipts.text_hash("Name three uses of a GPU."),
        result_hash=receipts.text_hash("1. Training 2. Inference 3. Rendering"),
        miner_signature=miner_signature,
    )


def per_op_seconds(operation: Callable[[], Any], ops: int) -> float:
    """Mean seconds per call over ``ops`` calls."""
    started = time.perf_counter()
    for _ in range(ops):
        operation()
    return (time.perf_counter() - started) / ops


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)

    coordinator = SigningKey.from_seed(bytes(range(32)))
    miner = SigningKey.from_seed(bytes(range(32, 64)))
    statement = receipts.miner_statement(
        "job_98956684c9ce0d1941856ae0d20a963f",
        "gpu-miner-07",
        receipts.text_hash("1. Training 2. Inference 3. Rendering"),
        229,
    )
    terms = sample_terms(receipts.sign_miner_statement(miner, statement))
    body = receipts.receipt_body(terms)
    body_bytes = rfc8785.dumps(body)
    signed = receipts.sign_receipt(body, coordinator)
    assert signed.canonical == rfc8785.dumps(signed.document)
    signature = coordinator.sign(body_bytes)
    public = PublicKey.of(coordinator, COORDINATOR_OWNER)
    keyring = KeyRing([public])
    receipt_text = signed.canonical
    encoder = receipts._RECEIPT_ENCODER

    operations: dict[str, Callable[[], Any]] = {
        "bare sign": lambda: coordinator.sign(body_bytes),
        "canonicalise + sign": lambda: coordinator.sign(encoder.encode(body)),
        "canonicalise (rfc8785 whole object) + sign": lambda: coordinator.sign(rfc8785.dumps(body)),
        "issue receipt": lambda: receipts.sign_receipt(receipts.receipt_body(terms), coordinator),
        "bare verify": lambda: public.verify(signature, body_bytes),
        "verify receipt": lambda: verify_receipt(receipt_text, keyring),
    }
    samples: dict[str, list[float]] = {name: [] for name in operations}
    for _ in range(args.rounds):
        for name, operation in operations.items():
            samples[name].append(per_op_seconds(operation, args.ops))

    median = {name: statistics.median(values) for name, values in samples.items()}
    report: dict[str, Any] = {
        "rounds": args.rounds,
        "ops_per_measurement": args.ops,
        "median_us": {name: round(value * 1e6, 2) for name, value in median.items()},
        "per_second": {name: round(1 / value) for name, value in median.items()},
        "ratio_canonicalise_sign_to_bare_sign": round(
            median["canonicalise + sign"] / median["bare sign"], 3
        ),
        "ratio_issue_receipt_to_bare_sign": round(median["issue receipt"] / median["bare sign"], 3),
        "ratio_verify_receipt_to_bare_verify": round(
            median["verify receipt"] / median["bare verify"], 3
        ),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"receipts benchmark: {args.rounds} rounds x {args.ops} calls, one core, medians")
    for name in operations:
        print(f"  {name:<44} {median[name] * 1e6:8.1f} us  {report['per_second'][name]:>8,}/s")
    ratio = report["ratio_canonicalise_sign_to_bare_sign"]
    issued = report["per_second"]["issue receipt"]
    print(
        f"  canonicalise + sign / bare sign = {ratio:.2f}x "
        f"(target <= {SIGN_TARGET_RATIO:.0f}x: {'met' if ratio <= SIGN_TARGET_RATIO else 'MISSED'})"
    )
    print(
        f"  issue receipt / bare sign = {report['ratio_issue_receipt_to_bare_sign']:.2f}x; "
        f"{issued:,} receipts issued/s "
        f"(target >= {SIGN_TARGET_PER_SECOND:,}/s: "
        f"{'met' if issued >= SIGN_TARGET_PER_SECOND else 'MISSED'})"
    )
    print(f"  verify receipt / bare verify = {report['ratio_verify_receipt_to_bare_verify']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
