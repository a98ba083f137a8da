"""``aitbc watch jobs|miners|blocks|receipts``: live events from ``/ws``, one line
each (``--json``: the event as one JSON object per line, for scripts), until Ctrl-C.

Built on ``AsyncClient.events``: a dropped connection is resumed exactly where it
left off. ``jobs`` shows the caller's own jobs (every job with the admin key);
miners, blocks and receipts are public.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.console import Console

from aitbc.cli.jobs import add_client_options
from aitbc.sdk.client import AsyncClient
from aitbc.sdk.events import Event

CHANNELS = {
    "jobs": "job_updates",
    "miners": "miner_heartbeats",
    "blocks": "blocks",
    "receipts": "receipts",
}


def describe(event: Event) -> str:
    """One human line for an event."""
    data: dict[str, Any] = event.data
    if event.channel == "job_updates":
        where = f" on miner {data['miner_id']}" if data.get("miner_id") else ""
        extra = ""
        if event.type == "job.progress":
            extra = f" {data.get('progress', 0)}%"
        elif data.get("receipt_id"):
            usage = data.get("usage") or {}
            tokens = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
            extra = f", receipt {data['receipt_id']} ({tokens} tokens)"
        elif data.get("error_code"):
            extra = f" ({data['error_code']})"
        return f"{data.get('job_id')} {event.type.removeprefix('job.')}{where}{extra}"
    if event.channel == "miner_heartbeats":
        utilisation = data.get("utilisation")
        busy = "" if utilisation is None else f", {utilisation:g}% busy"
        return (
            f"miner {data.get('miner_id')} {data.get('status')}, "
            f"{data.get('running_jobs', 0)} running{busy}"
        )
    if event.channel == "blocks":
        return (
            f"block {data.get('height')} {str(data.get('hash'))[:16]}... "
            f"{data.get('transactions', 0)} transactions"
        )
    if event.channel == "receipts":
        return (
            f"receipt {data.get('receipt_id')} job {data.get('job_id')} by "
            f"{data.get('provider')}: {data.get('units')} {data.get('unit_type')}, "
            f"{data.get('price')} AIT"
        )
    return f"{event.type} {json.dumps(data)}"


async def _watch(args: argparse.Namespace) -> int:
    channel = CHANNELS[args.what]
    since = {channel: args.since} if args.since is not None else None
    console = Console(highlight=False)
    async with AsyncClient(args.url, api_key=args.api_key) as client:
        async for event in client.events(channel, since=since):
            if args.json:
                print(
                    json.dumps(
                        {
                            "channel": event.channel,
                            "type": event.type,
                            "seq": event.seq,
                            "data": event.data,
                        }
                    ),
                    flush=True,
                )
            else:
                console.print(f"[dim]{event.seq:>8}[/dim] {describe(event)}", markup=True)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Print events until interrupted (Ctrl-C ends it quietly)."""
    try:
        return asyncio.run(_watch(args))
    except KeyboardInterrupt:
        return 0


def add_parser(commands: Any) -> None:
    """``aitbc watch``."""
    watch = commands.add_parser("watch", help="print live events: jobs, miners, blocks, receipts")
    watch.add_argument("what", choices=sorted(CHANNELS), help="what to follow")
    watch.add_argument(
        "--since", type=int, help="resume after this event offset (seq) instead of from now"
    )
    watch.add_argument("--json", action="store_true", help="one JSON event per line")
    add_client_options(watch)
    watch.set_defaults(handler=cmd_watch)
