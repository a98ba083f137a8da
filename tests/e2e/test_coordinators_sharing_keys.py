"""Two real ``aitbc serve`` processes on one PostgreSQL database: an API key revoked
through one is refused by the other within 5 s (``aitbc auth keys`` and ``aitbc admin
api-keys`` do the revoking), a restart with a new ``AITBC_ADMIN_KEY`` refuses the old
one everywhere, and a signing-key rotation on one (``aitbc keys rotate``) reaches the
other, whose receipts then verify against the new key.

Needs ``AITBC_TEST_DATABASE_URL``; the database's public schema is emptied first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc.domain.signing import KeyRing, SigningKey
from aitbc.sdk import verify_receipt
from aitbc.services.keys import ROTATION_OVERLAP_SECONDS
from aitbc.settings import to_async_url
from tests.conftest import PG_URL, reset_postgres
from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, stop_process, wait_healthy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (AITBC_TEST_DATABASE_URL)"),
]

ADMIN_KEY = "e2e-shared-admin-key"
NEW_ADMIN_KEY = "e2e-shared-admin-key-2"
MODEL = "smollm2-135m"
REVOCATION_DEADLINE_SECONDS = 5.0
# Coordinators check for a rotation every couple of seconds: this leaves room for a
# slow machine and is still far inside the retired key's 60 s overlap.
SWITCH_DEADLINE_SECONDS = 10.0
CLI_TIMEOUT_SECONDS = 60
UNREACHABLE_URL = "http://127.0.0.1:9"


@dataclass
class Server:
    """One ``aitbc serve`` process on the shared database."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    """Coordinators started by a test on one database; all stopped at the end."""

    workdir: Path
    database_url: str
    servers: list[Server] = field(default_factory=list)

    def spawn(self, name: str, admin_key: str = ADMIN_KEY, **env: str) -> Server:
        port = free_port()
        log_path = self.workdir / f"{name}-{port}.log"
        process = spawn_serve(
            port,
            self.workdir / name,
            log_path,
            self.workdir,
            AITBC_DATABASE_URL=self.database_url,
            AITBC_ADMIN_KEY=admin_key,
            **env,
        )
        server = Server(process, f"http://127.0.0.1:{port}", log_path)
        self.servers.append(server)
        return server

    def start(self, name: str, admin_key: str = ADMIN_KEY, **env: str) -> Server:
        server = self.spawn(name, admin_key, **env)
        wait_healthy(server.process, server.url, server.log)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            stop_process(server.process)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    assert PG_URL is not None
    asyncio.run(reset_postgres(to_async_url(PG_URL)))
    started = Cluster(tmp_path, PG_URL)
    try:
        yield started
    finally:
        started.stop_all()


def aitbc(home: Path, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``aitbc`` command with a private HOME and no AITBC_* of the caller."""
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [*AITBC, *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), **env),
        cwd=home,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def key_id_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def expect(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text}"
    )
    return response.json()


def seconds_until_refused(url: str, key: str, path: str = "/v1/jobs") -> float:
    """Poll ``path`` with ``key`` until it answers 401; fail after 5 s."""
    started = time.monotonic()
    while True:
        response = httpx.get(url + path, headers={"X-Api-Key": key}, timeout=5)
        elapsed = time.monotonic() - started
        if response.status_code == 401:
            assert response.json()["error_code"] == "invalid_api_key", response.text
            return elapsed
        assert response.status_code == 200, response.text
        assert elapsed < REVOCATION_DEADLINE_SECONDS, (
            f"still accepted {elapsed:.1f} s after it was revoked"
        )
        time.sleep(0.1)


# --- API keys -------------------------------------------------------------------------


