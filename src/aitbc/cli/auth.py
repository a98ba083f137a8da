"""``aitbc auth keys list|create|revoke`` (the caller's own API keys) and ``aitbc admin
api-keys list|revoke`` (anyone's). ``aitbc keys`` is about receipt-signing keys.

Lists print a table (``--json``: the coordinator's JSON). ``create`` prints the new
key, which is shown only this once. Exit 0 on success; 1 with one line
``error: <status> <error_code>: <detail>`` on stderr when the coordinator refuses;
2 with one line ``error: ...`` when the command cannot run (coordinator unreachable,
no key given).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CANNOT_RUN = 2
HTTP_TIMEOUT_SECONDS = 30.0

AddClientFlags = Callable[[argparse.ArgumentParser], None]


class _Failed(Exception):
    """The command ends with one error line and ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _key_of(args: argparse.Namespace, admin: bool) -> str:
    names = ("AITBC_ADMIN_KEY", "AITBC_API_KEY") if admin else ("AITBC_API_KEY",)
    key = args.api_key or next((os.environ[n] for n in names if os.environ.get(n)), None)
    if not key:
        raise _Failed(f"no API key: pass --api-key or set ${names[0]}", EXIT_CANNOT_RUN)
    return str(key)


def _call(
    args: argparse.Namespace, method: str, path: str, *, admin: bool = False, **kwargs: Any
) -> Any:
    """Send one request with the caller's key; the JSON answer, or :class:`_Failed`."""
    headers = {"X-Api-Key": _key_of(args, admin)}
    try:
        response = httpx.request(
            method,
            args.url.rstrip("/") + path,
            headers=headers,
            timeout=HTTP_TIMEOUT_SECONDS,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        raise _Failed(f"cannot reach {args.url}: {exc}", EXIT_CANNOT_RUN) from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    if isinstance(body, dict) and "error_code" in body:
        reason = f"{body['error_code']}: {body.get('detail')}"
    else:
        reason = response.text[:200].replace("\n", " ")
    raise _Failed(f"{response.status_code} {reason}", EXIT_REFUSED)


def _own_key_id(args: argparse.Namespace, admin: bool) -> str:
    """The key id of the key this command sends (computed here, never sent)."""
    import hashlib

    return hashlib.sha256(_key_of(args, admin).encode()).hexdigest()[:16]


def _table(keys: list[dict[str, Any]], in_use: str) -> str:
    lines = [f"{'KEY ID':<16}  {'ROLE':<6}  {'OWNER':<38}  {'CREATED':<20}  REVOKED"]
    for key in keys:
        mark = "  (this key)" if key["key_id"] == in_use else ""
        lines.append(
            f"{key['key_id']:<16}  {key['role']:<6}  {key['owner'] or '-':<38}  "
            f"{key['created_at']:<20}  {key['revoked_at'] or '-'}{mark}"
        )
    return "\n".join(lines)


def _show(args: argparse.Namespace, body: Any, text: str) -> None:
    print(json.dumps(body, indent=2) if args.json else text)


def _key_id(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"not a key id (16 hex digits): {text!r}")
    return value


# --- aitbc auth keys ------------------------------------------------------------------


def _auth_list(args: argparse.Namespace) -> int:
    body = _call(args, "GET", "/v1/auth/keys")
    _show(args, body, _table(body["keys"], _own_key_id(args, admin=False)))
    return EXIT_OK


def _auth_create(args: argparse.Namespace) -> int:
    body = _call(args, "POST", "/v1/auth/keys")
    _show(
        args,
        body,
        f"created {body['role']} key {body['key_id']}; it is shown only this once:\n"
        f"{body['api_key']}",
    )
    return EXIT_OK


def _auth_revoke(args: argparse.Namespace) -> int:
    body = _call(args, "DELETE", f"/v1/auth/keys/{args.key_id}")
    note = " (the key this command used)" if args.key_id == _own_key_id(args, False) else ""
    _show(args, body, f"key {body['key_id']} revoked at {body['revoked_at']}{note}")
    return EXIT_OK


def cmd_auth(args: argparse.Namespace) -> int:
    """``aitbc auth keys list|create|revoke``."""
    handler = {"list": _auth_list, "create": _auth_create, "revoke": _auth_revoke}
    return _run(handler[args.keys_command], args)


# --- aitbc admin api-keys ---------------------------------------------------------------


def _admin_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "offset": args.offset}
    if args.owner:
        params["owner"] = args.owner
    if args.role:
        params["role"] = args.role
    body = _call(args, "GET", "/v1/admin/keys", admin=True, params=params)
    text = _table(body["keys"], _own_key_id(args, admin=True))
    if body["has_more"]:
        text += f"\n({body['total']} in all; more with --offset {args.offset + len(body['keys'])})"
    _show(args, body, text)
    return EXIT_OK


def _admin_revoke(args: argparse.Namespace) -> int:
    body = _call(args, "DELETE", f"/v1/admin/keys/{args.key_id}", admin=True)
    owner = body["owner"] or "the operator"
    _show(
        args,
        body,
        f"{body['role']} key {body['key_id']} of {owner} revoked at {body['revoked_at']}",
    )
    return EXIT_OK


def cmd_admin_api_keys(args: argparse.Namespace) -> int:
    """``aitbc admin api-keys list|revoke``."""
    handler = {"list": _admin_list, "revoke": _admin_revoke}
    return _run(handler[args.api_keys_command], args)


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except _Failed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


# --- parsers ------------------------------------------------------------------------------


def add_auth_parser(commands: Any, add_client_flags: AddClientFlags) -> None:
    """Add ``aitbc auth keys ...`` to the command tree."""
    auth = commands.add_parser("auth", help="your API keys: list, create, revoke")
    groups = auth.add_subparsers(dest="auth_command", required=True)
    keys = groups.add_parser("keys", help="the API keys of the account the key belongs to")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    listing = keys_commands.add_parser("list", help="your keys, revoked ones too")
    create = keys_commands.add_parser(
        "create", help="another key for your account (shown once): move to it, then revoke"
    )
    revoke = keys_commands.add_parser(
        "revoke", help="revoke one of your keys (refused for your last active key)"
    )
    revoke.add_argument("key_id", type=_key_id, help="16 hex digits, from `aitbc auth keys list`")
    for sub in (listing, create, revoke):
        add_client_flags(sub)
        sub.add_argument("--json", action="store_true", help="print the coordinator's JSON")
    auth.set_defaults(handler=cmd_auth)


def add_admin_api_keys_parser(admin_commands: Any, add_client_flags: AddClientFlags) -> None:
    """Add ``aitbc admin api-keys ...`` under ``aitbc admin``."""
    api_keys = admin_commands.add_parser("api-keys", help="anyone's API keys: list, revoke")
    api_keys_commands = api_keys.add_subparsers(dest="api_keys_command", required=True)
    listing = api_keys_commands.add_parser("list", help="API keys, oldest first")
    listing.add_argument("--owner", help="a client or miner id")
    listing.add_argument("--role", choices=["client", "miner", "admin"])
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--offset", type=int, default=0)
    revoke = api_keys_commands.add_parser("revoke", help="revoke any API key")
    revoke.add_argument("key_id", type=_key_id, help="16 hex digits")
    for sub in (listing, revoke):
        add_client_flags(sub)
        sub.add_argument("--json", action="store_true", help="print the coordinator's JSON")
    api_keys.set_defaults(handler=cmd_admin_api_keys)
