"""``aitbc demo``: a coordinator on this machine and one job through its lifecycle.

The demo plays both the client and the miner over plain HTTP, so every step a real
miner daemon takes (register with a public key, long-poll, claim, progress, complete
with a signature) is visible, then verifies the signed receipt offline the way any
third party would. It runs no model: the miner's answer says so, instead of
pretending to be model output.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from aitbc.api import create_app
from aitbc.domain.receipts import miner_statement, sign_miner_statement, text_hash
from aitbc.domain.signing import KeyRing, SigningKey
from aitbc.sdk import verify_receipt
from aitbc.settings import Settings

DEMO_MINER_ID = "demo-miner"
DEMO_MODEL = "smollm2-135m"


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
    """Start the coordinator in-process and drive one job; return an exit status."""
    with tempfile.TemporaryDirectory(prefix="aitbc-demo-") as data_dir:
        port = port or _free_port()
        settings = Settings(data_dir=Path(data_dir), port=port, default_model=DEMO_MODEL)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                return 1
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        _say("coordinator", f"listening on {base} (SQLite in {data_dir})")
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                await _walk_through(http)
            if keep_running:
                _say("coordinator", "still running; Ctrl-C to stop")
                await serving
        finally:
            server.should_exit = True
            await serving
    return 0


async def _walk_through(http: httpx.AsyncClient) -> None:
    health = await _expect(await http.get("/health"), 200)
    _say("coordinator", f"health: {health}")
    # What a verifier does once: fetch the coordinator's public keys and pin them.
    pinned = KeyRing.from_document(await _expect(await http.get("/v1/keys"), 200))
    _say("client", f"pinned coordinator key(s): {', '.join(k.key_id for k in pinned)}")
    miner_key = SigningKey.from_seed(secrets.token_bytes(32))

    miner_creds = await _expect(
        await http.post(
            "/v1/miners/register",
            json={
                "miner_id": DEMO_MINER_ID,
                "capabilities": [DEMO_MODEL],
                "gpu_info": {"name": "CPU", "memory": 0, "count": 0},
                "price": 0.02,
                "public_key": miner_key.public_key_b64,
            },
        ),
        201,
    )
    miner = {"X-Api-Key": miner_creds["api_key"]}
    _say(
        "miner",
        f"registered {DEMO_MINER_ID} serving {DEMO_MODEL} at 0.02 AIT / 1k tokens, "
        f"signing key {miner_key.key_id}",
    )

    client_creds = await _expect(await http.post("/v1/clients/register", json={}), 201)
    client = {"X-Api-Key": client_creds["api_key"]}
    _say("client", f"registered as {client_creds['client_id']}")

    poll = asyncio.create_task(
        http.get(
            "/v1/jobs/available", params={"miner_id": DEMO_MINER_ID, "wait": 10}, headers=miner
        )
    )
    await asyncio.sleep(0.2)
    _say("miner", "long-polling for work ...")

    job = await _expect(
        await http.post(
            "/v1/jobs",
            headers=client,
            json={
                "prompt": "Name three uses of a GPU.",
                "model": DEMO_MODEL,
                "params": {"max_tokens": 64},
                "priority": "high",
            },
        ),
        201,
    )
    _say(
        "client",
        f"submitted {job['job_id']}: status={job['status']}, "
        f"estimated_cost={job['estimated_cost']} AIT",
    )

    offered = await _expect(await poll, 200)
    _say("miner", f"was handed {offered['job_id']}")
    claimed = await _expect(
        await http.post(
            f"/v1/jobs/{offered['job_id']}/claim", json={"miner_id": DEMO_MINER_ID}, headers=miner
        ),
        200,
    )
    _say("miner", f"claimed it: status={claimed['status']}, attempt {claimed['attempts']}")
    await _expect(
        await http.post(
            f"/v1/jobs/{offered['job_id']}/progress",
            json={"miner_id": DEMO_MINER_ID, "progress": 50},
            headers=miner,
        ),
        200,
    )
    _say("miner", "reported 50% progress")
    result = (
        "(aitbc demo: no model ran; `aitbc miner` runs a real one. "
        "This text was sent by the demo playing the miner.)"
    )
    usage = {"prompt_tokens": 7, "completion_tokens": 20}
    statement = miner_statement(
        offered["job_id"], DEMO_MINER_ID, text_hash(result), sum(usage.values())
    )
    receipt = await _expect(
        await http.post(
            f"/v1/jobs/{offered['job_id']}/complete",
            json={
                "miner_id": DEMO_MINER_ID,
                "result": result,
                "usage": usage,
                "miner_signature": sign_miner_statement(miner_key, statement),
            },
            headers=miner,
        ),
        200,
    )
    _say("miner", f"completed it (result signed) and got receipt {receipt['receipt_id']}")

    final = await _expect(await http.get(f"/v1/jobs/{job['job_id']}", headers=client), 200)
    _say("client", f"job is {final['status']}; result: {final['result']}")
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
    stats = await _expect(
        await http.get("/v1/jobs", headers=client, params={"status": "completed"}), 200
    )
    _say("client", f"completed jobs: {stats['total']}")
