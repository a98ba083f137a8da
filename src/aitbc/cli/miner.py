"""``aitbc miner``: run the miner daemon until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DEFAULT_COORDINATOR_URL = "http://127.0.0.1:8001"


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a price: {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError("price must be a non-negative number of AIT")
    return value


def _concurrency(text: str) -> int:
    from aitbc.schemas import MAX_MINER_CONCURRENCY

    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if not 1 <= value <= MAX_MINER_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"concurrency must be 1 to {MAX_MINER_CONCURRENCY}")
    return value


def cmd_miner(args: argparse.Namespace) -> int:
    """Start the daemon; exit 0 after a stop by signal, 1 after one of its tasks failed
    (it has said why in its log and shut down gracefully), 2 when the backend cannot
    start."""
    from aitbc import logs
    from aitbc.miner.backends import create_backend
    from aitbc.miner.backends.base import BackendError
    from aitbc.miner.daemon import DaemonFailed, Miner, MinerConfig

    logs.configure(args.log_level, args.log_format)
    config = MinerConfig(
        coordinator_url=args.coordinator_url,
        data_dir=Path(args.data_dir),
        miner_id=args.miner_id,
        price=args.price,
        concurrency=args.concurrency,
        heartbeat_seconds=args.heartbeat_seconds,
        grace_seconds=args.grace_seconds,
    )
    try:
        backend = create_backend(
            args.backend,
            model=args.model,
            model_path=Path(args.model_path) if args.model_path else None,
            concurrency=args.concurrency,
            url=args.backend_url,
            api_key=args.backend_api_key or os.environ.get("AITBC_BACKEND_API_KEY"),
            threads_per_job=args.threads,
        )
        asyncio.run(_serve(Miner(config, backend)))
    except BackendError as exc:
        print(f"error: {exc.error_code}: {exc}", file=sys.stderr)
        return 2
    except DaemonFailed:
        return 1
    return 0


async def _serve(miner: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await miner.run(stop)


def add_parser(commands: Any) -> None:
    """Add ``miner`` to the ``aitbc`` command tree."""
    miner = commands.add_parser("miner", help="run the miner daemon (serves a real model)")
    miner.add_argument(
        "--coordinator-url", default=os.environ.get("AITBC_URL", DEFAULT_COORDINATOR_URL)
    )
    miner.add_argument(
        "--backend",
        default="llamacpp",
        help="llamacpp (default, in process), transformers (torch, CPU or CUDA, batches "
        "concurrent jobs), openai (an OpenAI-compatible server) or ollama (an Ollama "
        "server, default http://127.0.0.1:11434)",
    )
    miner.add_argument("--backend-url", help="the server of the openai or ollama backend")
    miner.add_argument("--backend-api-key", help="its bearer token ($AITBC_BACKEND_API_KEY)")
    miner.add_argument("--model", help="model name to serve (default: smollm2-135m)")
    miner.add_argument(
        "--model-path",
        help="a GGUF file, or a model directory for transformers (default: the bundled SmolLM2)",
    )
    miner.add_argument(
        "--data-dir",
        default=os.environ.get("AITBC_MINER_DATA_DIR", "aitbc-miner"),
        help="miner id, API key, signing key and undelivered results (./aitbc-miner)",
    )
    miner.add_argument("--miner-id", help="id to register with (default: host name + suffix)")
    miner.add_argument("--price", type=_price, default=Decimal("0"), help="AIT per 1,000 tokens")
    miner.add_argument(
        "--concurrency",
        type=_concurrency,
        default=1,
        help="jobs run at once, declared at registration: the coordinator lets the miner "
        "hold no more",
    )
    miner.add_argument(
        "--threads",
        type=int,
        help="llamacpp: CPU threads per job (default: half the usable cores / concurrency, "
        "as llama.cpp does); fewer on a shared machine, where spinning threads slow each "
        "other down",
    )
    miner.add_argument("--heartbeat-seconds", type=float, default=5.0)
    miner.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM, how long running jobs may finish before they are given back",
    )
    miner.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    miner.add_argument(
        "--log-format",
        default=os.environ.get("AITBC_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="readable lines (default) or one JSON object per line ($AITBC_LOG_FORMAT)",
    )
    miner.set_defaults(handler=cmd_miner)
