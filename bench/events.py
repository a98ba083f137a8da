"""Benchmark: 1,000 ``/ws`` subscribers on one coordinator process while the
lifecycle benchmark runs alongside.

A real ``aitbc serve`` (SQLite) with C clients (1,000 by default) and M simulated
miners. Each client has one WebSocket subscriber, in a separate process, on
``job_updates`` (its own jobs) and ``blocks``: a marketplace's clients watching their
jobs. Jobs are submitted round-robin by the clients, so every job's events go to its
client's subscriber. Alternating, in one sitting:

- **without** subscribers: N full lifecycles (submit, poll, claim, complete);
- **with** the C subscribers connected: the same N lifecycles.

Prints lifecycles per second both ways and their ratio (floor 0.8), and for the run
with subscribers: events delivered per second and the delay from the transition
(the coordinator's clock when it wrote the event, just before its commit) to the
subscriber receiving it, p50 and p99 (floor: p99 under 50 ms).

    python bench/events.py --subscribers 1000 --jobs 3000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import connect

from lifecycle import MODEL, _free_port, _percentile, start_server, throughput, wait_healthy


def _raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _subscribe_all(url: str, keys: list[str], ready: Any, stop: Any, results: Any) -> None:
    delays: list[float] = []
    received = 0
    first: float | None = None
    last = 0.0

    async def one(key: str) -> None:
        nonlocal received, first, last
        async with connect(
            url, additional_headers={"X-Api-Key": key}, max_queue=None, open_timeout=60
        ) as ws:
            await ws.send(json.dumps({"method": "subscribe", "params": ["job_updates", "blocks"]}))
            reply = json.loads(await ws.recv())
            assert "result" in reply, reply
            subscribed.append(key)
            async for raw in ws:
                now = time.time()
                event = json.loads(raw)
                if event.get("channel") != "job_updates":
                    continue
                at = datetime.fromisoformat(event["data"]["at"].replace("Z", "+00:00"))
                delays.append(now - at.timestamp())
                received += 1
                first = first or now
                last = now

    subscribed: list[str] = []
    tasks = []
    for start in range(0, len(keys), 50):  # connect in waves, not all at once
        tasks += [asyncio.create_task(one(key)) for key in keys[start : start + 50]]
        await asyncio.sleep(0.05)
    while True:  # until every subscription is acknowledged (a failed one raises)
        for task in tasks:
            if task.done():
                task.result()
        if len(subscribed) == len(keys):
            break
        await asyncio.sleep(0.05)
    ready.set()
    # ``stop`` is a multiprocessing event: wait for it on a thread.
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    span = (last - first) if first else 0.0
    results.put(
        {
            "events": received,
            "events_per_second": received / span if span > 0 else 0.0,
            "delay_ms_p50": statistics.median(delays) * 1000 if delays else None,
            "delay_ms_p99": _percentile(delays, 99) * 1000 if delays else None,
        }
    )


def _subscriber_process(url: str, keys: list[str], ready: Any, stop: Any, results: Any) -> None:
    _raise_open_files_limit()
    asyncio.run(_subscribe_all(url, keys, ready, stop, results))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="aitbc-bench-events-") as data_dir:
        process = start_server(port, Path(data_dir), None)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                await wait_healthy(http, base, process)
                keys: list[str] = []
                for _ in range(args.subscribers):
                    async with http.post(f"{base}/v1/clients/register", json={}) as response:
                        keys.append((await response.json())["api_key"])
                miners: list[tuple[str, str]] = []
                for index in range(args.miners):
                    miner_id = f"bench-miner-{index}"
                    async with http.post(
                        f"{base}/v1/miners/register",
                        json={"miner_id": miner_id, "capabilities": [MODEL], "price": 0.01},
                    ) as response:
                        miners.append((miner_id, (await response.json())["api_key"]))
                without: list[float] = []
                with_subscribers: list[float] = []
                cpu_without: list[float] = []
                cpu_with: list[float] = []
                delivery: list[dict[str, Any]] = []
                for _ in range(args.runs):
                    async with asyncio.timeout(300):
                        measured = await throughput(
                            http, base, keys, miners, args.jobs, args.submitters, process.pid
                        )
                    rate, cpu = measured.lifecycles_per_second, measured.server_cpu_ms_per_lifecycle
                    without.append(rate)
                    if cpu is not None:
                        cpu_without.append(cpu)
                    context = multiprocessing.get_context("spawn")
                    ready, stop, results = context.Event(), context.Event(), context.Queue()
                    child = context.Process(
                        target=_subscriber_process,
                        args=(f"ws://127.0.0.1:{port}/ws", keys, ready, stop, results),
                    )
                    child.start()
                    while not ready.is_set():
                        if not child.is_alive():
                            raise RuntimeError("the subscriber process failed")
                        await asyncio.sleep(0.1)
                    async with asyncio.timeout(300):
                        measured = await throughput(
                            http, base, keys, miners, args.jobs, args.submitters, process.pid
                        )
                    rate, cpu = measured.lifecycles_per_second, measured.server_cpu_ms_per_lifecycle
                    with_subscribers.append(rate)
                    if cpu is not None:
                        cpu_with.append(cpu)
                    await asyncio.sleep(1.0)  # the last events arrive
                    stop.set()
                    delivery.append(await asyncio.to_thread(results.get, True, 60))
                    await asyncio.to_thread(child.join, 30)
        finally:
            process.terminate()
            process.wait(timeout=10)
    ratios = [b / a for a, b in zip(without, with_subscribers, strict=True)]
    return {
        "subscribers": args.subscribers,
        "jobs": args.jobs,
        "runs": args.runs,
        "lifecycles_per_second_without": [round(rate, 1) for rate in without],
        "lifecycles_per_second_with": [round(rate, 1) for rate in with_subscribers],
        "ratio_median": round(statistics.median(ratios), 3),
        "server_cpu_ms_per_lifecycle_without": round(statistics.median(cpu_without), 2)
        if cpu_without
        else None,
        "server_cpu_ms_per_lifecycle_with": round(statistics.median(cpu_with), 2)
        if cpu_with
        else None,
        "job_events_delivered": [d["events"] for d in delivery],
        "events_per_second_median": round(
            statistics.median(d["events_per_second"] for d in delivery), 1
        ),
        "delay_ms_p50_median": round(statistics.median(d["delay_ms_p50"] for d in delivery), 2),
        "delay_ms_p99_median": round(statistics.median(d["delay_ms_p99"] for d in delivery), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--miners", type=int, default=8)
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="alternated pairs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    _raise_open_files_limit()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:40} {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
