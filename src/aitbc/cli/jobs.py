"""``aitbc jobs submit|get|list|cancel|stream|wait`` and ``aitbc login``: the client's
command line, on the SDK (``aitbc.sdk.Client``), with rich for the terminal.

``jobs submit PROMPT --wait`` shows a live status line while the job waits and
starts (queued, then running on its miner), prints the answer as it is generated,
and ends with the receipt id and the price paid. Every read takes ``--json`` for
scripts. The URL and key come from ``--url`` / ``--api-key``, else ``AITBC_URL`` /
``AITBC_API_KEY``, else the config file ``aitbc login`` writes (0600).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aitbc.domain.jobs import JobStatus
from aitbc.schemas import Job
from aitbc.sdk.client import AsyncClient, Client
from aitbc.sdk.config import DEFAULT_URL, config_path, resolve

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
STATUS_POLL_SECONDS = 0.3


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _job_json(job: Job) -> dict[str, Any]:
    document: dict[str, Any] = job.model_dump(mode="json")
    return document


def _describe(job: Job) -> str:
    """One line about a job's state."""
    if job.status is JobStatus.PENDING:
        return f"queued ({job.job_id})"
    if job.status is JobStatus.RUNNING:
        return f"running on miner {job.miner_id} ({job.progress}%)"
    if job.status is JobStatus.COMPLETED:
        return "done"
    return f"{job.status.value}: {job.error or job.error_code or 'no reason given'}"


