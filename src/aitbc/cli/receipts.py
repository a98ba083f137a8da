"""``aitbc keys ...`` and ``aitbc receipts ...``: pin keys, rotate the coordinator's key,
read receipts and verify them offline.

``receipts verify`` prints one line and exits 0 when the receipt checks out, 1 with
``invalid: <reason>: <detail>`` on any mismatch, 2 when it could not run (file
missing, coordinator unreachable, no pinned keys). A receipt fetched by id, or a
file given with ``--url``, also has its place in a sealed block checked online
through the public explorer (the proof, the anchor transaction, the block's
signature by a pinned key); a bundle (``GET /v1/receipts/{id}/bundle``) is checked
entirely offline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx

from aitbc.domain.receipts import VerifiedReceipt
from aitbc.domain.signing import KeyRing
from aitbc.errors import AITBCError, VerificationFailed
from aitbc.sdk import receipts as sdk
from aitbc.settings import DEFAULT_PORT

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_CANNOT_RUN = 2
HTTP_TIMEOUT_SECONDS = 30.0
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
# What a receipt id can look like (anything else given to ``verify`` is a file name).
RECEIPT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class CannotRun(Exception):
    """The command could not do its job (as opposed to finding the receipt invalid)."""


def _headers(args: argparse.Namespace, admin: bool = False) -> dict[str, str]:
    key = args.api_key or os.environ.get("AITBC_ADMIN_KEY" if admin else "AITBC_API_KEY")
    if admin and not key:
        key = os.environ.get("AITBC_API_KEY")
    return {"X-Api-Key": key} if key else {}


def _request(
    args: argparse.Namespace, method: str, path: str, *, admin: bool = False, **kwargs: Any
) -> httpx.Response:
    url = args.url.rstrip("/") + path
    try:
        return httpx.request(
            method, url, headers=_headers(args, admin), timeout=HTTP_TIMEOUT_SECONDS, **kwargs
        )
    except httpx.HTTPError as exc:
        raise CannotRun(f"cannot reach {args.url}: {exc}") from exc


def _expect(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
        reason = f"{body.get('error_code')}: {body.get('detail')}"
    except (ValueError, AttributeError):
        reason = response.text[:200]
    raise CannotRun(
        f"{response.request.method} {response.request.url.path}: {response.status_code} {reason}"
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _keyring_path(args: argparse.Namespace) -> Path:
    return Path(args.keyring) if args.keyring else sdk.default_keyring_path()


# --- keys ---------------------------------------------------------------------------


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    """Rows as a table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*("-" if value is None else str(value) for value in row))
    # Piped output is read by scripts or saved: wide enough that ids are never folded.
    Console(highlight=False, width=None if sys.stdout.isatty() else 240).print(table)


def _keys_list(args: argparse.Namespace) -> int:
    params = {"owner": args.owner} if args.owner else None
    document = _expect(_request(args, "GET", "/v1/keys", params=params)).json()
    if args.json:
        _print_json(document)
        return EXIT_OK
    _table(
        ["key", "owner", "status", "valid from", "valid until"],
        [
            [key.get("key_id"), key.get("owner"), key.get("status"), key.get("valid_from"),
             key.get("valid_until")]
            for key in document.get("keys", [])
        ],
    )  # fmt: skip
    return EXIT_OK


def _keys_pin(args: argparse.Namespace) -> int:
    path = _keyring_path(args)
    try:
        keyring, added = sdk.pin_keys(args.url, path, owner=args.owner)
    except httpx.HTTPError as exc:
        raise CannotRun(f"cannot fetch keys from {args.url}: {exc}") from exc
    except (OSError, VerificationFailed) as exc:
        raise CannotRun(f"cannot use keyring {path}: {exc}") from exc
    print(f"pinned {len(keyring)} key(s) in {path}; new: {', '.join(added) or 'none'}")
    return EXIT_OK


def _keys_rotate(args: argparse.Namespace) -> int:
    if args.offline:
        return _rotate_offline(args)
    response = _expect(_request(args, "POST", "/v1/admin/keys/rotate", admin=True))
    key = response.json()
    print(f"new signing key {key['key_id']} is current; the previous key is retired")
    return EXIT_OK


