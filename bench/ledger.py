"""Benchmark: sealing and verifying a chain of 100,000+ transactions.

1. Starts ``aitbc serve`` once on a fresh SQLite database (or ``--database-url``) so it
   migrates, writes its signing key and seals genesis, and registers ``--clients``
   clients through HTTP (each gets the starting grant: one ``mint``), and with
   ``--jobs N`` runs N paid no-op jobs over HTTP (a hold, a receipt's anchor, a release
   and a refund each: receipts for the verifier to check). Stops it.
2. Appends ``--transactions`` transfers between those clients straight into the
   database through the coordinator's own write path (``services.payment`` and
   ``storage.ledger_queries``: balances and transaction rows in one database
   transaction per batch), pending, as a busy coordinator would leave them.
3. Starts ``aitbc serve`` again and times the sealer working the backlog off into
   blocks of at most 10,000: **transactions sealed per second** (from the first block
   after start-up to the last).
4. Runs ``aitbc chain verify --url`` against it (HTTP only, keys pinned from a file):
   **transactions verified per second**, wall clock of the whole command.

    python bench/ledger.py --transactions 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN_KEY = "bench-admin-key"
BATCH = 5_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(port: int, data_dir: Path, database_url: str | None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AITBC_ADMIN_KEY": ADMIN_KEY,
        "AITBC_RATE_LIMIT": "",
        "AITBC_MINER_RATE_LIMIT": "",
        "AITBC_LOG_LEVEL": "warning",
        "AITBC_BLOCK_INTERVAL_SECONDS": "1",
        "AITBC_CLIENT_GRANT": "1000000",
    }
    command = [sys.executable, "-m", "aitbc.cli.main", "serve", "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    if database_url:
        command += ["--database-url", database_url]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def _wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("aitbc serve exited")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("aitbc serve did not become healthy")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


async def _append_transfers(database_url: str, clients: list[str], count: int, seed: int) -> None:
    """``count`` transfers between ``clients``, written as the coordinator writes them."""
    from aitbc.domain.ledger import TxType
    from aitbc.services.payment import new_transaction, record
    from aitbc.settings import to_async_url
    from aitbc.storage import db

    engine = db.create_engine(to_async_url(database_url))
    rng = random.Random(seed)
    now = int(time.time())
    nonce = 0
    try:
        for start in range(0, count, BATCH):
            size = min(BATCH, count - start)
            batch = []
            for _ in range(size):
                sender, recipient = rng.sample(clients, 2)
                nonce += 1
                batch.append(
                    new_transaction(
                        TxType.TRANSFER,
                        sender=sender,
                        recipient=recipient,
                        amount_micro=rng.randint(1, 1_000),  # µAIT: far below any balance
                        timestamp=now,
                        extra={"nonce": nonce},
                    )
                )
            await db.transaction(engine, record, batch)
    finally:
        await engine.dispose()


async def _paid_jobs(base: str, count: int, workers: int = 8) -> None:
    """``count`` paid no-op jobs, submitted, claimed and completed over HTTP: each
    leaves a hold, a receipt's anchor, a release and a refund on the chain."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        client = (await http.post("/v1/clients/register", json={})).json()["api_key"]
        miner = (
            await http.post(
                "/v1/miners/register",
                json={"miner_id": "bench-miner", "capabilities": ["bench"], "price": 0.01,
                      "concurrency": workers},
            )
        ).json()["api_key"]  # fmt: skip
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                job = await http.post(
                    "/v1/jobs",
                    json={"prompt": "noop", "model": "bench", "params": {"max_tokens": 8}},
                    headers={"X-Api-Key": client},
                )
                job_id = job.json()["job_id"]
                claimed = await http.post(
                    f"/v1/jobs/{job_id}/claim",
                    json={"miner_id": "bench-miner"},
                    headers={"X-Api-Key": miner},
                )
                assert claimed.status_code == 200, claimed.text
                done = await http.post(
                    f"/v1/jobs/{job_id}/complete",
                    json={
                        "miner_id": "bench-miner",
                        "result": "ok",
                        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
                    },
                    headers={"X-Api-Key": miner},
                )
                assert done.status_code == 200, done.text

        await asyncio.gather(*(worker() for _ in range(workers)))


def _pending(base: str) -> int:
    stats = httpx.get(f"{base}/v1/explorer/stats", timeout=30).json()
    return int(stats["pending_transactions"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aitbc-ledger-bench-") as tmp:
        data_dir = Path(tmp)
        database_url = args.database_url or f"sqlite:///{data_dir / 'aitbc.db'}"
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        process = _serve(port, data_dir, database_url)
        try:
            _wait_healthy(base, process)
            with httpx.Client(base_url=base, timeout=30) as http:
                clients = [
                    http.post("/v1/clients/register", json={}).json()["client_id"]
                    for _ in range(args.clients)
                ]
                if args.jobs:
                    asyncio.run(_paid_jobs(base, args.jobs))
                while _pending(base):  # sealed before the backlog is written
                    time.sleep(0.05)
        finally:
            _stop(process)
        asyncio.run(_append_transfers(database_url, clients, args.transactions, args.seed))

        process = _serve(port, data_dir, database_url)
        try:
            _wait_healthy(base, process)
            # The sealer's first beat comes one interval after start-up: timed from
            # the last moment the whole backlog was pending to the first with none.
            backlog = args.transactions
            started = time.perf_counter()
            while True:
                left = _pending(base)
                now = time.perf_counter()
                if left == backlog:
                    started = now
                elif left == 0:
                    break
                time.sleep(0.005)
            seal_seconds = now - started
            first = backlog
            keys_file = data_dir / "keys.json"
            keys_file.write_text(json.dumps(httpx.get(f"{base}/v1/keys").json()))
            verify_started = time.perf_counter()
            verify = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "aitbc.cli.main",
                    "chain",
                    "verify",
                    "--url",
                    base,
                    "--keys",
                    str(keys_file),
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            verify_seconds = time.perf_counter() - verify_started
            stats = httpx.get(f"{base}/v1/explorer/stats").json()
        finally:
            _stop(process)
    if verify.returncode != 0:
        raise RuntimeError(
            f"chain verify exited {verify.returncode}: {verify.stdout}{verify.stderr}"
        )
    total = int(stats["total_transactions"])
    report = json.loads(verify.stdout)
    return {
        "transactions_sealed": first,
        "seal_seconds": round(seal_seconds, 3),
        "sealed_per_second": round(first / seal_seconds),
        "chain_transactions": total,
        "blocks": int(stats["block_height"]) + 1,
        "verify_seconds": round(verify_seconds, 3),
        "verified_per_second": round(total / verify_seconds),
        # The verifier's own clock: the command less Python's start-up and imports.
        "verifier_seconds": round(report["elapsed_seconds"], 3),
        "verifier_per_second": round(total / report["elapsed_seconds"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--jobs", type=int, default=0, help="paid jobs first (each anchors a receipt)"
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [run(args) for _ in range(args.runs)]
    summary = {
        key: statistics.median(result[key] for result in results)
        for key in ("sealed_per_second", "verified_per_second", "verifier_per_second")
    }
    output = {"runs": results, "median": summary}
    print(json.dumps(output, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
