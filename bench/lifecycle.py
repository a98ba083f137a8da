"""Benchmark: full job lifecycles through a real coordinator process over HTTP.

Starts ``aitbc serve`` (SQLite by default, or ``--database-url postgresql://...`` on a
fresh database created for the run), registers one client and M simulated miners, and:

1. **throughput**: submits N jobs (``--submitters`` concurrent submit loops) while the
   M miners loop ``available?wait`` -> ``claim`` -> ``complete``. Prints full
   lifecycles per second (first submit to last completion).
2. **dispatch latency**: with all miners idle and long-polling, submits jobs one at a
   time and measures submit (request sent) -> a waiting miner receiving the job.
   Prints p50/p99.

The miners run no model (no-op jobs): this measures the coordinator, as the Celery
and procrastinate figures it is compared with do. Rate limits stay on, set high, so
their cost is included.

    python bench/lifecycle.py --jobs 3000 --miners 8
    python bench/lifecycle.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ADMIN_KEY = "bench-admin-key"
MODEL = "bench-model"


@dataclass
class Recorder:
    """Timestamps per job: submit sent, handed to a miner, completed."""

    submitted: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    completed: int = 0
    conflicts: int = 0
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    def complete_one(self) -> None:
        self.completed += 1
        self.progressed.set()

    async def wait_for(self, completed: int) -> None:
        """Until at least ``completed`` jobs are done."""
        while self.completed < completed:
            self.progressed.clear()
            await self.progressed.wait()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.asynccontextmanager
async def fresh_postgres(url: str) -> Any:
    """Create a throw-away database next to ``url``'s, yield its URL, drop it after."""
    import asyncpg

    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"aitbc_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(plain)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, _, _ = plain.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(plain)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def start_server(port: int, data_dir: Path, database_url: str | None) -> subprocess.Popen[bytes]:
    """``aitbc serve`` as a child process, rate limits high but on."""
    env = {
        **os.environ,
        "AITBC_ADMIN_KEY": ADMIN_KEY,
        "AITBC_RATE_LIMIT": "10000000/minute",
        "AITBC_MINER_RATE_LIMIT": "10000000/minute",
        "AITBC_LOG_LEVEL": "warning",
        # Every job holds its most cost in escrow: fund the one client for them all
        # (a coordinator from before payments ignores the setting).
        "AITBC_CLIENT_GRANT": "1000000",
    }
    command = [
        sys.executable,
        "-m",
        "aitbc.cli.main",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    if database_url:
        command += ["--database-url", database_url]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


async def wait_healthy(
    http: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            async with http.get(f"{base}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not become healthy")


async def miner_loop(
    http: aiohttp.ClientSession,
    base: str,
    miner_id: str,
    key: str,
    recorder: Recorder,
    stop: asyncio.Event,
) -> None:
    """Poll, claim, complete until ``stop`` is set."""
    headers = {"X-Api-Key": key}
    params = {"miner_id": miner_id, "wait": "2"}
    while not stop.is_set():
        async with http.get(
            f"{base}/v1/jobs/available", params=params, headers=headers
        ) as response:
            job = await response.json()
        if job is None:
            continue
        job_id = job["job_id"]
        recorder.received.setdefault(job_id, time.perf_counter())
        async with http.post(
            f"{base}/v1/jobs/{job_id}/claim", json={"miner_id": miner_id}, headers=headers
        ) as response:
            if response.status == 409:
                recorder.conflicts += 1
                continue
            if response.status != 200:
                raise RuntimeError(f"claim: {response.status} {await response.text()}")
        async with http.post(
            f"{base}/v1/jobs/{job_id}/complete",
            json={
                "miner_id": miner_id,
                "result": "ok",
                "usage": {"prompt_tokens": 2, "completion_tokens": 1},
            },
            headers=headers,
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"complete: {response.status} {await response.text()}")
        recorder.complete_one()


async def submit(http: aiohttp.ClientSession, base: str, key: str, recorder: Recorder) -> None:
    sent = time.perf_counter()
    async with http.post(
        f"{base}/v1/jobs", json={"prompt": "noop", "model": MODEL}, headers={"X-Api-Key": key}
    ) as response:
        body = await response.json()
        if response.status != 201:
            raise RuntimeError(f"submit: {response.status} {body}")
    recorder.submitted[body["job_id"]] = sent


@dataclass
class Throughput:
    """One throughput phase's figures."""

    lifecycles_per_second: float
    # The coordinator's CPU time per lifecycle (None where /proc is not there).
    server_cpu_ms_per_lifecycle: float | None
    # Each job's timestamps, and the claim conflicts.
    recorder: Recorder


async def throughput(
    http: aiohttp.ClientSession,
    base: str,
    client_keys: list[str],
    miners: list[tuple[str, str]],
    jobs: int,
    submitters: int,
    pid: int,
) -> Throughput:
    """Submit ``jobs`` jobs (``submitters`` concurrent loops, round-robin over
    ``client_keys``) while the ``miners`` loop poll -> claim -> complete; time first
    submit to last completion, and the server's (``pid``) CPU meanwhile. The miners
    are stopped before it returns or raises; a miner's error is raised."""
    recorder = Recorder()
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(miner_loop(http, base, miner, key, recorder, stop))
        for miner, key in miners
    ]
    try:
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        cpu_before = _cpu_seconds(pid)
        queue = iter(range(jobs))

        async def submitter() -> None:
            for index in queue:
                await submit(http, base, client_keys[index % len(client_keys)], recorder)

        await asyncio.gather(*(submitter() for _ in range(submitters)))
        finished = asyncio.ensure_future(recorder.wait_for(jobs))
        await asyncio.wait([finished, *workers], return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            finished.cancel()
            for worker in workers:
                if worker.done():
                    worker.result()  # raises the miner's error
            raise RuntimeError(f"a miner stopped: {recorder.completed} of {jobs} completed")
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_seconds(pid)
    finally:
        stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    cpu_ms = (
        None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / jobs * 1000
    )
    return Throughput(jobs / elapsed, cpu_ms, recorder)


async def run(args: argparse.Namespace, database_url: str | None) -> dict[str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="aitbc-bench-") as data_dir:
        process = start_server(port, Path(data_dir), database_url)
        connector = aiohttp.TCPConnector(limit=0)
        try:
            async with aiohttp.ClientSession(connector=connector) as http:
                await wait_healthy(http, base, process)
                async with http.post(f"{base}/v1/clients/register", json={}) as response:
                    client_key = (await response.json())["api_key"]
                miners: list[tuple[str, str]] = []
                for index in range(args.miners):
                    miner_id = f"bench-miner-{index}"
                    async with http.post(
                        f"{base}/v1/miners/register",
                        json={
                            "miner_id": miner_id,
                            "capabilities": [MODEL],
                            "price": 0.01,
                        },
                    ) as response:
                        miners.append((miner_id, (await response.json())["api_key"]))

                # 1. throughput
                measured = await throughput(
                    http, base, [client_key], miners, args.jobs, args.submitters, process.pid
                )
                recorder = measured.recorder
                cpu_ms = measured.server_cpu_ms_per_lifecycle
                server_cpu_ms = None if cpu_ms is None else round(cpu_ms, 3)
                queued_latencies = [
                    (recorder.received[j] - t) * 1000 for j, t in recorder.submitted.items()
                ]

                # 2. dispatch latency with miners already waiting
                latency_recorder = Recorder()
                stop = asyncio.Event()
                latency_workers = [
                    asyncio.create_task(miner_loop(http, base, m, k, latency_recorder, stop))
                    for m, k in miners
                ]
                await asyncio.sleep(0.5)
                for _ in range(args.latency_jobs):
                    target = latency_recorder.completed + 1
                    await submit(http, base, client_key, latency_recorder)
                    await asyncio.wait_for(latency_recorder.wait_for(target), 30)
                    await asyncio.sleep(0.005)  # let the miner go back to waiting
                stop.set()
                for worker in latency_workers:
                    worker.cancel()
                await asyncio.gather(*latency_workers, return_exceptions=True)
                dispatch = [
                    (latency_recorder.received[j] - t) * 1000
                    for j, t in latency_recorder.submitted.items()
                ]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "backend": "postgresql" if database_url else "sqlite",
        "jobs": args.jobs,
        "miners": args.miners,
        "submitters": args.submitters,
        "lifecycles_per_second": round(measured.lifecycles_per_second, 1),
        "claim_conflicts": recorder.conflicts,
        "server_cpu_ms_per_lifecycle": server_cpu_ms,
        "queued_dispatch_ms_p50": round(statistics.median(queued_latencies), 2),
        "queued_dispatch_ms_p99": round(_percentile(queued_latencies, 99), 2),
        "idle_dispatch_ms_p50": round(statistics.median(dispatch), 2),
        "idle_dispatch_ms_p99": round(_percentile(dispatch, 99), 2),
        "latency_samples": len(dispatch),
    }


async def run_once(args: argparse.Namespace) -> dict[str, Any]:
    if args.database_url:
        async with fresh_postgres(args.database_url) as url:
            return await run(args, url)
    return await run(args, None)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """``--runs`` full runs (fresh server and database each); the median of each figure."""
    runs = [await run_once(args) for _ in range(args.runs)]
    result = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            result[key] = round(statistics.median(run[key] for run in runs), 2)
    result["runs"] = args.runs
    result["lifecycles_per_second_each"] = [run["lifecycles_per_second"] for run in runs]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--miners", type=int, default=8)
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--database-url", help="PostgreSQL server to create a bench DB on")
    parser.add_argument("--runs", type=int, default=3, help="report the median of N runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"backend              {result['backend']}  ({args.jobs} jobs, {args.miners} miners,"
        f" {args.submitters} submitters)"
    )
    print(
        f"full lifecycles/s    {result['lifecycles_per_second']} (median of {args.runs}: "
        f"{result['lifecycles_per_second_each']})"
    )
    print(
        f"dispatch, idle miner p50 {result['idle_dispatch_ms_p50']} ms, "
        f"p99 {result['idle_dispatch_ms_p99']} ms ({result['latency_samples']} jobs)"
    )
    print(
        f"queue wait, flooded  p50 {result['queued_dispatch_ms_p50']} ms, "
        f"p99 {result['queued_dispatch_ms_p99']} ms (submitters outpace miners)"
    )
    print(f"server CPU/lifecycle {result['server_cpu_ms_per_lifecycle']} ms (median)")
    print(f"claim conflicts      {result['claim_conflicts']}")


if __name__ == "__main__":
    main()