def _rotate_offline(args: argparse.Namespace) -> int:
    """Rotate the key of a stopped coordinator, on its key file and database."""
    from aitbc.api.app import build_runtime
    from aitbc.cli.main import _settings_from
    from aitbc.services import keys
    from aitbc.storage import migrate

    settings = _settings_from(args)
    runtime = build_runtime(settings)

    async def run() -> tuple[str, str]:
        try:
            await migrate.upgrade(runtime.engine)
            old, new = await keys.rotate_offline(runtime)
            return old, new.key_id
        finally:
            await runtime.engine.dispose()

    old, new = asyncio.run(run())
    print(f"signing key {old} retired; {new} is current (restart the coordinator to use it)")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """``aitbc keys list|pin|rotate``."""
    handler = {"list": _keys_list, "pin": _keys_pin, "rotate": _keys_rotate}[args.keys_command]
    return _run(handler, args)


# --- receipts -----------------------------------------------------------------------


def _receipt_row(receipt: dict[str, Any]) -> list[Any]:
    return [
        receipt.get("receipt_id"),
        receipt.get("job_id"),
        receipt.get("provider"),
        receipt.get("model"),
        receipt.get("units"),
        receipt.get("price"),
        receipt.get("completed_at"),
    ]


RECEIPT_COLUMNS = ["receipt", "job", "miner", "model", "tokens", "AIT", "completed"]


def _receipts_get(args: argparse.Namespace) -> int:
    receipt = _expect(_request(args, "GET", f"/v1/receipts/{args.receipt_id}")).json()
    if args.json:
        _print_json(receipt)
        return EXIT_OK
    _table(
        ["", ""],
        [[name, value] for name, value in zip(RECEIPT_COLUMNS, _receipt_row(receipt), strict=True)],
    )
    signature = receipt.get("signature") or {}
    print(f"signed by key {signature.get('key_id')} ({signature.get('alg')}); "
          f"verify offline with: aitbc receipts verify {receipt.get('receipt_id')}")  # fmt: skip
    return EXIT_OK


