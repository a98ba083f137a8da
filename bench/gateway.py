"""Benchmark: the OpenAI-compatible gateway against the miner's backend called directly.

For each concurrency level C (``--concurrency 1 4``), in one run:

1. **direct**: the llama.cpp backend on the bundled model, in this process, with C
   contexts, runs ``--requests`` generations C at a time; time to first token is from
   the call to the backend's first text, throughput is completion tokens over the
   batch's wall time.
2. **gateway**: a real ``aitbc serve`` (SQLite) and a real ``aitbc miner`` with
   ``--concurrency C`` on the same model; the official ``openai`` client streams the
   same chat requests (``stream=True``, usage included) C at a time; time to first
   token is from sending the request to the first chunk with text.

Both sides generate the same prompts with the same seed and ``max_tokens``. Prints the
median time to first token of each and the difference (the floor: at most 20 ms
added), and streamed tokens per second of each and their ratio (floor: 0.9).

    python bench/gateway.py --requests 12 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from aitbc.miner.backends.base import GenerationControl, GenerationRequest
from aitbc.miner.backends.bundled import DEFAULT_MODEL_NAME
from aitbc.miner.backends.llamacpp import LlamaCppBackend

ADMIN_KEY = "bench-gateway-admin-key"
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "Tell me about the history of the printing press.",
]


@dataclass
class Sample:
    """One request: time to first token (s) and completion tokens."""

    first_token_seconds: float
    completion_tokens: int
    # Through the gateway: until the first chunk (the job taken, the stream open).
    first_chunk_seconds: float = 0.0


@dataclass
class Batch:
    """One side at one concurrency: its samples and the batch's wall time."""

    samples: list[Sample]
    wall_seconds: float

    @property
    def ttft_ms_p50(self) -> float:
        return statistics.median(s.first_token_seconds for s in self.samples) * 1000

    @property
    def first_chunk_ms_p50(self) -> float:
        return statistics.median(s.first_chunk_seconds for s in self.samples) * 1000

    @property
    def tokens_per_second(self) -> float:
        return sum(s.completion_tokens for s in self.samples) / self.wall_seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_limited(count: int, concurrency: int, one: Any) -> Batch:
    """``one(index)`` ``count`` times, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def limited(index: int) -> Sample:
        async with gate:
            result: Sample = await one(index)
            return result

    started = time.perf_counter()
    samples = await asyncio.gather(*(limited(index) for index in range(count)))
    return Batch(list(samples), time.perf_counter() - started)


async def direct(concurrency: int, requests: int, max_tokens: int) -> Batch:
    """The backend called directly, as the miner calls it."""
    backend = LlamaCppBackend(concurrency=concurrency)
    await backend.start()
    try:

        async def one(index: int) -> Sample:
            first: list[float] = []
            started = time.perf_counter()
            control = GenerationControl()
            control.on_text = lambda _text: first or first.append(time.perf_counter())
            request = GenerationRequest(
                DEFAULT_MODEL_NAME,
                json.dumps([{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]),
                mode="messages",
                max_tokens=max_tokens,
                seed=index,
            )
            generation = await backend.generate(request, control)
            ended = time.perf_counter()
            return Sample((first[0] if first else ended) - started, generation.completion_tokens)

        await one(0)  # warm-up
        return await run_limited(requests, concurrency, one)
    finally:
        await backend.close()


def _wait_for(check: Any, timeout: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"{what} did not happen in {timeout} s:\n{logs.read_text(errors='replace')}")


@contextlib.contextmanager
def market(concurrency: int, workdir: Path) -> Iterator[tuple[str, str]]:
    """A coordinator and a miner process with ``concurrency``; (URL, a client's key)."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AITBC_ADMIN_KEY": ADMIN_KEY,
        "AITBC_RATE_LIMIT": "10000000/minute",
        "AITBC_MINER_RATE_LIMIT": "10000000/minute",
        "AITBC_CLIENT_GRANT": "1000000",
    }
    run_dir = workdir / f"c{concurrency}"
    run_dir.mkdir()
    serve_log, miner_log = run_dir / "serve.log", run_dir / "miner.log"
    aitbc = [sys.executable, "-m", "aitbc.cli.main"]
    with serve_log.open("wb") as log:
        serve = subprocess.Popen(
            [*aitbc, "serve", "--port", str(port), "--data-dir", str(run_dir / "coordinator"),
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    miner: subprocess.Popen[bytes] | None = None
    try:

        def healthy() -> bool:
            try:
                return httpx.get(base_url + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(healthy, 60, "the coordinator starting", serve_log)
        with miner_log.open("wb") as log:
            miner = subprocess.Popen(
                [*aitbc, "miner", "--coordinator-url", base_url, "--data-dir",
                 str(run_dir / "miner"), "--concurrency", str(concurrency)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        _wait_for(
            lambda: "registered at" in miner_log.read_text(errors="replace"),
            120,
            "the miner registering",
            miner_log,
        )
        key = httpx.post(
            base_url + "/v1/clients/register", json={"name": "bench"}, timeout=10
        ).json()["api_key"]
        yield base_url, key
    finally:
        for process in (miner, serve):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


async def gateway(
    base_url: str, key: str, concurrency: int, requests: int, max_tokens: int
) -> Batch:
    """The same generations through the coordinator and its miner, streamed."""
    client = openai.AsyncOpenAI(api_key=key, base_url=base_url + "/v1", max_retries=0, timeout=300)
    async with client:

        async def one(index: int) -> Sample:
            started = time.perf_counter()
            first: float | None = None
            first_chunk: float | None = None
            tokens = 0
            stream = await client.chat.completions.create(
                model=DEFAULT_MODEL_NAME,
                messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                max_tokens=max_tokens,
                seed=index,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                first_chunk = first_chunk or time.perf_counter()
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            ended = time.perf_counter()
            return Sample((first or ended) - started, tokens, (first_chunk or ended) - started)

        await one(0)  # warm-up
        return await run_limited(requests, concurrency, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=12, help="requests per level and side")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results: dict[str, Any] = {"requests": args.requests, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory(prefix="aitbc-bench-gateway-") as workdir:
        for concurrency in args.concurrency:
            plain = asyncio.run(direct(concurrency, args.requests, args.max_tokens))
            with market(concurrency, Path(workdir)) as (base_url, key):
                through = asyncio.run(
                    gateway(base_url, key, concurrency, args.requests, args.max_tokens)
                )
            results[f"c{concurrency}"] = {
                "direct_ttft_ms_p50": round(plain.ttft_ms_p50, 1),
                "gateway_ttft_ms_p50": round(through.ttft_ms_p50, 1),
                "added_ttft_ms_p50": round(through.ttft_ms_p50 - plain.ttft_ms_p50, 1),
                "gateway_first_chunk_ms_p50": round(through.first_chunk_ms_p50, 1),
                "direct_tokens_per_second": round(plain.tokens_per_second, 1),
                "gateway_tokens_per_second": round(through.tokens_per_second, 1),
                "throughput_ratio": round(through.tokens_per_second / plain.tokens_per_second, 3),
            }
    if args.json:
        print(json.dumps(results))
        return
    for level, figures in results.items():
        if isinstance(figures, dict):
            print(level, " ".join(f"{name}={value}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
