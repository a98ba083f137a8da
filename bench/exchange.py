"""Benchmark: the exchange's matching engine (``aitbc.domain.orderbook``) on its own.

Feeds N random orders to one book, in one process on one core: limit orders (good
till cancelled, 10 % immediate-or-cancel, 5 % post-only) around a drifting mid
price, 10 % market orders, and a cancel of a random earlier order after every tenth.
Orders are generated before the clock starts; the figure is orders (cancels
included) handled per second, median of ``--runs``. Floor (issue 17): 400,000 orders
per second on one core. The HTTP path (orders accepted and settled through a real
coordinator) is measured once the exchange service exists.

    python bench/exchange.py --orders 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from aitbc.domain.orderbook import OrderBook, OrderRequest, OrderType, Side, TimeInForce

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stream = orders(args.orders, args.seed)
    runs = [run_once(stream) for _ in range(args.runs)]
    result = {
        "orders": args.orders,
        "orders_per_second_median": round(statistics.median(r["orders_per_second"] for r in runs)),
        "orders_per_second_each": [round(r["orders_per_second"]) for r in runs],
        "fills": runs[0]["fills"],
        "resting_at_end": runs[0]["resting"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