def _receipts_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
    for name in ("client", "provider"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    page = _expect(_request(args, "GET", "/v1/receipts", params=params)).json()
    if args.json:
        _print_json(page)
        return EXIT_OK
    _table(RECEIPT_COLUMNS, [_receipt_row(receipt) for receipt in page])
    return EXIT_OK


def _pinned_keys(args: argparse.Namespace) -> KeyRing:
    if args.key_file:
        try:
            return sdk.load_keyring(Path(args.key_file))
        except (OSError, VerificationFailed) as exc:
            raise CannotRun(f"cannot read key file {args.key_file}: {exc}") from exc
    path = _keyring_path(args)
    if not path.exists():
        if not args.pin_from:
            raise CannotRun(
                f"no pinned keys at {path}: run `aitbc keys pin --url URL`, "
                "or pass --key-file or --pin-from URL"
            )
        try:
            keyring, _added = sdk.pin_keys(args.pin_from, path)
        except httpx.HTTPError as exc:
            raise CannotRun(f"cannot fetch keys from {args.pin_from}: {exc}") from exc
        print(f"pinned {len(keyring)} key(s) from {args.pin_from} in {path}", file=sys.stderr)
        return keyring
    try:
        return sdk.load_keyring(path)
    except (OSError, VerificationFailed) as exc:
        raise CannotRun(f"cannot read pinned keys {path}: {exc}") from exc


def _is_receipt_id(source: str) -> bool:
    """Whether ``verify``'s argument names a receipt on the coordinator (not a file)."""
    return source != "-" and not Path(source).exists() and bool(RECEIPT_ID.fullmatch(source))


def _receipt_bytes(args: argparse.Namespace) -> bytes:
    source = args.receipt
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if path.exists():
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CannotRun(f"cannot read {path}: {exc}") from exc
    if not RECEIPT_ID.fullmatch(source):
        raise CannotRun(f"{source} is neither a file nor a receipt id")
    return _expect(_request(args, "GET", f"/v1/receipts/{source}")).content


def _downloaded_result(args: argparse.Namespace, job_id: str) -> bytes | None:
    if args.result:
        try:
            return Path(args.result).read_bytes()
        except OSError as exc:
            raise CannotRun(f"cannot read result file {args.result}: {exc}") from exc
    if args.fetch_result:
        job = _expect(_request(args, "GET", f"/v1/jobs/{job_id}")).json()
        result = job.get("result")
        if not isinstance(result, str):
            raise CannotRun(f"job {job_id} has no result to check")
        return result.encode("utf-8")
    return None


def _resolve_url(args: argparse.Namespace) -> bool:
    """Fill in ``args.url`` (flag, ``$AITBC_URL``, default); True when ``--url`` was
    given, which puts a receipt file's inclusion check online."""
    explicit = args.url is not None
    if not explicit:
        args.url = os.environ.get("AITBC_URL") or DEFAULT_URL
    return explicit


def _where(included: sdk.VerifiedInclusion) -> str:
    return (
        f"in block {included.block_height} (transaction {included.leaf_index + 1} of "
        f"{included.tree_size}, proof checked), sealed by key {included.sealer}"
    )


def _inclusion_online(args: argparse.Namespace, receipt: dict[str, Any], keys: KeyRing) -> str:
    """The inclusion check online, as a phrase for the ``ok:`` line."""
    try:
        included = sdk.verify_inclusion(receipt, keys, args.url)
    except sdk.InclusionUnavailable as exc:
        if exc.error_code == "not_sealed":
            return "not in a sealed block yet (check again later)"
        return f"not in the ledger ({exc.error_code}: {exc.detail})"
    except httpx.HTTPError as exc:
        raise CannotRun(f"cannot check the inclusion at {args.url}: {exc}") from exc
    return _where(included)


def _verify_bundle(args: argparse.Namespace, bundle: dict[str, Any], keys: KeyRing) -> int:
    receipt = bundle.get("receipt")
    provider = receipt.get("provider") if isinstance(receipt, dict) else None
    miner_keys = keys.owned_by(provider) if isinstance(provider, str) else KeyRing()
    job_id = receipt.get("job_id") if isinstance(receipt, dict) else None
    result = _downloaded_result(args, job_id) if isinstance(job_id, str) else None
    included = sdk.verify_bundle(
        bundle, keys, miner_keys=miner_keys if len(miner_keys) else None, result=result
    )
    _print_ok(included.receipt, [_where(included), "offline bundle"])
    return EXIT_OK


def _print_ok(verified: VerifiedReceipt, extra: list[str]) -> None:
    receipt = verified.receipt
    checks = [f"signed by coordinator key {verified.key.key_id}"]
    if verified.miner_key is not None:
        checks.append(f"miner signature by {verified.miner_key.key_id}")
    elif "miner_signature" in receipt:
        checks.append("miner signature not checked (no pinned key for the miner)")
    if verified.result_checked:
        checks.append("result hash matches")
    checks.extend(extra)
    print(
        f"ok: receipt {receipt['receipt_id']} for job {receipt['job_id']}: "
        f"{receipt['units']} {receipt['unit_type']} for {receipt['price']} AIT; "
        + "; ".join(checks)
    )


def _receipts_verify(args: argparse.Namespace) -> int:
    explicit_url = _resolve_url(args)
    keys = _pinned_keys(args)
    by_id = _is_receipt_id(args.receipt)
    data = _receipt_bytes(args)
    try:
        receipt = sdk.load_receipt(data)
        if sdk.is_bundle(receipt):
            return _verify_bundle(args, receipt, keys)
        job_id = receipt.get("job_id")
        result = _downloaded_result(args, job_id) if isinstance(job_id, str) else None
        provider = receipt.get("provider")
        miner_keys = keys.owned_by(provider) if isinstance(provider, str) else KeyRing()
        verified = sdk.verify_receipt(
            receipt, keys, miner_keys=miner_keys if len(miner_keys) else None, result=result
        )
        extra: list[str] = []
        if not args.offline and (by_id or explicit_url):
            extra.append(_inclusion_online(args, receipt, keys))
    except VerificationFailed as exc:
        hint = ""
        if exc.error_code == "unknown_key":
            hint = " (if the coordinator rotated its key, run `aitbc keys pin` again)"
        print(f"invalid: {exc.error_code}: {exc.detail}{hint}", file=sys.stderr)
        return EXIT_INVALID
    _print_ok(verified, extra)
    return EXIT_OK


def cmd_receipts(args: argparse.Namespace) -> int:
    """``aitbc receipts get|list|verify``."""
    handler = {"get": _receipts_get, "list": _receipts_list, "verify": _receipts_verify}[
        args.receipts_command
    ]
    return _run(handler, args)


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        result: int = handler(args)
    except CannotRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except AITBCError as exc:
        print(f"error: {exc.error_code}: {exc.detail}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return result


def add_parsers(commands: Any, add_client_flags: Any, add_storage_flags: Any) -> None:
    """Add ``keys`` and ``receipts`` to the ``aitbc`` command tree."""
    keys = commands.add_parser("keys", help="receipt-signing keys: list, pin, rotate")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    listing = keys_commands.add_parser("list", help="keys a coordinator publishes")
    listing.add_argument("--owner", help="a miner id: that miner's registered keys")
    pin = keys_commands.add_parser(
        "pin", help="fetch a coordinator's keys once and store them as trusted"
    )
    pin.add_argument("--owner", help="pin a miner's keys instead of the coordinator's")
    pin.add_argument("--keyring", help="keyring file (default: ~/.config/aitbc/keys.json)")
    rotate = keys_commands.add_parser(
        "rotate", help="new coordinator signing key; old receipts stay verifiable"
    )
    rotate.add_argument(
        "--offline",
        action="store_true",
        help="rotate a stopped coordinator's key directly in its data dir and database",
    )
    add_storage_flags(rotate)
    for sub in (listing, pin, rotate):
        add_client_flags(sub)
    listing.add_argument("--json", action="store_true", help="print the coordinator's JSON")
    keys.set_defaults(handler=cmd_keys)

    receipts = commands.add_parser("receipts", help="read and verify signed receipts")
    receipt_commands = receipts.add_subparsers(dest="receipts_command", required=True)
    get = receipt_commands.add_parser("get", help="one receipt")
    get.add_argument("receipt_id")
    list_ = receipt_commands.add_parser("list", help="receipts, newest first")
    list_.add_argument("--client")
    list_.add_argument("--provider")
    list_.add_argument("--limit", type=int, default=20)
    list_.add_argument("--offset", type=int, default=0)
    for sub in (get, list_):
        sub.add_argument("--json", action="store_true", help="print the coordinator's JSON")
    verify = receipt_commands.add_parser(
        "verify",
        help="check a receipt's signatures against pinned keys (offline), and its block: "
        "online for a receipt id or with --url, offline for a bundle",
    )
    verify.add_argument(
        "receipt",
        help="a receipt or bundle (GET /v1/receipts/{id}/bundle) JSON file, - for stdin, "
        "or a receipt id",
    )
    verify.add_argument("--key-file", help="trusted key: a /v1/keys document, PEM or base64url")
    verify.add_argument("--keyring", help="pinned keys (default: ~/.config/aitbc/keys.json)")
    verify.add_argument(
        "--pin-from", metavar="URL", help="no keyring yet: fetch keys from URL once and pin them"
    )
    verify.add_argument("--result", help="a downloaded result file: check its hash too")
    verify.add_argument(
        "--fetch-result", action="store_true", help="download the job's result and check its hash"
    )
    verify.add_argument(
        "--offline", action="store_true", help="do not check the receipt's block online"
    )
    for sub in (get, list_, verify):
        add_client_flags(sub)
    # No --url: a receipt file is checked offline; its default is filled in later.
    verify.set_defaults(url=None)
    receipts.set_defaults(handler=cmd_receipts)
