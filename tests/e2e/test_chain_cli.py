"""Real ``aitbc chain ...``, money and ``receipts verify`` processes against a real
``aitbc serve``: a sound chain exits 0, a chain tampered with in the database exits 1
naming the block, and an unreachable coordinator or a bad key file exits 2; ``chain
follow`` resumes from its copy; ``balance``, ``transfer`` (signed too) and ``admin
mint`` move money; a receipt's block is checked online, and a bundle offline.

Every CLI run gets its own HOME, no AITBC_* setting of the caller and an unreachable
AITBC_URL, so each network use is explicit.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.domain.signing import SigningKey
from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, wait_healthy
from tests.e2e.processes import stop_process as stop

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-chain-admin-key"
MODEL = "smollm2-135m"
UNREACHABLE_URL = "http://127.0.0.1:9"
CLI_TIMEOUT_SECONDS = 120
SEAL_TIMEOUT_SECONDS = 20.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start(workdir: Path, data_dir: Path) -> Server:
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    process = spawn_serve(
        port,
        data_dir,
        log_path,
        workdir,
        AITBC_ADMIN_KEY=ADMIN_KEY,
        AITBC_BLOCK_INTERVAL_SECONDS="0.2",
        AITBC_RATE_LIMIT="",
    )
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    try:
        wait_healthy(process, server.url, server.log)
    except BaseException:
        stop(process)
        raise
    return server


def cli(home: Path, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AITBC, *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            AITBC_URL=UNREACHABLE_URL,
            **env,
        ),
        cwd=home,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"


def expect(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def wait_sealed(url: str) -> None:
    """Until nothing is pending (the coordinator seals every 0.2 s here)."""
    deadline = time.monotonic() + SEAL_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stats = expect(httpx.get(url + "/v1/explorer/stats", timeout=5))
        if stats["pending_transactions"] == 0:
            return
        time.sleep(0.1)
    pytest.fail("transactions stayed pending")


@dataclass
class Market:
    client_id: str
    client_key: str
    other_id: str
    miner_key: str
    receipt_id: str


def make_market(url: str) -> Market:
    """Two clients, a miner, a paid job; everything sealed."""
    with httpx.Client(base_url=url, timeout=10) as http:
        client = expect(http.post("/v1/clients/register", json={"name": "e2e"}), 201)
        other = expect(http.post("/v1/clients/register", json={"name": "e2e-2"}), 201)
        miner = expect(
            http.post(
                "/v1/miners/register",
                json={"miner_id": "chain-miner", "capabilities": [MODEL], "price": 0.2},
            ),
            201,
        )
        client_headers = {"X-Api-Key": client["api_key"]}
        miner_headers = {"X-Api-Key": miner["api_key"]}
        job = expect(
            http.post("/v1/jobs", json={"prompt": "hi", "model": MODEL}, headers=client_headers),
            201,
        )
        claim = {"miner_id": "chain-miner"}
        expect(http.post(f"/v1/jobs/{job['job_id']}/claim", json=claim, headers=miner_headers))
        done = {
            "miner_id": "chain-miner",
            "result": "hello",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        receipt = expect(
            http.post(f"/v1/jobs/{job['job_id']}/complete", json=done, headers=miner_headers)
        )
    wait_sealed(url)
    return Market(
        client["client_id"],
        client["api_key"],
        other["client_id"],
        miner["api_key"],
        receipt["receipt_id"],
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start(tmp_path, tmp_path / "data")
    try:
        yield running
    finally:
        stop(running.process)


def test_chain_verify_exit_codes(server: Server, home: Path, tmp_path: Path) -> None:
    market = make_market(server.url)
    keys = tmp_path / "keys.json"
    assert cli(home, "keys", "pin", "--url", server.url, "--keyring", keys).returncode == 0

    sound = cli(home, "chain", "verify", "--url", server.url, "--keys", keys)
    assert sound.returncode == 0, describe(sound)
    assert sound.stdout.startswith("ok: chain sound: "), describe(sound)
    assert "1 receipts checked" in sound.stdout
    assert "WARNING" not in sound.stderr

    # The report as JSON, for scripts.
    report = cli(home, "chain", "verify", "--url", server.url, "--keys", keys, "--json")
    assert report.returncode == 0, describe(report)
    assert json.loads(report.stdout)["ok"] is True

    # Without pinned keys: trust on first use, said loudly.
    first_use = cli(home, "chain", "verify", "--url", server.url)
    assert first_use.returncode == 0, describe(first_use)
    assert "trust on first use" in first_use.stderr
    # What `aitbc keys pin` stored is used without --keys.
    assert cli(home, "keys", "pin", "--url", server.url).returncode == 0
    pinned = cli(home, "chain", "verify", "--url", server.url, "--progress")
    assert pinned.returncode == 0 and "WARNING" not in pinned.stderr, describe(pinned)
    assert "block " in pinned.stderr  # --progress writes to stderr even without a TTY

    # Could not run: nothing listens, or the key file is not one.
    unreachable = cli(home, "chain", "verify", "--url", UNREACHABLE_URL, "--keys", keys)
    assert unreachable.returncode == 2, describe(unreachable)
    assert unreachable.stderr.startswith("error: "), describe(unreachable)
    bad_keys = tmp_path / "bad.json"
    bad_keys.write_text('{"keys": [{"public_key": "nope"}]}')
    refused = cli(home, "chain", "verify", "--url", server.url, "--keys", bad_keys)
    assert refused.returncode == 2 and refused.stderr.startswith("error: "), describe(refused)
    missing = cli(home, "chain", "verify", "--url", server.url, "--keys", tmp_path / "none")
    assert missing.returncode == 2, describe(missing)

    # Tampered with in the database (the coordinator stopped meanwhile): exit 1.
    stop(server.process)
    with sqlite3.connect(server.data_dir / "aitbc.db") as db:
        seq, height, document = db.execute(
            "SELECT seq, block_height, document FROM ledger_transactions "
            "WHERE type = 'escrow_release'"
        ).fetchone()
        changed = json.loads(document)
        changed["amount"] = changed["amount"] * 10
        db.execute(
            "UPDATE ledger_transactions SET document = ? WHERE seq = ?",
            (json.dumps(changed), seq),
        )
    restarted = start(tmp_path, server.data_dir)
    server.process = restarted.process
    bad = cli(home, "chain", "verify", "--url", restarted.url, "--keys", keys)
    assert bad.returncode == 1, describe(bad)
    assert bad.stdout == "", describe(bad)
    assert bad.stderr.startswith(f"invalid: block {height}: bad_transaction_id: "), describe(bad)
    del market


def test_chain_follow_resumes_from_its_copy(server: Server, home: Path, tmp_path: Path) -> None:
    market = make_market(server.url)
    keys = tmp_path / "keys.json"
    assert cli(home, "keys", "pin", "--url", server.url, "--keyring", keys).returncode == 0
    copy = tmp_path / "copy"
    args = ("chain", "follow", "--url", server.url, "--keys", keys, "--dir", copy, "--once")
    first = cli(home, *args)
    assert first.returncode == 0, describe(first)
    assert first.stdout.startswith("ok: verified up to block "), describe(first)

    again = cli(home, *args)
    assert again.returncode == 0, describe(again)
    assert "resuming after block" in again.stderr and "up to date" in again.stdout

    payment = {"to": market.other_id, "amount": "1", "nonce": 9}
    headers = {"X-Api-Key": market.client_key}
    expect(httpx.post(server.url + "/v1/transfers", json=payment, headers=headers), 201)
    wait_sealed(server.url)
    more = cli(home, *args)
    assert more.returncode == 0, describe(more)
    assert more.stdout.startswith("ok: verified up to block "), describe(more)

    other_chain = cli(home, "chain", "follow", "--url", UNREACHABLE_URL, "--dir", copy, "--once")
    assert other_chain.returncode == 2, describe(other_chain)


def test_money_commands(server: Server, home: Path, tmp_path: Path) -> None:
    market = make_market(server.url)
    client = {"AITBC_API_KEY": market.client_key}
    balance = cli(home, "balance", "--url", server.url, "--json", **client)
    assert balance.returncode == 0, describe(balance)
    before = json.loads(balance.stdout)
    assert before["address"] == market.client_id
    readable = cli(home, "balance", "--url", server.url, **client)
    assert readable.stdout.strip() == (
        f"{before['balance']} AIT available, {before['held']} AIT held for unfinished jobs "
        f"(account {market.client_id})"
    )

    sent = cli(home, "transfer", market.other_id, "1.5", "--url", server.url, **client)
    assert sent.returncode == 0, describe(sent)
    tx = json.loads(sent.stdout)
    assert tx["type"] == "transfer" and tx["amount"] == 1.5 and isinstance(tx["nonce"], int)
    again = cli(
        home, "transfer", market.other_id, "1", "--nonce", str(tx["nonce"]), "--url", server.url,
        **client,
    )  # fmt: skip
    assert again.returncode == 1 and "nonce_reused" in again.stdout, describe(again)
    too_much = cli(home, "transfer", market.other_id, "100000", "--url", server.url, **client)
    assert too_much.returncode == 1 and "insufficient_funds" in too_much.stdout
    bad_amount = cli(home, "transfer", market.other_id, "0.0000001", "--url", server.url, **client)
    assert bad_amount.returncode == 2, describe(bad_amount)
    assert cli(home, "balance", "--url", UNREACHABLE_URL, **client).returncode == 2

    minted = cli(
        home, "admin", "mint", market.client_id, "5", "--url", server.url,
        AITBC_ADMIN_KEY=ADMIN_KEY,
    )  # fmt: skip
    assert minted.returncode == 0, describe(minted)
    assert json.loads(minted.stdout)["type"] == "mint"
    not_admin = cli(home, "admin", "mint", market.client_id, "5", "--url", server.url, **client)
    assert not_admin.returncode == 1, describe(not_admin)

    # Once the account registered a key, transfers are signed with --key.
    key = SigningKey.from_seed(bytes(range(7, 39)))
    pem = tmp_path / "client_ed25519.pem"
    pem.write_bytes(key.to_pem())
    expect(
        httpx.post(
            server.url + "/v1/accounts/me/keys",
            json={"public_key": key.public_key_b64},
            headers={"X-Api-Key": market.client_key},
        ),
        201,
    )
    time.sleep(1.1)  # a transfer in the second the key was registered would need it
    unsigned = cli(home, "transfer", market.other_id, "1", "--url", server.url, **client)
    assert unsigned.returncode == 1 and "missing_signature" in unsigned.stdout
    assert "--key" in unsigned.stderr
    signed = cli(
        home, "transfer", market.other_id, "1", "--key", pem, "--url", server.url, **client
    )
    assert signed.returncode == 0, describe(signed)
    assert json.loads(signed.stdout)["signature"]["key_id"] == key.key_id
    wait_sealed(server.url)
    keys = tmp_path / "keys.json"
    assert cli(home, "keys", "pin", "--url", server.url, "--keyring", keys).returncode == 0
    sound = cli(home, "chain", "verify", "--url", server.url, "--keys", keys)
    assert sound.returncode == 0, describe(sound)


def test_receipt_inclusion_online_and_bundles_offline(
    server: Server, home: Path, tmp_path: Path
) -> None:
    market = make_market(server.url)
    keyring = tmp_path / "keys.json"
    assert cli(home, "keys", "pin", "--url", server.url, "--keyring", keyring).returncode == 0
    by_id = ("--url", server.url, "--api-key", market.client_key, "--keyring", keyring)

    online = cli(home, "receipts", "verify", market.receipt_id, *by_id)
    assert online.returncode == 0, describe(online)
    assert "proof checked" in online.stdout and "in block " in online.stdout

    response = httpx.get(
        f"{server.url}/v1/receipts/{market.receipt_id}/bundle",
        headers={"X-Api-Key": market.client_key},
        timeout=5,
    )
    bundle = expect(response)
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_bytes(response.content)
    offline = cli(home, "receipts", "verify", bundle_file, "--keyring", keyring)
    assert offline.returncode == 0, describe(offline)
    assert "offline bundle" in offline.stdout and "proof checked" in offline.stdout

    # A receipt file: offline unless --url is given.
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(bundle["receipt"]))
    plain = cli(home, "receipts", "verify", receipt_file, "--keyring", keyring)
    assert plain.returncode == 0 and "in block" not in plain.stdout, describe(plain)
    with_url = cli(
        home, "receipts", "verify", receipt_file, "--keyring", keyring, "--url", server.url
    )
    assert with_url.returncode == 0 and "proof checked" in with_url.stdout, describe(with_url)

    def tampered(change: Any) -> subprocess.CompletedProcess[str]:
        copy = json.loads(json.dumps(bundle))
        change(copy)
        path = tmp_path / "tampered.json"
        path.write_text(json.dumps(copy))
        return cli(home, "receipts", "verify", path, "--keyring", keyring)

    def other_leaf(copy: dict[str, Any]) -> None:
        copy["proof"]["leaf_index"] = (copy["proof"]["leaf_index"] + 1) % copy["proof"]["tree_size"]

    def other_anchor(copy: dict[str, Any]) -> None:
        copy["transaction"]["ref"] = "ab" * 32

    def header(copy: dict[str, Any]) -> None:
        copy["block"]["header"]["timestamp"] += 1

    def no_anchor(copy: dict[str, Any]) -> None:
        del copy["transaction"]

    for change, code in (
        (other_leaf, "bad_proof"),
        (other_anchor, "bad_transaction_id"),
        (header, "bad_signature"),
        (no_anchor, "malformed_bundle"),
    ):
        result = tampered(change)
        assert result.returncode == 1, describe(result)
        assert result.stderr.startswith(f"invalid: {code}: "), describe(result)