def test_a_key_revoked_through_one_coordinator_is_refused_by_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    a = cluster.start("a")
    b = cluster.start("b")
    home = tmp_path / "home"
    creds = expect(httpx.post(a.url + "/v1/clients/register", json={}, timeout=10), 201)
    client_id, first = creds["client_id"], creds["api_key"]

    made = json.loads(
        succeeded(
            aitbc(home, "auth", "keys", "create", "--url", a.url, "--json", AITBC_API_KEY=first)
        )
    )
    second = made["api_key"]
    assert made["key_id"] == key_id_of(second) and made["owner"] == client_id
    listing = succeeded(aitbc(home, "auth", "keys", "list", "--url", b.url, "--api-key", second))
    assert f"{key_id_of(second)}" in listing and f"{key_id_of(first)}" in listing
    [this_key] = [line for line in listing.splitlines() if "(this key)" in line]
    assert this_key.startswith(key_id_of(second))

    # B has the first key in its cache; A revokes it.
    expect(httpx.get(b.url + "/v1/jobs", headers={"X-Api-Key": first}, timeout=5))
    revoked = aitbc(
        home, "auth", "keys", "revoke", key_id_of(first), "--url", a.url, "--api-key", second
    )
    assert key_id_of(first) in succeeded(revoked)
    elapsed = seconds_until_refused(b.url, first)
    print(f"first key refused by B {elapsed:.2f} s after A revoked it")
    expect(httpx.get(b.url + "/v1/jobs", headers={"X-Api-Key": second}, timeout=5))

    # The last key is kept: one line on stderr, exit 1.
    last = aitbc(
        home, "auth", "keys", "revoke", key_id_of(second), "--url", b.url, "--api-key", second
    )
    assert last.returncode == 1, (last.stdout, last.stderr)
    assert last.stderr.startswith("error: 409 last_api_key: ") and last.stderr.count("\n") == 1
    # Another client's key is not found.
    other = expect(httpx.post(a.url + "/v1/clients/register", json={}, timeout=10), 201)
    foreign = aitbc(
        home,
        "auth",
        "keys",
        "revoke",
        key_id_of(other["api_key"]),
        "--url",
        a.url,
        "--api-key",
        second,
    )
    assert foreign.returncode == 1 and "404 api_key_not_found" in foreign.stderr

    # An admin revokes the second key through B; A (which has it cached) refuses it.
    expect(httpx.get(a.url + "/v1/jobs", headers={"X-Api-Key": second}, timeout=5))
    listed = json.loads(
        succeeded(
            aitbc(
                home,
                "admin",
                "api-keys",
                "list",
                "--owner",
                client_id,
                "--url",
                b.url,
                "--json",
                AITBC_ADMIN_KEY=ADMIN_KEY,
            )
        )
    )
    assert [(key["key_id"], key["revoked_at"] is None) for key in listed["keys"]] == [
        (key_id_of(first), False),
        (key_id_of(second), True),
    ]
    succeeded(
        aitbc(
            home,
            "admin",
            "api-keys",
            "revoke",
            key_id_of(second),
            "--url",
            b.url,
            AITBC_ADMIN_KEY=ADMIN_KEY,
        )
    )
    seconds_until_refused(a.url, second)
    unreachable = aitbc(home, "auth", "keys", "list", "--url", UNREACHABLE_URL, "--api-key", second)
    assert unreachable.returncode == 2 and unreachable.stderr.startswith("error: cannot reach")


def test_a_restart_with_a_new_admin_key_refuses_the_old_one(cluster: Cluster) -> None:
    a = cluster.start("a")
    b = cluster.start("b")
    for server in (a, b):  # both have the old key in their caches
        expect(httpx.get(server.url + "/v1/admin/stats", headers={"X-Api-Key": ADMIN_KEY}))

    stop_process(a.process)
    a = cluster.start("a", admin_key=NEW_ADMIN_KEY)
    refused = httpx.get(a.url + "/v1/admin/stats", headers={"X-Api-Key": ADMIN_KEY}, timeout=5)
    assert refused.status_code == 401, refused.text
    # B, still running with the old key configured, refuses it too.
    seconds_until_refused(b.url, ADMIN_KEY, "/v1/admin/stats")
    for server in (a, b):
        expect(httpx.get(server.url + "/v1/admin/stats", headers={"X-Api-Key": NEW_ADMIN_KEY}))

    # Restarting B with the revoked key fails with one clear reason, not a revival.
    stop_process(b.process)
    stale = cluster.spawn("b", admin_key=ADMIN_KEY)
    assert stale.process.wait(timeout=30) != 0
    assert "admin_key_revoked" in stale.log() or "was revoked" in stale.log(), stale.log()
    expect(httpx.get(a.url + "/v1/admin/stats", headers={"X-Api-Key": NEW_ADMIN_KEY}))
    assert httpx.get(a.url + "/v1/admin/stats", headers={"X-Api-Key": ADMIN_KEY}).status_code == 401


