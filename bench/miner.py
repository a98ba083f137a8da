"""Benchmark: the miner's overhead over the engine it drives.

The same prompts (fixed seeds) are generated

(a) **direct**: on the backend in this process, ``--concurrency`` at a time;
(b) **through AITBC**: as jobs submitted to a real ``aitbc serve`` process and run
    by a real ``aitbc miner`` process with the same backend and concurrency
    (heartbeats, long polls, claims, progress reports, signed completions and
    receipts included), timed from the first submission to the last completion.

Both count the completion tokens the engine produced and print tokens per second
and the ratio (b)/(a); the issue's target is at least 0.9 with the default backend.
Runs alternate (a) and (b) and the medians are reported. Each (a) runs in a fresh
process, as the miner does: llama.cpp contexts freed in a process that goes on
running leave it measurably slower (seen here: 104, then 45, then 38 tokens/s).

    python bench/miner.py --jobs 16 --max-tokens 64 --concurrency 1 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from aitbc.miner.backends import create_backend
from aitbc.miner.backends.base import GenerationControl, GenerationRequest

ADMIN_KEY = "bench-admin-key"
MODEL = "smollm2-135m"
PROMPTS = [
    "Name three uses of a GPU.",
    "Write a haiku about the sea.",
    "Explain what a hash function is in two sentences.",
    "List four fruits that are red.",
    "What is the capital of France? Answer briefly.",
    "Give a short tip for learning to cook.",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
]


def job_params(index: int, max_tokens: int) -> dict[str, Any]:
    """The generation parameters of job ``index`` (the same in both modes)."""
    return {"max_tokens": max_tokens, "temperature": 0.7, "seed": 1000 + index}


async def run_direct(
    backend_name: str, jobs: int, max_tokens: int, concurrency: int, threads: int | None
) -> tuple[float, int]:
    """(seconds, completion tokens) for all prompts straight on the backend."""
    backend = create_backend(
        backend_name, model=None, concurrency=concurrency, threads_per_job=threads
    )
    await backend.start()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(jobs):
        queue.put_nowait(index)
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        while not queue.empty():
            index = queue.get_nowait()
            params = job_params(index, max_tokens)
            request = GenerationRequest(
                model=MODEL,
                prompt=PROMPTS[index % len(PROMPTS)],
                max_tokens=params["max_tokens"],
                temperature=params["temperature"],
                seed=params["seed"],
            )
            generation = await backend.generate(request, GenerationControl())
            tokens += generation.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await backend.close()
    return elapsed, tokens


def spawn(env: dict[str, str], *arguments: str) -> subprocess.Popen[bytes]:
    """``aitbc <arguments>`` as a child process, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "aitbc.cli.main", *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(check: Any, what: str, timeout_seconds: float = 60) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            value = await check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


