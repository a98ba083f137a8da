"""``aitbc chain verify|follow``: check a coordinator's whole chain through its public
explorer API (``aitbc.sdk.chain``); and the money commands ``aitbc balance``,
``aitbc transfer`` and ``aitbc admin mint``.

``chain verify`` exits 0 when the chain is sound, 1 with ``invalid: block <height>:
<error_code>: <detail>`` on stderr at the first bad block, and 2 with ``error: ...``
when it could not run (coordinator unreachable, a bad key file). It trusts the keys
of ``--keys FILE`` (a ``GET /v1/keys`` document, or what ``aitbc keys pin``
stores), else the keys ``aitbc keys pin`` stored, else those the coordinator serves
now, said loudly (trust on first use). ``chain follow`` keeps a verified copy in
``--dir`` and resumes from it; it exits like ``verify`` when a block fails or it
cannot run, and 0 when stopped (SIGINT, SIGTERM) or after ``--once``.

The money commands print the coordinator's JSON answer and exit 0 on success, 1 on
an error answer, 2 when the coordinator cannot be reached or the input is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from aitbc.domain.ledger import TxType, sign_transaction, transaction_body
from aitbc.domain.money import MICRO_PER_AIT, to_micro
from aitbc.domain.signing import COORDINATOR_OWNER, KeyRing, SigningKey
from aitbc.errors import AITBCError, ValidationFailed, VerificationFailed
from aitbc.sdk import chain as sdk
from aitbc.sdk import receipts as sdk_receipts

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_CANNOT_RUN = 2
EXIT_INTERRUPTED = 130
HTTP_TIMEOUT_SECONDS = 30.0
DEFAULT_CHAIN_DIR = "aitbc-chain"
NONCE_LIMIT = 2**53  # nonces are JSON integers below 2^53
PROGRESS_LINE_SECONDS = 2.0  # how often --progress writes a line when not on a TTY


class CannotRun(Exception):
    """The command could not do its job (as opposed to finding the chain bad)."""


# --- keys ----------------------------------------------------------------------------


def _coordinator_keys(keys: KeyRing, where: str) -> KeyRing:
    coordinator = keys.owned_by(COORDINATOR_OWNER)
    if not len(coordinator):
        raise CannotRun(f"{where} holds no coordinator key")
    return coordinator


def pinned_keys(args: argparse.Namespace) -> KeyRing | None:
    """The keys to trust: ``--keys FILE``, else the keyring ``aitbc keys pin`` writes
    (``--keyring``, ``$AITBC_KEYRING``, ``~/.config/aitbc/keys.json``), else None:
    trust on first use."""
    if args.keys:
        path = Path(args.keys)
        try:
            return _coordinator_keys(sdk_receipts.load_keyring(path), str(path))
        except (OSError, VerificationFailed) as exc:
            raise CannotRun(f"cannot read key file {path}: {exc}") from exc
    path = Path(args.keyring) if args.keyring else sdk_receipts.default_keyring_path()
    if not path.exists():
        return None
    try:
        keys = sdk_receipts.load_keyring(path)
    except (OSError, VerificationFailed) as exc:
        raise CannotRun(f"cannot read pinned keys {path}: {exc}") from exc
    coordinator = keys.owned_by(COORDINATOR_OWNER)
    return coordinator if len(coordinator) else None


def _warn_first_use(url: str, keys: KeyRing) -> None:
    ids = ", ".join(key.key_id for key in keys)
    print(
        f"WARNING: no pinned coordinator keys: trusting the keys {url} serves right now "
        f"({ids}) - trust on first use. A coordinator that lies about its keys is not "
        "caught this way: pin them once with `aitbc keys pin --url URL`, or pass --keys.",
        file=sys.stderr,
    )


# --- progress ------------------------------------------------------------------------


class Progress:
    """Progress on stderr: one rewritten line on a TTY, a line every few seconds with
    ``--progress`` elsewhere, nothing otherwise."""

    def __init__(self, stream: TextIO, forced: bool) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.enabled = self.tty or forced
        self._last = 0.0
        self._dirty = False

    def __call__(self, note: sdk.ChainProgress) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < PROGRESS_LINE_SECONDS and note.height < note.tip:
            return
        self._last = now
        rate = note.checked_this_run / note.elapsed_seconds if note.elapsed_seconds else 0.0
        line = (
            f"block {note.height}/{note.tip}, {note.transactions_checked:,} transactions, "
            f"{rate:,.0f} tx/s"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End a rewritten line before anything else is printed."""
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False