def _show_job(console: Console, job: Job) -> None:
    usage = job.usage
    tokens = f"{usage.prompt_tokens} + {usage.completion_tokens} tokens" if usage else "-"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in (
        ("job", job.job_id),
        ("status", job.status.value),
        ("model", job.model),
        ("miner", job.miner_id or "-"),
        ("held", f"{job.held:g} AIT"),
        ("usage", tokens),
        ("created", job.created_at.isoformat()),
    ):
        table.add_row(name, str(value))
    console.print(table)
    if job.result is not None:
        console.print(job.result, markup=False, highlight=False)
    elif job.error:
        console.print(f"[red]{job.error_code}[/red]: {job.error}", highlight=False)


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a job; with ``--wait``, follow it to the end."""
    options: dict[str, Any] = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "max_price": args.max_price,
        "priority": args.priority,
        "mode": args.mode,
        "trade_id": args.trade,
    }
    if not args.wait:
        with _client(args) as client:
            job = client.jobs.submit(args.prompt, **options)
        if args.json:
            _print_json(_job_json(job))
        else:
            Console().print(f"submitted [bold]{job.job_id}[/bold] ({_describe(job)})")
        return 0
    return asyncio.run(_submit_and_follow(args, options))


async def _submit_and_follow(args: argparse.Namespace, options: dict[str, Any]) -> int:
    console = Console(stderr=True)  # status on stderr, the answer on stdout
    async with AsyncClient(args.url, api_key=args.api_key) as client:
        job = await client.jobs.submit(args.prompt, **options)
        if args.json:
            done = await client.jobs.wait(job.job_id)
            _print_json(_job_json(done))
            return 0 if done.status is JobStatus.COMPLETED else 1
        return await _follow(console, client, job)


async def _follow(console: Console, client: AsyncClient, job: Job) -> int:
    """The live view: a status line until the first text, the text as it comes, and
    the outcome (receipt and price) last."""
    first_text = asyncio.Event()

    async def watch_status() -> Job:
        latest = job
        with console.status(_describe(latest)) as status:
            while latest.status not in TERMINAL and not first_text.is_set():
                await asyncio.sleep(STATUS_POLL_SECONDS)
                latest = await client.jobs.get(job.job_id)
                status.update(_describe(latest))
        if latest.status is JobStatus.RUNNING:
            console.print(f"[dim]running on miner {latest.miner_id}[/dim]")
        return latest

    watcher = asyncio.create_task(watch_status())
    end: dict[str, Any] = {}
    wrote = False
    async for event in client.stream_events(job.job_id):
        if event.name == "token":
            if not first_text.is_set():
                first_text.set()
                await watcher  # the status line is gone before the text starts
            sys.stdout.write(str(event.data["text"]))
            sys.stdout.flush()
            wrote = True
        elif event.name == "reset":
            console.print("\n[yellow]the job was requeued to another miner: starting over[/yellow]")
        elif event.name == "end":
            end = event.data
    first_text.set()
    await watcher
    if wrote:
        sys.stdout.write("\n")
    if end.get("status") == JobStatus.COMPLETED.value:
        usage = end.get("usage") or {}
        console.print(
            f"[green]done[/green]: receipt [bold]{end.get('receipt_id')}[/bold], "
            f"paid {end.get('price')} AIT for {usage.get('total_tokens', 0)} tokens"
        )
        return 0
    console.print(
        f"[red]{end.get('status', 'ended')}[/red]: {end.get('error') or end.get('error_code')}"
    )
    return 1


def cmd_get(args: argparse.Namespace) -> int:
    """One job."""
    with _client(args) as client:
        job = client.jobs.get(args.job_id)
    if args.json:
        _print_json(_job_json(job))
    else:
        _show_job(Console(), job)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The caller's jobs, newest first."""
    with _client(args) as client:
        page = client.jobs.list(status=args.status, limit=args.limit)
    if args.json:
        _print_json(page.model_dump(mode="json"))
        return 0
    table = Table("job", "status", "model", "miner", "tokens", "created")
    for job in page.jobs:
        tokens = job.usage.prompt_tokens + job.usage.completion_tokens if job.usage else "-"
        table.add_row(
            job.job_id, job.status.value, job.model, job.miner_id or "-", str(tokens),
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"{len(page.jobs)} of {page.total}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job (its hold refunded)."""
    with _client(args) as client:
        job = client.jobs.cancel(args.job_id)
    if args.json:
        _print_json(_job_json(job))
    else:
        Console().print(f"{job.job_id}: {job.status.value}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Print a job's text as it is generated (or all of it, once it ended)."""
    return asyncio.run(_stream(args))


async def _stream(args: argparse.Namespace) -> int:
    async with AsyncClient(args.url, api_key=args.api_key) as client:
        job = await client.jobs.get(args.job_id)
        return await _follow(Console(stderr=True), client, job)


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait for a job to end; exit 0 only when it completed."""
    console = Console(stderr=True)
    with _client(args) as client, console.status("waiting") as status:
        job = client.jobs.wait(
            args.job_id,
            timeout_seconds=args.timeout,
            on_progress=lambda j: status.update(_describe(j)),
        )
    if args.json:
        _print_json(_job_json(job))
    else:
        _show_job(Console(), job)
    return 0 if job.status is JobStatus.COMPLETED else 1


def cmd_login(args: argparse.Namespace) -> int:
    """Check a key against the coordinator and keep both in the config file (0600)."""
    url, key = resolve(args.url, args.api_key)
    if not key:
        key = input("API key: ").strip()
    with Client(url, api_key=key) as client:
        account = client.accounts.me()
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(path, json.dumps({"url": url, "api_key": key}, indent=2) + "\n")
    Console().print(f"logged in to {url} as [bold]{account.address}[/bold]; saved in {path}")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only (created 0600, never wider)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--api-key`` (falling back to the environment and config file)."""
    parser.add_argument(
        "--url", help=f"coordinator URL (default: $AITBC_URL, login, {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", help="API key (default: $AITBC_API_KEY, then aitbc login)")


def add_parsers(commands: Any) -> None:
    """``jobs`` and ``login``."""
    jobs = commands.add_parser("jobs", help="submit and follow jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = jobs_commands.add_parser("submit", help="submit a job (--wait: follow it live)")
    submit.add_argument("prompt")
    submit.add_argument("--model")
    submit.add_argument("--max-tokens", type=int)
    submit.add_argument("--temperature", type=float)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--max-price", help="AIT per 1,000 tokens at most")
    submit.add_argument("--trade", help="run on capacity you bought (aitbc market buy)")
    submit.add_argument("--mode", choices=["chat", "completion"])
    submit.add_argument("--priority", choices=["low", "normal", "high"])
    submit.add_argument("--wait", action="store_true", help="stream the answer until done")
    submit.set_defaults(handler=cmd_submit)
    get = jobs_commands.add_parser("get", help="one job")
    get.add_argument("job_id")
    get.set_defaults(handler=cmd_get)
    listing = jobs_commands.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(handler=cmd_list)
    cancel = jobs_commands.add_parser("cancel", help="cancel a job (refunded)")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=cmd_cancel)
    stream = jobs_commands.add_parser("stream", help="print a job's text as it is generated")
    stream.add_argument("job_id")
    stream.set_defaults(handler=cmd_stream)
    wait = jobs_commands.add_parser("wait", help="wait for a job to end")
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=float, help="seconds (default: no limit)")
    wait.set_defaults(handler=cmd_wait)
    for sub in (submit, get, listing, cancel, stream, wait):
        add_client_options(sub)
        if sub is not stream:
            sub.add_argument("--json", action="store_true", help="print JSON")
    login = commands.add_parser("login", help="save the coordinator URL and your API key")
    add_client_options(login)
    login.set_defaults(handler=cmd_login)
