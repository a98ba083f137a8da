"""Real ``aitbc`` processes: ``serve`` over real HTTP, ``db upgrade`` and ``demo``.

Each test starts the command as a subprocess with its own data directory and a free
port, and always stops it (SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

import asyncio
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve
from tests.e2e.processes import stop_process as stop
from tests.e2e.processes import wait_healthy as wait_until_healthy

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-admin-key"
MODEL = "smollm2-135m"
START_TIMEOUT_SECONDS = 15.0


@dataclass
class Server:
    """A running ``aitbc serve`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Server]:
    port = free_port()
    data_dir = tmp_path / "data"
    log_path = tmp_path / "serve.log"
    process = spawn_serve(port, data_dir, log_path, tmp_path, **env)
    server = Server(process=process, base_url=f"http://127.0.0.1:{port}", log_path=log_path)
    return process, server


def wait_healthy(server: Server) -> None:
    wait_until_healthy(server.process, server.base_url, server.log, START_TIMEOUT_SECONDS)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Server]:
    """``aitbc serve`` with a known admin key, a 1 s lease and a 0.2 s sweeper."""
    process, server = start_serve(
        tmp_path,
        AITBC_ADMIN_KEY=ADMIN_KEY,
        AITBC_SWEEP_INTERVAL_SECONDS="0.2",
        AITBC_LEASE_SECONDS="1",
    )
    try:
        wait_healthy(server)
        yield server
    finally:
        stop(process)


async def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text}"
    )
    return response.json()


async def test_lapsed_lease_goes_to_another_miner(serve: Server) -> None:
    async with httpx.AsyncClient(base_url=serve.base_url, timeout=10) as http:
        health = await expect(await http.get("/health"), 200)
        assert health["database"] == "ok"

        client_creds = await expect(
            await http.post("/v1/clients/register", json={"name": "e2e"}), 201
        )
        client = {"X-Api-Key": client_creds["api_key"]}
        miners: dict[str, dict[str, str]] = {}
        for miner_id in ("miner-a", "miner-b"):
            creds = await expect(
                await http.post(
                    "/v1/miners/register",
                    json={"miner_id": miner_id, "capabilities": [MODEL], "price": 0.02},
                ),
                201,
            )
            assert creds["miner_id"] == miner_id
            miners[miner_id] = {"X-Api-Key": creds["api_key"]}
        miner_a, miner_b = miners["miner-a"], miners["miner-b"]

        # Miner A long-polls; the job submitted meanwhile is handed to it.
        poll = asyncio.create_task(
            http.get(
                "/v1/jobs/available", params={"miner_id": "miner-a", "wait": 5}, headers=miner_a
            )
        )
        await asyncio.sleep(0.3)
        assert not poll.done(), "the long poll answered before any job existed"
        job = await expect(
            await http.post(
                "/v1/jobs",
                headers=client,
                json={
                    "prompt": "Name three uses of a GPU.",
                    "model": MODEL,
                    "params": {"max_tokens": 16},
                },
            ),
            201,
        )
        job_id = job["job_id"]
        assert job["status"] == "pending"
        assert job["estimated_cost"] is not None  # two eligible miners are online

        started = time.monotonic()
        offered = await expect(await asyncio.wait_for(poll, 10), 200)
        assert offered is not None and offered["job_id"] == job_id
        assert time.monotonic() - started < 2, "the long poll was not woken by the submission"

        claimed = await expect(
            await http.post(
                f"/v1/jobs/{job_id}/claim", json={"miner_id": "miner-a"}, headers=miner_a
            ),
            200,
        )
        assert claimed["status"] == "running"
        assert claimed["miner_id"] == "miner-a"
        assert claimed["attempts"] == 1

        # A second claim loses.
        lost = await http.post(
            f"/v1/jobs/{job_id}/claim", json={"miner_id": "miner-b"}, headers=miner_b
        )
        assert lost.status_code == 409, lost.text

        # Miner A goes silent: no heartbeat, no progress. The sweeper requeues the job.
        deadline = time.monotonic() + 5
        current = claimed
        while time.monotonic() < deadline:
            current = await expect(await http.get(f"/v1/jobs/{job_id}", headers=client), 200)
            if current["status"] != "running":
                break
            await asyncio.sleep(0.25)
        assert current["status"] == "pending", current
        assert current["miner_id"] is None
        assert current["attempts"] == 1
        assert current["error_code"] == "lease_expired"

        # Miner B takes it from the queue.
        available = await expect(
            await http.get(
                "/v1/jobs/available", params={"miner_id": "miner-b", "wait": 1}, headers=miner_b
            ),
            200,
        )
        assert available is not None and available["job_id"] == job_id
        claimed_b = await expect(
            await http.post(
                f"/v1/jobs/{job_id}/claim", json={"miner_id": "miner-b"}, headers=miner_b
            ),
            200,
        )
        assert claimed_b["miner_id"] == "miner-b"
        assert claimed_b["attempts"] == 2

        # Miner A wakes up: it no longer holds the job and is told to stop it.
        ack = await expect(
            await http.post(
                "/v1/miners/miner-a/heartbeat", json={"running_jobs": [job_id]}, headers=miner_a
            ),
            200,
        )
        assert ack["cancelled_jobs"] == [job_id]
        late = await http.post(
            f"/v1/jobs/{job_id}/complete",
            json={"miner_id": "miner-a", "result": "stale"},
            headers=miner_a,
        )
        assert late.status_code == 409, late.text

        answer = "1. Training 2. Inference 3. Rendering"
        done = await expect(
            await http.post(
                f"/v1/jobs/{job_id}/complete",
                json={
                    "miner_id": "miner-b",
                    "result": answer,
                    "usage": {"prompt_tokens": 9, "completion_tokens": 8},
                },
                headers=miner_b,
            ),
            200,
        )
        assert done["job_id"] == job_id and done["units"] == 17

        final = await expect(await http.get(f"/v1/jobs/{job_id}", headers=client), 200)
        assert final["status"] == "completed"
        assert final["result"] == answer
        assert final["miner_id"] == "miner-b"
        assert final["attempts"] == 2
        assert final["progress"] == 100
        assert final["usage"] == {"prompt_tokens": 9, "completion_tokens": 8}

        download = await http.get(f"/v1/jobs/{job_id}/download", headers=client)
        assert download.status_code == 200, download.text
        assert f'filename="{job_id}.json"' in download.headers["content-disposition"]
        body = download.json()
        assert body["job_id"] == job_id
        assert body["result"] == answer
        assert body["model"] == MODEL
        assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 8}

        # The admin key from the environment works over real HTTP.
        stats = await expect(
            await http.get("/v1/admin/stats", headers={"X-Api-Key": ADMIN_KEY}), 200
        )
        assert stats["jobs_by_status"].get("completed") == 1

    assert serve.process.poll() is None, serve.log()


def test_generated_admin_key_file_is_private(tmp_path: Path) -> None:
    process, server = start_serve(tmp_path)  # no AITBC_ADMIN_KEY
    try:
        wait_healthy(server)
        match = re.search(r"admin API key written to (\S+)", server.log())
        assert match, server.log()
        key_path = Path(match.group(1))
        assert key_path == tmp_path / "data" / "admin.key"
        mode = stat.S_IMODE(key_path.stat().st_mode)
        assert mode == 0o600, oct(mode)
        secret = key_path.read_text().strip()
        assert secret
        assert secret not in server.log()  # the key itself is never printed
        response = httpx.get(
            server.base_url + "/v1/admin/stats", headers={"X-Api-Key": secret}, timeout=5
        )
        assert response.status_code == 200, response.text
        refused = httpx.get(
            server.base_url + "/v1/admin/stats", headers={"X-Api-Key": "wrong"}, timeout=5
        )
        assert refused.status_code == 401, refused.text
    finally:
        stop(process)
    assert process.returncode is not None


def _db_upgrade(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AITBC, "db", "upgrade", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_db_upgrade(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    result = _db_upgrade(tmp_path, data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"is at revision (\S+)", result.stdout)
    assert match, result.stdout
    assert match.group(1) != "None"
    assert (data_dir / "aitbc.db").is_file()
    # Running it again is a no-op at the same revision.
    again = _db_upgrade(tmp_path, data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"is at revision {match.group(1)}" in again.stdout


def test_demo(tmp_path: Path) -> None:
    result = subprocess.run(
        [*AITBC, "demo"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A real model answered and the receipt checked out against the pinned key.
    assert "answer:" in result.stdout, result.stdout
    assert "completion tokens" in result.stdout, result.stdout
    assert "receipt verified offline" in result.stdout, result.stdout