# --- signing keys ---------------------------------------------------------------------


def run_job(url: str, client: str, miner_id: str, miner: str) -> bytes:
    """Submit, claim and complete one job through ``url``; the receipt as answered."""
    with httpx.Client(base_url=url, timeout=10) as http:
        job = expect(
            http.post(
                "/v1/jobs",
                headers={"X-Api-Key": client},
                json={"prompt": "Name a GPU.", "model": MODEL},
            ),
            201,
        )
        headers = {"X-Api-Key": miner}
        expect(
            http.post(
                f"/v1/jobs/{job['job_id']}/claim", headers=headers, json={"miner_id": miner_id}
            )
        )
        body = {
            "miner_id": miner_id,
            "result": "An H100.",
            "usage": {"prompt_tokens": 5, "completion_tokens": 4},
        }
        response = http.post(f"/v1/jobs/{job['job_id']}/complete", headers=headers, json=body)
        expect(response)
        return response.content


def signed_by(receipt: bytes) -> str:
    key_id: str = json.loads(receipt)["signature"]["key_id"]
    return key_id


def test_a_signing_key_rotation_on_one_coordinator_reaches_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    key_file = tmp_path / "secrets" / "coordinator.pem"
    key_file.parent.mkdir(mode=0o700)
    original = SigningKey.from_seed(os.urandom(32))
    key_file.write_bytes(original.to_pem())
    key_file.chmod(0o600)
    shared = {"AITBC_SIGNING_KEY_FILE": str(key_file)}
    a = cluster.start("a", **shared)
    b = cluster.start("b", **shared)
    home = tmp_path / "home"

    client = expect(httpx.post(a.url + "/v1/clients/register", json={}, timeout=10), 201)
    miner = expect(
        httpx.post(
            a.url + "/v1/miners/register",
            timeout=10,
            json={"miner_id": "gpu-1", "capabilities": [MODEL]},
        ),
        201,
    )
    credentials = (client["api_key"], "gpu-1", miner["api_key"])
    before = run_job(b.url, *credentials)
    assert signed_by(before) == original.key_id

    rotated = aitbc(home, "keys", "rotate", "--url", a.url, "--api-key", ADMIN_KEY)
    assert "is current" in succeeded(rotated)
    new_key = SigningKey.from_pem(key_file.read_bytes())
    assert new_key.key_id != original.key_id
    rotated_at = time.monotonic()
    assert signed_by(run_job(a.url, *credentials)) == new_key.key_id

    # B switches within its check period, long before the old key's overlap ends.
    while True:
        receipt = run_job(b.url, *credentials)
        elapsed = time.monotonic() - rotated_at
        if signed_by(receipt) == new_key.key_id:
            break
        assert signed_by(receipt) == original.key_id
        assert elapsed < SWITCH_DEADLINE_SECONDS, (
            f"B still signs with the retired key after {elapsed:.1f} s"
        )
        time.sleep(0.2)
    print(f"B signs with the new key {elapsed:.2f} s after the rotation on A")
    assert elapsed < ROTATION_OVERLAP_SECONDS
    after = run_job(b.url, *credentials)
    assert signed_by(after) == new_key.key_id
    assert "rotated by another coordinator" in b.log()

    # Verified against keys pinned from the coordinator that did not rotate.
    keyring = tmp_path / "keys.json"
    succeeded(aitbc(home, "keys", "pin", "--url", b.url, "--keyring", keyring))
    receipt_file = tmp_path / "receipt.json"
    for receipt, key_id in ((after, new_key.key_id), (before, original.key_id)):
        receipt_file.write_bytes(receipt)
        line = succeeded(
            aitbc(
                home,
                "receipts",
                "verify",
                receipt_file,
                "--keyring",
                keyring,
                AITBC_URL=UNREACHABLE_URL,
            )
        )
        assert f"signed by coordinator key {key_id}" in line
    pinned = KeyRing.from_document(json.loads(keyring.read_text()))
    assert verify_receipt(after, pinned).key.key_id == new_key.key_id
