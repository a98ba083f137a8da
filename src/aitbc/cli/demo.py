"""``aitbc demo``: everything on one machine, for real.

Starts a coordinator and a miner daemon (the bundled SmolLM2 model on llama.cpp),
submits a job as a client, prints the model's answer, then fetches the job's
signed receipt and verifies it offline against the coordinator's key, pinned
before any receipt existed, the way any third party would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import tempfile
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from aitbc.api import create_app
from aitbc.api.server import uvicorn_options
from aitbc.domain.signing import KeyRing
from aitbc.miner.backends.bundled import DEFAULT_MODEL_NAME
from aitbc.miner.backends.llamacpp import LlamaCppBackend
from aitbc.miner.daemon import Miner, MinerConfig
from aitbc.sdk import verify_receipt
from aitbc.sdk.chain import verify_url
from aitbc.settings import Settings

DEMO_MINER_ID = "demo-miner"
DEMO_PROMPT = "Name three uses of a GPU."
JOB_TIMEOUT_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _say(actor: str, message: str) -> None:
    print(f"[{actor:>11}] {message}", flush=True)


async def _expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}"
        )
    return response.json()


async def run_demo(port: int = 0, keep_running: bool = False) -> int:
    """Start coordinator and miner in this process and run one job; an exit status."""
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="aitbc-demo-") as data_dir:
        port = port or _free_port()
        base = f"http://127.0.0.1:{port}"
        settings = Settings(
            data_dir=Path(data_dir) / "coordinator", port=port, default_model=DEFAULT_MODEL_NAME
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                **uvicorn_options(settings),
            )
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                return 1
            await asyncio.sleep(0.05)
        _say("coordinator", f"listening on {base} (SQLite in {settings.data_dir})")
        miner = Miner(
            MinerConfig(
                coordinator_url=base,
                data_dir=Path(data_dir) / "miner",
                miner_id=DEMO_MINER_ID,
                price=Decimal("0.02"),
                heartbeat_seconds=2,
            ),
            LlamaCppBackend(),
        )
        stop_miner = asyncio.Event()
        mining = asyncio.create_task(miner.run(stop_miner))
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                await _walk_through(http, miner, mining)
            if keep_running:
                _say("coordinator", "still running; Ctrl-C to stop")
                await serving
        finally:
            stop_miner.set()
            with contextlib.suppress(Exception):
                await mining
            server.should_exit = True
            await serving
    return 0


async def _wait_for_miner(http: httpx.AsyncClient, mining: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if mining.done():
            mining.result()  # raises the miner's start-up error
            raise RuntimeError("the miner stopped")
        response = await http.get("/v1/keys", params={"owner": DEMO_MINER_ID})
        if response.status_code == 200 and response.json()["keys"]:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the miner did not register")


async def _walk_through(http: httpx.AsyncClient, miner: Miner, mining: asyncio.Task[None]) -> None:
    health = await _expect(await http.get("/health"), 200)
    _say("coordinator", f"health: {health['status']}, database {health['database']}")
    # What a verifier does once, before trusting anything: pin the coordinator's keys.
    pinned = KeyRing.from_document(await _expect(await http.get("/v1/keys"), 200))
    _say("client", f"pinned coordinator key {', '.join(k.key_id for k in pinned)}")

    await _wait_for_miner(http, mining)
    _say(
        "miner",
        f"{DEMO_MINER_ID} registered: serves {', '.join(miner.backend.models())} on llama.cpp, "
        f"0.02 AIT per 1,000 tokens, signing key {miner.key.key_id}",
    )

    credentials = await _expect(await http.post("/v1/clients/register", json={}), 201)
    client = {"X-Api-Key": credentials["api_key"]}
    _say("client", f"registered as {credentials['client_id']}")
    job = await _expect(
        await http.post(
            "/v1/jobs",
            headers=client,
            json={
                "prompt": DEMO_PROMPT,
                "model": DEFAULT_MODEL_NAME,
                "params": {"max_tokens": 96, "seed": 42},
            },
        ),
        201,
    )
    _say("client", f"submitted {job['job_id']}: {DEMO_PROMPT!r}")

    started = time.monotonic()
    final: dict[str, Any] = {}
    while time.monotonic() - started < JOB_TIMEOUT_SECONDS:
        # Once a second: the client's rate limit is 60 requests a minute.
        await asyncio.sleep(1.0)
        response = await http.get(f"/v1/jobs/{job['job_id']}", headers=client)
        if response.status_code == 429:
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        final = await _expect(response, 200)
        if final["status"] in ("completed", "failed", "cancelled"):
            break
    if final.get("status") != "completed":
        raise RuntimeError(f"the job ended {final.get('status')}: {final.get('error')}")
    usage = final["usage"]
    _say(
        "miner",
        f"ran it in {time.monotonic() - started:.1f} s: {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens",
    )
    _say("client", "answer:\n" + final["result"].strip())

    response = await http.get(f"/v1/jobs/{job['job_id']}/receipt", headers=client)
    await _expect(response, 200)
    _say("client", f"receipt: {json.dumps(json.loads(response.content), indent=2)}")
    miner_keys = KeyRing.from_document(
        await _expect(await http.get("/v1/keys", params={"owner": DEMO_MINER_ID}), 200)
    )
    verified = verify_receipt(
        response.content, pinned, miner_keys=miner_keys, result=final["result"]
    )
    _say(
        "client",
        f"receipt verified offline: coordinator key {verified.key.key_id}, miner key "
        f"{verified.miner_key.key_id if verified.miner_key else '-'}, result hash matches; "
        f"paid {verified.receipt['price']} AIT for {verified.receipt['units']} tokens",
    )
    await _show_payment(http, client, credentials["client_id"], verified.receipt, pinned)


async def _show_payment(
    http: httpx.AsyncClient,
    client: dict[str, str],
    client_id: str,
    receipt: Mapping[str, Any],
    pinned: KeyRing,
) -> None:
    """The payment as the chain recorded it: balances, the block that sealed the
    receipt's transaction with the job's escrow, then the whole chain verified from
    outside through the public explorer against the pinned key."""
    account = await _expect(await http.get("/v1/accounts/me", headers=client), 200)
    miner = await _expect(await http.get(f"/v1/accounts/{DEMO_MINER_ID}"), 200)
    treasury = await _expect(await http.get("/v1/accounts/treasury"), 200)
    _say(
        "client",
        f"balance {account['balance']} AIT (held {account['held']}); the miner has "
        f"{miner['balance']} AIT, the treasury's fee {treasury['balance']} AIT",
    )
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while True:
        response = await http.get(f"/v1/explorer/receipts/{receipt['receipt_id']}/proof")
        if response.status_code == 200:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the receipt's transaction was not sealed in time")
        await asyncio.sleep(0.5)
    proof = response.json()["proof"]
    height = proof["block_height"]
    records = await _expect(
        await http.get("/v1/explorer/transactions", params={"address": client_id}), 200
    )
    for record in reversed(records):
        tx = record["transaction"]
        if tx["type"] == "escrow_hold" and tx["ref"] == receipt["job_id"]:
            _say(
                "coordinator",
                f"block {record['block_height']}: escrow_hold {tx['amount']} AIT from the "
                "client at submit (the most the job could cost)",
            )
    block = await _expect(await http.get(f"/v1/explorer/blocks/{height}"), 200)
    transactions = await _expect(await http.get(f"/v1/explorer/blocks/{height}/transactions"), 200)
    _say("coordinator", f"block {height} {block['hash'][:16]}… sealed the payment:")
    for tx in transactions:
        if tx["ref"] in (receipt["job_id"], proof["tx_id"]) or tx.get("receipt_id"):
            _say(
                "coordinator",
                f"  {tx['type']:<15} {tx['from'] or '-':>38} -> {tx['to'] or '-':<38} "
                f"{tx['amount']} AIT (fee {tx['fee']})",
            )
    report, _keys = await verify_url(str(http.base_url), pinned)
    if not report.ok:
        raise RuntimeError(f"chain verification failed: {report.failure}")
    _say(
        "verifier",
        f"chain verified through the public API: {report.blocks_checked} blocks, "
        f"{report.transactions_checked} transactions, {report.receipts_checked} receipts, "
        "every balance replayed from genesis matches each block's state_root",
    )
