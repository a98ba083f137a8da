"""The compute marketplace with real processes: ``aitbc serve``, a miner posting an
offer and a client buying from it with ``aitbc market`` (``--json`` parsed, errors
one line and exit 1), a job on the trade run by that miner at the trade's price,
and ``aitbc chain verify`` exiting 0 at the end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, wait_healthy
from tests.e2e.processes import stop_process as stop
from tests.e2e.test_exchange_cli import wait_sealed

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-market-admin-key"
MODEL = "smollm2-135m"
MINER = "market-e2e-miner"


def cli(home: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "COLUMNS": "200"}
    if key:
        env["AITBC_API_KEY"] = key
    return subprocess.run(
        [*AITBC, *args], capture_output=True, text=True, env=clean_env(**env), cwd=home,
        timeout=120, check=False,
    )  # fmt: skip


def test_an_offer_bought_and_used_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = spawn_serve(
        port, tmp_path / "data", log, tmp_path,
        AITBC_ADMIN_KEY=ADMIN_KEY, AITBC_BLOCK_INTERVAL_SECONDS="0.2", AITBC_RATE_LIMIT="",
    )  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    try:
        wait_healthy(process, url, lambda: log.read_text(errors="replace"))
        with httpx.Client(base_url=url, timeout=10) as http:
            miner = http.post(
                "/v1/miners/register",
                json={"miner_id": MINER, "capabilities": [MODEL], "price": 3},
            ).json()
            client = http.post("/v1/clients/register", json={"name": "buyer"}).json()
        miner_key, client_key = miner["api_key"], client["api_key"]
        posted = cli(home, "market", "offer", "--miner-id", MINER, "--model", MODEL,
                     "--price", "1.5", "--tokens", "5000", "--region", "eu", "--url", url,
                     "--json", key=miner_key)  # fmt: skip
        assert posted.returncode == 0, posted.stderr
        offer = json.loads(posted.stdout)
        listed = cli(home, "market", "offers", "--model", MODEL, "--url", url, "--json")
        assert [o["offer_id"] for o in json.loads(listed.stdout)["offers"]] == [offer["offer_id"]]
        shown = cli(home, "market", "offers", "--url", url)
        assert shown.returncode == 0 and MINER in shown.stdout
        bought = cli(home, "market", "buy", offer["offer_id"], "2000", "--url", url, "--json",
                     key=client_key)  # fmt: skip
        assert bought.returncode == 0, bought.stderr
        trade = json.loads(bought.stdout)
        assert trade["amount"] == 3.0 and trade["miner_id"] == MINER
        too_many = cli(home, "market", "buy", offer["offer_id"], "3001", "--url", url,
                       key=client_key)  # fmt: skip
        assert too_many.returncode == 1 and "sold_out" in too_many.stderr
        assert "Traceback" not in too_many.stderr

        submitted = cli(home, "jobs", "submit", "Say hello", "--model", MODEL, "--max-tokens",
                        "16", "--trade", trade["trade_id"], "--url", url, "--json",
                        key=client_key)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)
        assert job["trade_id"] == trade["trade_id"]
        with httpx.Client(base_url=url, timeout=10, headers={"X-Api-Key": miner_key}) as http:
            claimed = http.post(f"/v1/jobs/{job['job_id']}/claim", json={"miner_id": MINER})
            assert claimed.status_code == 200, claimed.text
            receipt = http.post(
                f"/v1/jobs/{job['job_id']}/complete",
                json={
                    "miner_id": MINER,
                    "result": "hello",
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                },
            ).json()
        assert receipt["unit_price"] == 1.5
        after = cli(home, "market", "trade", trade["trade_id"], "--url", url, "--json",
                    key=client_key)  # fmt: skip
        used = json.loads(after.stdout)
        assert used["used_tokens"] == 5 and used["paid"] == receipt["price"]
        wait_sealed(url)
        verified = cli(home, "chain", "verify", "--url", url)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        stop(process)
