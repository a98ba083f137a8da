"""The ``aitbc`` command: ``serve``, ``db upgrade``, ``demo``, ``jobs``, ``login``,
``keys``, ``receipts``, ``auth``, ``chain``, ``miner``, ``watch`` and the admin's
commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from aitbc import __version__
from aitbc.settings import DEFAULT_PORT, Settings


def _settings_from(args: argparse.Namespace) -> Settings:
    """Flags first, then AITBC_* variables (pydantic-settings), then defaults."""
    overrides: dict[str, Any] = {}
    for name in (
        "host",
        "port",
        "database_url",
        "data_dir",
        "log_level",
        "log_format",
        "forwarded_allow_ips",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


# A request allocates thousands of short-lived objects; with CPython's default
# gen-0 threshold (700) the collector runs several times per request and rescans
# everything the app holds. Freezing the start-up heap and collecting less often
# saves ~15% of the coordinator's CPU in bench/lifecycle.py, for a little memory.
GC_GEN0_THRESHOLD = 50_000
GC_GEN1_THRESHOLD = 50
GC_GEN2_THRESHOLD = 100


def tune_garbage_collector() -> None:
    """Move start-up objects out of the collector's way and collect less often."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the coordinator until interrupted."""
    import uvicorn

    from aitbc import logs
    from aitbc.api import create_app
    from aitbc.api.server import uvicorn_options

    settings = _settings_from(args)
    logs.configure(settings.log_level, settings.log_format)
    tune_garbage_collector()
    app = create_app(settings)
    print(
        f"aitbc {__version__}: coordinator on http://{settings.host}:{settings.port} "
        f"(database: {_redacted(settings.resolved_database_url())})",
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # aitbc.logs has configured logging; the request line is ours (with its id).
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
    return 0


def _redacted(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply pending migrations and print the revision."""
    from aitbc.storage import db, migrate

    settings = _settings_from(args)
    url = settings.resolved_database_url()
    if db.is_sqlite(url):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def run() -> str | None:
        engine = db.create_engine(url)
        try:
            await migrate.upgrade(engine)
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    print(f"database {_redacted(url)} is at revision {asyncio.run(run())}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a coordinator and walk one job through its lifecycle over HTTP."""
    from aitbc.cli.demo import run_demo

    return asyncio.run(run_demo(port=args.port, keep_running=args.keep_running))


def cmd_admin(args: argparse.Namespace) -> int:
    """``aitbc admin stats|miners`` (the admin key: ``--api-key`` or $AITBC_ADMIN_KEY)."""
    from rich.console import Console
    from rich.table import Table

    from aitbc.sdk.client import Client

    key = args.api_key or os.environ.get("AITBC_ADMIN_KEY")
    console = Console()
    with Client(args.url, api_key=key) as client:
        if args.admin_command == "stats":
            stats = client.admin.stats().model_dump(mode="json")
            if args.json:
                print(json.dumps(stats, indent=2))
                return 0
            grid = Table.grid(padding=(0, 2))
            for name, value in stats.items():
                grid.add_row(f"[bold]{name}[/bold]", str(value))
            console.print(grid)
            return 0
        miners = client.admin.miners()
    if args.json:
        print(json.dumps([miner.model_dump(mode="json") for miner in miners], indent=2))
        return 0
    table = Table("miner", "status", "models", "price", "running", "completed", "last seen")
    for miner in miners:
        seen = miner.last_heartbeat_at
        table.add_row(
            miner.miner_id, miner.status, ", ".join(miner.capabilities), f"{miner.price:g}",
            str(miner.running_jobs), str(miner.jobs_completed),
            seen.strftime("%Y-%m-%d %H:%M:%S") if seen else "-",
        )  # fmt: skip
    console.print(table)
    return 0


def _add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="postgresql://... (default: SQLite in data dir)")
    parser.add_argument("--data-dir", help="directory for SQLite and keys (./aitbc-data)")


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("AITBC_URL", f"http://127.0.0.1:{DEFAULT_PORT}")
    )
    parser.add_argument("--api-key", help="X-Api-Key (default: $AITBC_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="aitbc", description="AITBC: a marketplace for AI compute."
    )
    parser.add_argument("--version", action="version", version=f"aitbc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the coordinator")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="readable lines (default) or one JSON object per line ($AITBC_LOG_FORMAT)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        help="proxies whose X-Forwarded-For is believed (IPs or networks, comma-separated; "
        "'*' for any); default none ($AITBC_FORWARDED_ALLOW_IPS)",
    )
    _add_storage_flags(serve)
    serve.set_defaults(handler=cmd_serve)

    database = commands.add_parser("db", help="database maintenance")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    _add_storage_flags(upgrade)
    upgrade.set_defaults(handler=cmd_db_upgrade)

    demo = commands.add_parser("demo", help="run a coordinator and show a job going through")
    demo.add_argument("--port", type=int, default=0, help="0 picks a free port")
    demo.add_argument("--keep-running", action="store_true")
    demo.set_defaults(handler=cmd_demo)

    from aitbc.cli import jobs as jobs_cli

    jobs_cli.add_parsers(commands)

    from aitbc.cli import auth as auth_cli

    admin = commands.add_parser("admin", help="operator views and API keys")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    for name, text in (("stats", "system figures"), ("miners", "every registered miner")):
        view = admin_commands.add_parser(name, help=text)
        jobs_cli.add_client_options(view)
        view.add_argument("--json", action="store_true", help="print JSON")
        view.set_defaults(handler=cmd_admin)
    auth_cli.add_admin_api_keys_parser(admin_commands, _add_client_flags)
    auth_cli.add_auth_parser(commands, _add_client_flags)

    from aitbc.cli import chain as chain_cli

    chain_cli.add_admin_parsers(admin_commands, _add_client_flags)
    chain_cli.add_parsers(commands, _add_client_flags)

    from aitbc.cli import miner as miner_cli
    from aitbc.cli.receipts import add_parsers

    add_parsers(commands, _add_client_flags, _add_storage_flags)
    miner_cli.add_parser(commands)

    from aitbc.cli import watch as watch_cli

    watch_cli.add_parser(commands)

    from aitbc.cli import exchange as exchange_cli
    from aitbc.cli import market as market_cli

    exchange_cli.add_parsers(commands)
    market_cli.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aitbc`` console script. An error from the coordinator
    (or none reachable) prints one line and exits 1 (2 when unreachable), never a
    traceback."""
    args = build_parser().parse_args(argv)
    handler = args.handler
    from aitbc.sdk.errors import APIConnectionError, APIError

    try:
        result: int = handler(args)
    except APIConnectionError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    except APIError as exc:
        print(f"error: {exc.detail} ({exc.error_code})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