async def run_through_aitbc(
    backend_name: str, jobs: int, max_tokens: int, concurrency: int, threads: int | None
) -> tuple[float, int]:
    """(seconds, completion tokens) for all prompts as jobs through coordinator + miner."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="aitbc-bench-miner-") as scratch:
        env = {
            **os.environ,
            "AITBC_ADMIN_KEY": ADMIN_KEY,
            "AITBC_RATE_LIMIT": "",
            "AITBC_MINER_RATE_LIMIT": "",
            "AITBC_LOG_LEVEL": "warning",
        }
        serve = spawn(env, "serve", "--port", str(port), "--data-dir", f"{scratch}/coordinator")
        miner = None
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def healthy() -> bool:
                    return (await http.get("/health")).status_code == 200

                await wait_for(healthy, "the coordinator")
                miner = spawn(
                    env, "miner", "--coordinator-url", base, "--data-dir", f"{scratch}/miner",
                    "--miner-id", "bench-miner", "--concurrency", str(concurrency),
                    "--log-level", "warning", "--backend", backend_name,
                    *(["--threads", str(threads)] if threads else []),
                )  # fmt: skip
                admin = {"X-Api-Key": ADMIN_KEY}

                async def registered() -> bool:
                    return bool((await http.get("/v1/admin/miners", headers=admin)).json())

                await wait_for(registered, "the miner", timeout_seconds=300)
                client = (await http.post("/v1/clients/register", json={})).json()
                headers = {"X-Api-Key": client["api_key"]}
                started = time.perf_counter()
                ids = []
                for index in range(jobs):
                    response = await http.post(
                        "/v1/jobs",
                        headers=headers,
                        json={
                            "prompt": PROMPTS[index % len(PROMPTS)],
                            "model": MODEL,
                            "params": job_params(index, max_tokens),
                        },
                    )
                    ids.append(response.json()["job_id"])

                async def all_done() -> list[dict[str, Any]] | None:
                    page = (
                        await http.get(
                            "/v1/jobs",
                            headers=headers,
                            params={"status": "completed", "limit": 100},
                        )
                    ).json()
                    return page["jobs"] if page["total"] >= jobs else None

                done = await wait_for(all_done, "the jobs", timeout_seconds=600)
                elapsed = time.perf_counter() - started
                tokens = sum(job["usage"]["completion_tokens"] for job in done)
        finally:
            for process in (miner, serve):
                if process is not None:
                    process.terminate()
                    process.wait(30)
    return elapsed, tokens


def direct_in_child(
    backend_name: str, jobs: int, max_tokens: int, concurrency: int, threads: int | None
) -> tuple[float, int]:
    """:func:`run_direct` in a fresh Python process."""
    output = subprocess.run(
        [sys.executable, __file__, "--direct-once", "--backend", backend_name,
         "--jobs", str(jobs),
         "--max-tokens", str(max_tokens), "--concurrency", str(concurrency),
         *(["--threads", str(threads)] if threads else [])],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    seconds, tokens = json.loads(output)
    return float(seconds), int(tokens)


def main(argv: list[str] | None = None) -> int:
    """Alternate (a) and (b) for ``--runs`` rounds and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="llama.cpp threads per job (default: cores / concurrency)"
    )
    parser.add_argument("--backend", default="llamacpp", choices=["llamacpp", "transformers"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--direct-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct_once:
        measured = asyncio.run(
            run_direct(args.backend, args.jobs, args.max_tokens, args.concurrency, args.threads)
        )
        print(json.dumps(measured))
        return 0
    direct: list[float] = []
    through: list[float] = []
    tokens_seen: list[tuple[int, int]] = []
    for _ in range(args.runs):
        seconds, tokens_a = direct_in_child(
            args.backend, args.jobs, args.max_tokens, args.concurrency, args.threads
        )
        direct.append(tokens_a / seconds)
        seconds, tokens_b = asyncio.run(
            run_through_aitbc(
                args.backend, args.jobs, args.max_tokens, args.concurrency, args.threads
            )
        )
        through.append(tokens_b / seconds)
        tokens_seen.append((tokens_a, tokens_b))
        if not args.json:
            print(
                f"  run: direct {direct[-1]:.1f} tok/s ({tokens_a} tokens), "
                f"through AITBC {through[-1]:.1f} tok/s ({tokens_b} tokens)",
                flush=True,
            )
    report = {
        "backend": args.backend,
        "jobs": args.jobs,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "threads": args.threads,
        "runs": args.runs,
        "direct_tokens_per_second": round(statistics.median(direct), 1),
        "through_aitbc_tokens_per_second": round(statistics.median(through), 1),
        "ratio": round(statistics.median(b / a for a, b in zip(direct, through, strict=True)), 3),
        "tokens_per_run": tokens_seen,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"median of {args.runs}: direct {report['direct_tokens_per_second']} tok/s, "
            f"through AITBC {report['through_aitbc_tokens_per_second']} tok/s, "
            f"ratio (b)/(a) = {report['ratio']} (target >= 0.9)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
