"""Benchmark: the exchange's matching engine (``aitbc.domain.orderbook``) on its own.

Feeds N random orders to one book, in one process on one core: limit orders (good
till cancelled, 10 % immediate-or-cancel, 5 % post-only) around a drifting mid
price, 10 % market orders, and a cancel of a random earlier order after every tenth.
Orders are generated before the clock starts; the figure is orders (cancels
included) handled per second, median of ``--runs``. Floor (issue 17): 400,000 orders
per second on one core.

``--http``: the same kind of stream (no cancels) sent to a real ``aitbc serve`` on
SQLite (or ``--database-url``) by ``--concurrency`` connections of ``--traders``
funded clients, each order answered only once matched and settled (its fills'
``trade_fill`` transactions, quote-ledger entries and balances committed). The
figure is orders answered 201 per second; 402s (a trader out of funds) are counted
apart. Floor (issue 17): 1,500 orders per second on SQLite.

    python bench/exchange.py --orders 1000000 --runs 3
    python bench/exchange.py --http --orders 20000 --concurrency 64 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aitbc.domain.orderbook import OrderBook, OrderRequest, OrderType, Side, TimeInForce

BENCH_DIR = Path(__file__).resolve().parent
OWNERS = [f"trader-{index}" for index in range(100)]


def orders(count: int, seed: int) -> list[OrderRequest | str]:
    """``count`` random orders and cancels (a cancel is the id of an earlier order)."""
    rng = random.Random(seed)
    mid = 10_000
    stream: list[OrderRequest | str] = []
    ids: list[str] = []
    for index in range(count):
        if index % 10 == 9 and ids:
            stream.append(ids[rng.randrange(len(ids))])
            continue
        mid = max(100, mid + rng.choice((-1, 0, 0, 1)))
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        order_id = f"o{index}"
        owner = OWNERS[rng.randrange(len(OWNERS))]
        lots = rng.randint(1, 50)
        roll = rng.random()
        if roll < 0.10:
            stream.append(
                OrderRequest(order_id, owner, side, OrderType.MARKET, lots, None, TimeInForce.IOC)
            )
            continue
        offset = int(rng.expovariate(1 / 8))
        price = mid - offset if side is Side.BUY else mid + offset
        tif = (
            TimeInForce.IOC
            if roll < 0.20
            else TimeInForce.POST_ONLY
            if roll < 0.25
            else TimeInForce.GTC
        )
        stream.append(OrderRequest(order_id, owner, side, OrderType.LIMIT, lots, price, tif))
        ids.append(order_id)
    return stream


def run_once(stream: list[OrderRequest | str]) -> dict[str, Any]:
    book = OrderBook()
    fills = 0
    submit, cancel = book.submit, book.cancel
    started = time.perf_counter()
    for step in stream:
        if isinstance(step, str):
            cancel(step)
        else:
            fills += len(submit(step).fills)
    elapsed = time.perf_counter() - started
    return {"orders_per_second": len(stream) / elapsed, "fills": fills, "resting": len(book)}


def _body(order: OrderRequest) -> dict[str, Any]:
    """An order of the stream as ``POST /v1/exchange/orders`` takes it (tick 0.0001
    USD, lot 0.01 AIT: the default AIT-USD market)."""
    body: dict[str, Any] = {
        "market": "AIT-USD",
        "side": order.side.value,
        "type": order.type.value,
        "amount": f"{order.lots / 100:.2f}",
    }
    if order.price_ticks is not None:
        body["price"] = f"{order.price_ticks / 10_000:.4f}"
        body["time_in_force"] = order.time_in_force.value
    return body


async def http_once(args: argparse.Namespace) -> dict[str, Any]:
    """One run of the HTTP path against a fresh coordinator."""
    import aiohttp

    sys.path.insert(0, str(BENCH_DIR))
    import lifecycle

    bodies = [_body(o) for o in orders(args.orders, args.seed) if not isinstance(o, str)]
    port = lifecycle._free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="aitbc-bench-") as data_dir:
        process = lifecycle.start_server(port, Path(data_dir), args.database_url)
        try:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                await lifecycle.wait_healthy(http, base, process)
                admin = {"X-Api-Key": lifecycle.ADMIN_KEY}
                keys = []
                for _ in range(args.traders):
                    async with http.post(f"{base}/v1/clients/register", json={}) as response:
                        client = await response.json()
                    deposit = {"address": client["client_id"], "asset": "USD", "amount": 10**6}
                    async with http.post(
                        f"{base}/v1/admin/deposits", json=deposit, headers=admin
                    ) as response:
                        if response.status != 201:
                            raise RuntimeError(await response.text())
                    keys.append({"X-Api-Key": client["api_key"]})
                statuses: dict[int, int] = {}
                latencies: list[float] = []
                fills = 0
                queue = iter(enumerate(bodies))

                async def worker() -> None:
                    nonlocal fills
                    for index, body in queue:
                        sent = time.perf_counter()
                        async with http.post(
                            f"{base}/v1/exchange/orders",
                            json=body,
                            headers=keys[index % len(keys)],
                        ) as response:
                            answer = await response.json()
                        latencies.append(time.perf_counter() - sent)
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                        if response.status == 201:
                            fills += len(answer["fills"])

                cpu_before = lifecycle._cpu_seconds(process.pid)
                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                elapsed = time.perf_counter() - started
                cpu_after = lifecycle._cpu_seconds(process.pid)
                async with http.get(f"{base}/v1/exchange/ticker") as response:
                    ticker = await response.json()
                async with http.get(f"{base}/metrics", headers=admin) as response:
                    metrics = await response.text()
        finally:
            process.terminate()
            process.wait(timeout=30)
    accepted = statuses.get(201, 0)
    latencies.sort()
    counters = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("aitbc_exchange_orders_total", "aitbc_exchange_batches_total"))
    }
    return {
        "orders_per_second": accepted / elapsed,
        "statuses": statuses,
        "fills": fills,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "server_cpu_ms_per_order": None
        if cpu_before is None or cpu_after is None
        else (cpu_after - cpu_before) * 1000 / max(accepted, 1),
        "volume_24h": ticker["volume_24h"],
        "mean_batch": counters.get("aitbc_exchange_orders_total", 0)
        / max(counters.get("aitbc_exchange_batches_total", 1), 1),
    }


def http_main(args: argparse.Namespace) -> dict[str, Any]:
    """``--runs`` HTTP runs; the median and each."""
    runs = [asyncio.run(http_once(args)) for _ in range(args.runs)]
    return {
        "path": "http",
        "database": "postgresql" if args.database_url else "sqlite",
        "orders": args.orders,
        "concurrency": args.concurrency,
        "orders_per_second_median": round(statistics.median(r["orders_per_second"] for r in runs)),
        "orders_per_second_each": [round(r["orders_per_second"]) for r in runs],
        "p50_ms_median": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms_median": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "server_cpu_ms_per_order": [
            None if r["server_cpu_ms_per_order"] is None else round(r["server_cpu_ms_per_order"], 3)
            for r in runs
        ],
        "statuses": runs[0]["statuses"],
        "fills": runs[0]["fills"],
        "mean_batch_orders": [round(r["mean_batch"], 1) for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--http", action="store_true", help="through a real coordinator")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--traders", type=int, default=32)
    parser.add_argument("--database-url", help="PostgreSQL instead of SQLite (--http)")
    args = parser.parse_args()
    if args.http:
        _print(http_main(args), args.json)
        return
    stream = orders(args.orders, args.seed)
    runs = [run_once(stream) for _ in range(args.runs)]
    result = {
        "orders": args.orders,
        "orders_per_second_median": round(statistics.median(r["orders_per_second"] for r in runs)),
        "orders_per_second_each": [round(r["orders_per_second"]) for r in runs],
        "fills": runs[0]["fills"],
        "resting_at_end": runs[0]["resting"],
    }
    _print(result, args.json)


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
