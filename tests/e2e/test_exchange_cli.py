"""The exchange with real processes: ``aitbc serve`` (one on SQLite; two sharing one
PostgreSQL database, when configured), traders on the SDK placing random orders at
once, the ``aitbc exchange`` commands (``--json`` parsed, errors one line and exit
1), a restart that rebuilds the identical book, and at the end money conserved (AIT
and USD, through the public API) and ``aitbc chain verify`` exiting 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.sdk.client import Client
from aitbc.sdk.errors import APIError
from aitbc.settings import to_async_url
from tests.conftest import reset_postgres
from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, wait_healthy
from tests.e2e.processes import stop_process as stop

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-exchange-admin-key"
GRANT = 100.0
TRADERS = 6
ORDERS_EACH = 30
PG_URL = os.environ.get("AITBC_TEST_DATABASE_URL")


class Server:
    def __init__(self, workdir: Path, data_dir: Path, database_url: str | None) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"serve-{port}.log"
        env = {
            "AITBC_ADMIN_KEY": ADMIN_KEY,
            "AITBC_BLOCK_INTERVAL_SECONDS": "0.2",
            "AITBC_RATE_LIMIT": "",
            "AITBC_CLIENT_GRANT": str(GRANT),
            "AITBC_EVENT_POLL_SECONDS": "0.1",
        }
        if database_url:
            env["AITBC_DATABASE_URL"] = database_url
        self.process = spawn_serve(port, data_dir, self.log_path, workdir, **env)
        try:
            wait_healthy(self.process, self.url, self.log)
        except BaseException:
            stop(self.process)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def cli(home: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    if key:
        env["AITBC_API_KEY"] = key
    return subprocess.run(
        [*AITBC, *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=home,
        timeout=120,
        check=False,
    )


def register(url: str) -> tuple[str, str]:
    body = httpx.post(url + "/v1/clients/register", json={"name": "trader"}, timeout=10).json()
    return body["client_id"], body["api_key"]


def trade(url: str, key: str, seed: int, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        with Client(url, api_key=key) as client:
            for _ in range(ORDERS_EACH):
                side = rng.choice(["buy", "sell"])
                amount = str(rng.randint(1, 300) / 100)
                price = None if rng.random() < 0.15 else str(rng.randint(95, 105) / 100)
                try:
                    client.exchange.order(side, amount, price)
                except APIError as exc:
                    assert exc.error_code == "insufficient_funds", exc
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def books_balance(url: str, traders: list[tuple[str, str]]) -> None:
    """AIT: the traders and treasury hold exactly their grants; USD: the deposits."""
    ait = usd = 0.0
    for _, key in traders:
        with Client(url, api_key=key) as client:
            account = client.accounts.me()
        ait += account.balance
        usd += account.assets["USD"].balance
        assert account.locked >= 0
    treasury = httpx.get(url + "/v1/accounts/treasury", timeout=10).json()["balance"]
    assert round(ait + treasury, 6) == GRANT * len(traders)
    assert round(usd, 6) == 100.0 * len(traders)


def wait_sealed(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = httpx.get(url + "/v1/explorer/stats", timeout=5).json()
        if stats["pending_transactions"] == 0:
            return
        time.sleep(0.1)
    pytest.fail("transactions stayed pending")


def book(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(url + "/v1/exchange/orderbook?depth=1000", timeout=10).json()
    return body


@pytest.mark.parametrize("backend", ["sqlite", *(["postgresql"] if PG_URL else [])])
def test_traders_the_command_line_a_restart_and_the_chain(tmp_path: Path, backend: str) -> None:
    database_url = None
    if backend == "postgresql" and PG_URL:
        asyncio.run(reset_postgres(to_async_url(PG_URL)))
        database_url = PG_URL
    servers = [Server(tmp_path, tmp_path / "data", database_url)]
    if database_url:  # a second coordinator on the same database
        servers.append(Server(tmp_path, tmp_path / "data2", database_url))
    home = tmp_path / "home"
    home.mkdir()
    try:
        url = servers[0].url
        traders = [register(url) for _ in range(TRADERS)]
        for client_id, _ in traders:
            deposited = cli(
                home, "exchange", "deposit", client_id, "100", "--url", url, "--json",
                key=ADMIN_KEY,
            )  # fmt: skip
            assert deposited.returncode == 0, deposited.stderr
            assert json.loads(deposited.stdout)["balance"] == 100.0
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=trade, args=(servers[i % len(servers)].url, key, i, errors))
            for i, (_, key) in enumerate(traders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors, errors

        key = traders[0][1]
        placed = cli(home, "exchange", "order", "sell", "1", "--price", "9", "--url", url,
                     "--json", key=key)  # fmt: skip
        assert placed.returncode == 0, placed.stderr
        order = json.loads(placed.stdout)
        assert order["status"] == "open" and order["price"] == 9.0
        listed = cli(home, "exchange", "orders", "--status", "open", "--url", url, "--json",
                     key=key)  # fmt: skip
        assert order["order_id"] in [o["order_id"] for o in json.loads(listed.stdout)["orders"]]
        shown = cli(home, "exchange", "book", "--url", url, key=key)
        assert shown.returncode == 0 and "9" in shown.stdout
        ticker = cli(home, "exchange", "ticker", "--url", url, "--json")
        assert ticker.returncode == 0 and "last" in json.loads(ticker.stdout)
        cancelled = cli(home, "exchange", "cancel", order["order_id"], "--url", url, key=key)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        off_tick = cli(home, "exchange", "order", "buy", "1", "--price", "1.00001", "--url",
                       url, key=key)  # fmt: skip
        assert off_tick.returncode == 1
        assert off_tick.stderr.startswith("error:") and "Traceback" not in off_tick.stderr
        too_much = cli(home, "exchange", "order", "sell", "100000", "--price", "1", "--url",
                       url, key=key)  # fmt: skip
        assert too_much.returncode == 1 and "insufficient_funds" in too_much.stderr

        # Every coordinator serves the one book (followers catch up within a poll).
        before = book(url)
        for other in servers[1:]:
            deadline = time.monotonic() + 10
            while book(other.url) != before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert book(other.url) == before

        # A restart rebuilds the identical book, and trading goes on.
        stop(servers[0].process)
        servers[0] = Server(tmp_path, tmp_path / "data", database_url)
        url = servers[0].url
        assert book(url) == before
        with Client(url, api_key=traders[1][1]) as client:
            client.exchange.order("buy", "0.5", None)

        wait_sealed(url)
        books_balance(url, traders)
        verified = cli(home, "chain", "verify", "--url", url)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        for server in servers:
            stop(server.process)