# --- chain verify / follow -------------------------------------------------------------


def _ait(micro: int) -> str:
    whole, fraction = divmod(micro, MICRO_PER_AIT)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")


def _summary(report: sdk.ChainReport) -> str:
    receipts = f"{report.receipts_checked:,} receipts checked"
    if report.receipts_skipped:
        receipts += f" ({report.receipts_skipped:,} not fetched)"
    return (
        f"{report.blocks_checked:,} blocks (0..{report.height}), "
        f"{report.transactions_checked:,} transactions, {receipts}; tip {report.block_hash}; "
        f"supply {_ait(report.supply_micro)} AIT, fees {_ait(report.fees_micro)} AIT, "
        f"{report.accounts:,} accounts"
    )


def _hint(code: str) -> str:
    if code in ("unknown_key", "key_not_valid"):
        return " (if the coordinator rotated its key, pin its keys again: `aitbc keys pin`)"
    return ""


def _print_report(args: argparse.Namespace, report: sdk.ChainReport) -> int:
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    failure = report.failure
    if failure is not None:
        where = f" (transaction {failure.tx_id})" if failure.tx_id else ""
        print(
            f"invalid: block {failure.height}: {failure.error_code}: {failure.detail}{where}"
            f"{_hint(failure.error_code)}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if not args.json:
        rate = f"{report.transactions_per_second:,.0f} tx/s"
        print(f"ok: chain sound: {_summary(report)}; {report.elapsed_seconds:.2f} s, {rate}")
    return EXIT_OK


def _verify_options(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    options: dict[str, Any] = {
        "receipt_sample": args.receipt_sample,
        "window": args.window,
    }
    if args.workers is not None:
        options["workers"] = args.workers
    if progress.enabled:
        options["progress"] = progress
    return options


def _source(http: httpx.AsyncClient, args: argparse.Namespace) -> sdk.HttpChainSource:
    key = args.api_key or os.environ.get("AITBC_API_KEY")
    return sdk.HttpChainSource(http, headers={"X-Api-Key": key} if key else None)


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url.rstrip("/"),
        timeout=sdk.HTTP_TIMEOUT_SECONDS,
        limits=httpx.Limits(max_connections=32),
    )


async def _trusted(source: sdk.HttpChainSource, args: argparse.Namespace) -> KeyRing:
    keys = pinned_keys(args)
    if keys is None:
        keys = _coordinator_keys(await source.coordinator_keys(), f"GET {args.url}/v1/keys")
        _warn_first_use(args.url, keys)
    return keys


def _verify(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr, args.progress)

    async def run() -> sdk.ChainReport:
        async with _client(args.url) as http:
            source = _source(http, args)
            keys = await _trusted(source, args)
            return await sdk.verify_chain(source, keys, **_verify_options(args, progress))

    try:
        report = asyncio.run(run())
    finally:
        progress.done()
    return _print_report(args, report)


def _follow(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr, args.progress)
    directory = Path(args.dir or os.environ.get("AITBC_CHAIN_DIR") or DEFAULT_CHAIN_DIR)

    def on_report(report: sdk.ChainReport) -> None:
        progress.done()
        if report.failure is None and report.checked_this_run:
            print(f"ok: verified up to block {report.height}: {_summary(report)}", flush=True)

    async def run() -> sdk.ChainReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        copy = sdk.VerifiedCopy(directory, args.url.rstrip("/"))
        try:
            async with _client(args.url) as http:
                source = _source(http, args)
                keys = await _trusted(source, args)
                if copy.height is not None:
                    print(f"resuming after block {copy.height} from {copy.path}", file=sys.stderr)
                return await sdk.follow_chain(
                    source,
                    keys,
                    copy,
                    interval_seconds=args.interval,
                    stop=stop,
                    once=args.once,
                    on_report=on_report,
                    **_verify_options(args, progress),
                )
        finally:
            copy.close()

    try:
        report = asyncio.run(run())
    finally:
        progress.done()
    if report.failure is None:
        if not report.checked_this_run:
            print(f"ok: up to date at block {report.height}: {_summary(report)}")
        return EXIT_OK
    args.json = False
    return _print_report(args, report)


def cmd_chain(args: argparse.Namespace) -> int:
    """``aitbc chain verify|follow``."""
    handler = {"verify": _verify, "follow": _follow}[args.chain_command]
    return _run(handler, args)


# --- money ---------------------------------------------------------------------------


def _key_header(args: argparse.Namespace, admin: bool = False) -> dict[str, str]:
    key = args.api_key
    if not key and admin:
        key = os.environ.get("AITBC_ADMIN_KEY")
    key = key or os.environ.get("AITBC_API_KEY")
    return {"X-Api-Key": key} if key else {}


def _request(
    args: argparse.Namespace, method: str, path: str, *, admin: bool = False, **kwargs: Any
) -> httpx.Response:
    try:
        return httpx.request(
            method,
            args.url.rstrip("/") + path,
            headers=_key_header(args, admin),
            timeout=HTTP_TIMEOUT_SECONDS,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise CannotRun(f"cannot reach {args.url}: {exc}") from exc


def _answer(response: httpx.Response) -> int:
    """Print a JSON answer; 0 for a success, 1 for an error answer."""
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return EXIT_OK if response.is_success else EXIT_INVALID


def _amount(text: str) -> str:
    """An AIT amount as exact decimal text (at most 6 decimals, > 0)."""
    try:
        micro = to_micro(text)
    except ValidationFailed as exc:
        raise argparse.ArgumentTypeError(exc.detail) from exc
    if micro <= 0:
        raise argparse.ArgumentTypeError("the amount must be more than 0")
    return _ait(micro)


def _nonce(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if not 0 <= value < NONCE_LIMIT:
        raise argparse.ArgumentTypeError("a nonce is 0 to 2^53 - 1")
    return value


def _balance(args: argparse.Namespace) -> int:
    response = _request(args, "GET", "/v1/accounts/me")
    if args.json or not response.is_success:
        return _answer(response)
    account = response.json()
    print(
        f"{account['balance']} AIT available, {account['held']} AIT held for unfinished "
        f"jobs (account {account['address']})"
    )
    return EXIT_OK


def _signing_key(path: str) -> SigningKey:
    try:
        return SigningKey.from_pem(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise CannotRun(f"cannot read signing key {path}: {exc}") from exc


def _transfer(args: argparse.Namespace) -> int:
    nonce = args.nonce if args.nonce is not None else secrets.randbelow(NONCE_LIMIT)
    payload: dict[str, Any] = {"to": args.to, "amount": args.amount, "nonce": nonce}
    if args.key:
        key = _signing_key(args.key)
        me = _request(args, "GET", "/v1/accounts/me")
        if not me.is_success:
            return _answer(me)
        sender = me.json()["address"]
        timestamp = int(time.time())
        body = transaction_body(
            tx_type=TxType.TRANSFER,
            sender=sender,
            recipient=args.to,
            amount_micro=to_micro(args.amount),
            fee_micro=0,
            ref=None,
            timestamp=timestamp,
            extra={"nonce": nonce},
        )
        payload["timestamp"] = timestamp
        payload["signature"] = sign_transaction(body, key)
    response = _request(args, "POST", "/v1/transfers", json=payload)
    code = _answer(response)
    if response.status_code == 422 and not args.key:
        with contextlib.suppress(ValueError, AttributeError):
            if response.json().get("error_code") == "missing_signature":
                print(
                    "this account registered a key: sign with --key FILE (its PEM private key)",
                    file=sys.stderr,
                )
    return code


def _mint(args: argparse.Namespace) -> int:
    payload = {"address": args.address, "amount": args.amount}
    return _answer(_request(args, "POST", "/v1/admin/mint", admin=True, json=payload))


def cmd_balance(args: argparse.Namespace) -> int:
    """``aitbc balance``."""
    return _run(_balance, args)


def cmd_transfer(args: argparse.Namespace) -> int:
    """``aitbc transfer TO AMOUNT``."""
    return _run(_transfer, args)


def cmd_mint(args: argparse.Namespace) -> int:
    """``aitbc admin mint ADDRESS AMOUNT``."""
    return _run(_mint, args)


# --- wiring ----------------------------------------------------------------------------


def _run(handler: Any, args: argparse.Namespace) -> int:
    try:
        result: int = handler(args)
    except CannotRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except AITBCError as exc:  # ChainSourceError, CopyError: the chain could not be read
        print(f"error: {exc.error_code}: {exc.detail}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("a fraction from 0 to 1")
    return value


def _add_verify_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys", metavar="FILE", help="trusted keys: a GET /v1/keys document (or a PEM key)"
    )
    parser.add_argument(
        "--keyring",
        help="pinned keys when --keys is not given (default: ~/.config/aitbc/keys.json)",
    )
    parser.add_argument(
        "--progress", action="store_true", help="report progress on stderr even when not a TTY"
    )
    parser.add_argument(
        "--receipt-sample",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="check this fraction of the receipts anchored (default 1: all, one request "
        "per block; below 1, one request per receipt sampled)",
    )
    parser.add_argument(
        "--window", type=int, default=sdk.DEFAULT_WINDOW, help="blocks downloading ahead (8)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        choices=[0, 1],
        help="1: check in a second process too, 0: in this one (default: by chain size)",
    )


def add_parsers(commands: Any, add_client_flags: Any) -> None:
    """Add ``chain``, ``balance`` and ``transfer`` to the ``aitbc`` command tree."""
    chain = commands.add_parser("chain", help="verify a coordinator's chain from its explorer")
    chain_commands = chain.add_subparsers(dest="chain_command", required=True)
    verify = chain_commands.add_parser(
        "verify", help="check every block, transaction, balance and receipt; exit 0/1/2"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    follow = chain_commands.add_parser(
        "follow", help="keep a verified local copy up to date, resuming where it stopped"
    )
    follow.add_argument("--dir", help=f"the local copy (default: ./{DEFAULT_CHAIN_DIR})")
    follow.add_argument(
        "--interval", type=float, default=5.0, help="seconds between looks for new blocks"
    )
    follow.add_argument("--once", action="store_true", help="catch up once, then exit")
    for sub in (verify, follow):
        _add_verify_flags(sub)
        add_client_flags(sub)
    chain.set_defaults(handler=cmd_chain)

    balance = commands.add_parser("balance", help="your balance and what is held in escrow")
    balance.add_argument("--json", action="store_true", help="print the coordinator's JSON")
    add_client_flags(balance)
    balance.set_defaults(handler=cmd_balance)

    transfer = commands.add_parser("transfer", help="send AIT to another account")
    transfer.add_argument("to", help="the recipient's address (a client or miner id)")
    transfer.add_argument("amount", type=_amount, help="AIT, at most 6 decimals")
    transfer.add_argument(
        "--nonce", type=_nonce, help="any number you have not used before (default: random)"
    )
    transfer.add_argument(
        "--key",
        metavar="FILE",
        help="PEM private key to sign with, needed once the account registered a key "
        "(a miner's is miner_ed25519.pem in its data dir)",
    )
    add_client_flags(transfer)
    transfer.set_defaults(handler=cmd_transfer)


def add_admin_parsers(admin_commands: Any, add_client_flags: Any) -> None:
    """Add ``admin mint`` (the admin key: --api-key, $AITBC_ADMIN_KEY)."""
    mint = admin_commands.add_parser("mint", help="create AIT for an account")
    mint.add_argument("address")
    mint.add_argument("amount", type=_amount, help="AIT, at most 6 decimals")
    add_client_flags(mint)
    mint.set_defaults(handler=cmd_mint)
