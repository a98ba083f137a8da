"""The real miner daemon (``aitbc miner``) against a real coordinator (``aitbc serve``).

Every test starts its own coordinator (free port, temp data dir, a known admin key,
no rate limits) and one or more miner processes serving the bundled SmolLM2 model
through llama-cpp-python. Nothing is faked: generations are real, so they are kept
short, and the timing checks leave room for a busy machine.

Covered: real chat and completion generations (usage, determinism with a seed,
receipts verified with the coordinator's and the miner's keys and the result), the
private data dir, identity kept across a restart, cancellation mid-generation,
SIGTERM mid-job (the job goes back to the queue and a restart completes it), a
coordinator killed mid-job (the result waits in the outbox and is delivered once it
is back, also by the miner's next start), a prompt too long for the model's context,
SIGTERM while the coordinator cannot be reached (while registering or mid-job),
repeated SIGINT mid-job (the job is handed back without using up its attempts), and
a key the coordinator refuses (the daemon stops in order and exits 1; against the
real coordinator, and against a tiny server that also records what the daemon sends).

Each process writes its output to a log file under the test's tmp dir; a failing
wait prints the tails of those logs, and so does every test's teardown (pytest
shows it only for failing tests).

The timing checks assume the CPU is not shared with another llama.cpp process: two
of them on the same cores slow each other down by one to two orders of magnitude.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from aitbc.domain.signing import SigningKey
from aitbc.sdk import KeyRing, VerificationFailed, VerifiedReceipt, verify_receipt
from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, wait_healthy
from tests.e2e.processes import stop_process as _stop_process
from tests.served import served

pytestmark = pytest.mark.e2e

T = TypeVar("T")

ADMIN_KEY = "e2e-miner-admin-key"
MODEL = "smollm2-135m"
PRICE = "0.02"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 40

# The bundled model rambles on at length for this one: it runs until max_tokens.
LONG_PROMPT = (
    "Write a very long and detailed story about a dragon who learns to sail across the "
    "seven seas. Describe every island, every storm and every friend the dragon meets."
)
LONG_PARAMS: dict[str, Any] = {"max_tokens": 2000, "temperature": 0.8, "seed": 1234}


# --- processes ------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    _stop_process(process, timeout)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"({path.name}: no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines) ---\n" + "\n".join(text)


class Coordinator:
    """``aitbc serve`` on a fixed port and data dir, so it can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "coordinator"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    def start(self) -> None:
        self.starts += 1
        log_path = self.workdir / f"serve-{self.starts}.log"
        self.log_paths.append(log_path)
        self.process = spawn_serve(
            self.port,
            self.data_dir,
            log_path,
            self.workdir,
            AITBC_ADMIN_KEY=ADMIN_KEY,
            # Tests poll job status often: no per-key request budget.
            AITBC_RATE_LIMIT="",
            AITBC_MINER_RATE_LIMIT="",
        )
        wait_healthy(self.process, self.base_url, self.logs, START_TIMEOUT_SECONDS)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def logs(self) -> str:
        return "\n".join(tail(path) for path in self.log_paths)


class MinerProcess:
    """One ``aitbc miner`` process on a data dir that outlives it."""

    def __init__(
        self,
        workdir: Path,
        coordinator_url: str,
        *,
        name: str = "miner",
        miner_id: str = "e2e-miner",
        grace_seconds: float = 2.0,
        concurrency: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.coordinator_url = coordinator_url
        self.name = name
        self.miner_id = miner_id
        self.data_dir = workdir / name
        self.grace_seconds = grace_seconds
        self.concurrency = concurrency
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    @property
    def log_path(self) -> Path:
        return self.log_paths[-1]

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox"

    def start(self, *, wait: bool = True) -> None:
        """Start it and return once it has registered (or re-registered)."""
        self.starts += 1
        log_path = self.workdir / f"{self.name}-{self.starts}.log"
        self.log_paths.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *AITBC,
                    "miner",
                    "--coordinator-url",
                    self.coordinator_url,
                    "--data-dir",
                    str(self.data_dir),
                    "--miner-id",
                    self.miner_id,
                    "--price",
                    PRICE,
                    "--heartbeat-seconds",
                    "1",
                    "--grace-seconds",
                    str(self.grace_seconds),
                    "--concurrency",
                    str(self.concurrency),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=self.workdir,
            )
        if not wait:
            return
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"aitbc miner exited with {self.process.returncode}:\n{self.logs()}")
            if "registered at" in log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        pytest.fail(f"aitbc miner did not register in time:\n{self.logs()}")

    def terminate(
        self, timeout: float, signum: signal.Signals = signal.SIGTERM
    ) -> tuple[int | None, float]:
        """SIGTERM (or ``signum``); its exit code (None if still running after
        ``timeout``) and how long it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            code: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=5)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return "\n".join(tail(path) for path in self.log_paths)

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.log_paths)


# --- the market -----------------------------------------------------------------------


@dataclass
class Market:
    """A coordinator, a client account on it, and the miners started in a test."""

    workdir: Path
    coordinator: Coordinator
    client_headers: dict[str, str] = field(default_factory=dict)
    miners: list[MinerProcess] = field(default_factory=list)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"X-Api-Key": ADMIN_KEY}

    def diagnostics(self) -> str:
        return "\n".join([*(m.logs() for m in self.miners), self.coordinator.logs()])

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.diagnostics()}")

    def request(self, method: str, path: str, *, status: int = 200, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.client_headers)
        response = httpx.request(method, self.coordinator.base_url + path, timeout=10, **kwargs)
        if response.status_code != status:
            self.fail(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def register_client(self) -> None:
        credentials = self.request(
            "POST", "/v1/clients/register", json={"name": "e2e-miner"}, status=201, headers={}
        ).json()
        self.client_headers = {"X-Api-Key": credentials["api_key"]}

    def start_miner(
        self, *, coordinator_url: str | None = None, wait: bool = True, **options: Any
    ) -> MinerProcess:
        miner = MinerProcess(self.workdir, coordinator_url or self.coordinator.base_url, **options)
        self.miners.append(miner)
        miner.start(wait=wait)
        return miner

    def submit(self, prompt: str, **params: Any) -> str:
        job = self.request(
            "POST",
            "/v1/jobs",
            json={"prompt": prompt, "model": MODEL, "params": params},
            status=201,
        ).json()
        assert job["status"] == "pending", job
        job_id: str = job["job_id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        document: dict[str, Any] = self.get(f"/v1/jobs/{job_id}")
        return document

    def wait_until(
        self, check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
    ) -> T:
        """Call ``check`` until it returns something other than None."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = check()
            except httpx.TransportError as exc:  # e.g. the coordinator is restarting
                value, last_error = None, exc
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        self.fail(f"timed out after {timeout} s waiting for {what} (last error: {last_error!r})")
        raise AssertionError  # unreachable: pytest.fail raises

    def wait_job(
        self,
        job_id: str,
        statuses: set[str],
        timeout: float,
        *,
        condition: Callable[[dict[str, Any]], bool] = lambda job: True,
    ) -> dict[str, Any]:
        """The job once its status is one of ``statuses`` and ``condition`` holds."""
        seen: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            seen[:] = [job]
            return job if job["status"] in statuses and condition(job) else None

        try:
            return self.wait_until(check, timeout, f"job {job_id} to be {sorted(statuses)}")
        except pytest.fail.Exception as exc:
            last = {k: v for k, v in seen[0].items() if k != "prompt"} if seen else None
            raise pytest.fail.Exception(f"{exc}\nlast seen: {last}") from None

    def wait_running(self, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The job once a miner runs it and has reported some progress."""
        return self.wait_job(
            job_id, {"running"}, timeout, condition=lambda job: job["progress"] > 0
        )

    def run(self, prompt: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Submit a job and return it completed."""
        job_id = self.submit(prompt, **params)
        job = self.wait_job(job_id, {"completed", "failed", "cancelled"}, timeout)
        if job["status"] != "completed":
            self.fail(f"job {job_id} ended {job['status']}: {job['error']}")
        return job

    def admin_miners(self) -> list[dict[str, Any]]:
        miners: list[dict[str, Any]] = self.get("/v1/admin/miners", headers=self.admin_headers)
        return miners

    def verify(self, job: dict[str, Any]) -> VerifiedReceipt:
        """The job's receipt checked against the published coordinator keys, the
        miner's key (its signature) and the job's result and prompt."""
        receipt = self.request("GET", f"/v1/jobs/{job['job_id']}/receipt").content
        keys = KeyRing.from_document(self.get("/v1/keys", headers={}))
        miner_keys = KeyRing.from_document(
            self.get("/v1/keys", params={"owner": job["miner_id"]}, headers={})
        )
        verified = verify_receipt(
            receipt, keys, miner_keys=miner_keys, result=job["result"], prompt=job["prompt"]
        )
        assert verified.miner_key is not None
        assert verified.miner_key.owner == job["miner_id"]
        assert verified.result_checked
        body = verified.receipt
        assert body["job_id"] == job["job_id"]
        assert body["provider"] == job["miner_id"]
        assert body["usage"] == job["usage"]
        assert body["units"] == job["usage"]["prompt_tokens"] + job["usage"]["completion_tokens"]
        assert body["model"] == MODEL
        return verified


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    coordinator = Coordinator(tmp_path)
    market = Market(tmp_path, coordinator)
    try:
        coordinator.start()
        market.register_client()
        yield market
    finally:
        for miner in market.miners:
            miner.stop()
        coordinator.stop()
        # Shown by pytest only when the test failed.
        print(market.diagnostics())


def assert_generation(job: dict[str, Any], max_tokens: int) -> None:
    assert job["status"] == "completed", job
    assert isinstance(job["result"], str) and job["result"].strip(), job
    usage = job["usage"]
    assert usage["prompt_tokens"] > 0, job
    assert 0 < usage["completion_tokens"] <= max_tokens, job
    assert job["progress"] == 100, job
    assert job["attempts"] == 1, job


def log_time(line: str) -> float:
    """The wall-clock time of a miner log line ("2026-02-13T10:00:00.123Z INFO ...")."""
    stamp, millis = line[:23].split(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def private(path: Path) -> bool:
    return path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600


# --- tests ----------------------------------------------------------------------------


def test_real_generations_are_deterministic_and_receipts_verify(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-gen")

    # The miner's state is private.
    identity_file = miner.data_dir / "miner.json"
    key_file = miner.data_dir / "miner_ed25519.pem"
    assert private(identity_file), oct(identity_file.stat().st_mode)
    assert private(key_file), oct(key_file.stat().st_mode)
    identity = json.loads(identity_file.read_text())
    assert identity["miner_id"] == "e2e-gen"
    assert identity["api_key"]
    assert identity["coordinator_url"] == market.coordinator.base_url

    # Registered with its model and its public key.
    (registered,) = market.admin_miners()
    assert registered["miner_id"] == "e2e-gen"
    assert registered["capabilities"] == [MODEL]
    # The machine it runs on: no GPU here, so its CPU and memory.
    assert registered["gpu_info"]["count"] == 0
    assert registered["cpu_info"]["cores"] >= 1 and registered["cpu_info"]["memory_gb"] > 0
    assert registered["price"] == pytest.approx(0.02)
    published = market.get("/v1/keys", params={"owner": "e2e-gen"}, headers={})["keys"]
    signing_key = SigningKey.from_pem(key_file.read_bytes())
    assert [(k["key_id"], k["owner"]) for k in published] == [(signing_key.key_id, "e2e-gen")]

    sampled = {"max_tokens": 24, "temperature": 0.7, "seed": 42}
    first = market.run("Write a haiku about the sea.", **sampled)
    completion = market.run(
        "The three primary colours are", max_tokens=16, mode="completion", seed=3
    )
    chat = market.run("Name two planets.", max_tokens=12, temperature=0.0)
    again = market.run("Write a haiku about the sea.", **sampled)

    assert_generation(first, 24)
    assert_generation(completion, 16)
    assert_generation(chat, 12)
    assert_generation(again, 24)
    for job in (first, completion, chat, again):
        assert job["miner_id"] == "e2e-gen"
        market.verify(job)
    # Chat mode wraps the prompt in the chat template; completion mode does not.
    assert first["usage"]["prompt_tokens"] > 20
    assert completion["usage"]["prompt_tokens"] < 12
    # The same prompt, seed and temperature give the same text (and the same usage).
    assert again["result"] == first["result"]
    assert again["usage"] == first["usage"]

    # A receipt does not verify against another result.
    with pytest.raises(VerificationFailed) as refused:
        verify_receipt(
            market.request("GET", f"/v1/jobs/{first['job_id']}/receipt").content,
            KeyRing.from_document(market.get("/v1/keys", headers={})),
            result=first["result"] + "!",
        )
    assert refused.value.error_code == "result_hash_mismatch"
    assert miner.alive()
    assert miner.log_text().count("completed: receipt") == 4


def test_restart_keeps_identity(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-restart")
    identity_file = miner.data_dir / "miner.json"
    key_file = miner.data_dir / "miner_ed25519.pem"
    identity_before = identity_file.read_bytes()
    key_before = key_file.read_bytes()
    (registered_before,) = market.admin_miners()
    market.run("Say hello.", max_tokens=8)

    code, seconds = miner.terminate(timeout=STOP_TIMEOUT_SECONDS)
    if code != 0:
        market.fail(f"miner exited with {code} after SIGTERM ({seconds:.1f} s)")

    miner.start()
    assert "re-registered" in miner.log_path.read_text()
    assert identity_file.read_bytes() == identity_before
    assert key_file.read_bytes() == key_before
    assert private(identity_file) and private(key_file)
    miners = market.admin_miners()
    assert [m["miner_id"] for m in miners] == ["e2e-restart"], miners
    assert miners[0]["registered_at"] == registered_before["registered_at"]
    assert miners[0]["capabilities"] == [MODEL]
    published = market.get("/v1/keys", params={"owner": "e2e-restart"}, headers={})["keys"]
    assert len(published) == 1 and published[0]["status"] == "current", published

    job = market.run("Name a colour.", max_tokens=8)
    assert_generation(job, 8)
    assert job["miner_id"] == "e2e-restart"
    market.verify(job)
    assert [m["jobs_completed"] for m in market.admin_miners()] == [2]


def test_cancel_stops_the_generation(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-cancel", concurrency=1)
    long_id = market.submit(LONG_PROMPT, **LONG_PARAMS)
    market.wait_running(long_id)

    cancelled_at, cancelled_at_wall = time.monotonic(), time.time()
    cancelled = market.request("POST", f"/v1/jobs/{long_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    # With one slot, the miner can take this only once the cancelled generation stopped.
    short_id = market.submit("Say hello.", max_tokens=8)
    short = market.wait_job(short_id, {"completed", "failed"}, timeout=10)
    took = time.monotonic() - cancelled_at
    assert_generation(short, 8)

    # The engine returned (the daemon logs this once generate() is back) within about
    # a second: progress is reported every 0.5 s and its answer says should_stop,
    # then the engine stops at the next token.
    stopped_line = next(
        (
            line
            for line in miner.log_text().splitlines()
            if f"job {long_id} stopped: cancelled or no longer ours" in line
        ),
        None,
    )
    if stopped_line is None:
        market.fail(f"the miner did not log that it stopped {long_id}")
    stopped_after = log_time(stopped_line) - cancelled_at_wall
    print(
        f"generation stopped {stopped_after:.2f} s after the cancel; "
        f"the next job completed {took:.2f} s after it"
    )
    assert stopped_after < 1.5, f"the generation stopped {stopped_after:.2f} s after the cancel"
    assert took < 4.0, f"the next job completed {took:.2f} s after the cancel"

    final = market.job(long_id)
    assert final["status"] == "cancelled", final
    assert final["result"] is None and final["usage"] is None, final
    assert final["error_code"] == "cancelled", final
    assert f"{long_id} failed" not in miner.log_text()
    # Nothing was kept for delivery and nothing more happens to the cancelled job.
    assert list(miner.outbox.iterdir()) == []
    time.sleep(1.5)
    assert market.job(long_id)["status"] == "cancelled"
    assert miner.alive()


def test_sigterm_gives_the_job_back_and_a_restart_completes_it(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-sigterm", grace_seconds=1)
    # Long enough (~4 s here) to outlast the 1 s grace, short enough to re-run: a
    # 2,000-token generation takes 50-90 s on 2 cores as decoding slows when the
    # context fills, too long to run to the end in this file.
    max_tokens = 400
    job_id = market.submit(LONG_PROMPT, **{**LONG_PARAMS, "max_tokens": max_tokens})
    market.wait_running(job_id)

    code, seconds = miner.terminate(timeout=15)
    if code is None:
        market.fail(f"miner still running {seconds:.1f} s after SIGTERM")
    assert code == 0, f"exit code {code}\n{market.diagnostics()}"
    assert seconds < 5.0, f"the miner took {seconds:.1f} s to exit"
    print(f"miner exited {seconds:.2f} s after SIGTERM")

    # Handed back: in the queue again for any miner, with its attempt given back.
    job = market.job(job_id)
    assert job["status"] == "pending", job
    assert job["error_code"] == "handed_back", job
    assert "shutting down" in (job["error"] or ""), job
    assert job["attempts"] == 0, job
    assert job["miner_id"] is None and job["result"] is None, job
    assert list(miner.outbox.iterdir()) == []

    miner.start()
    done = market.wait_job(job_id, {"completed", "failed"}, timeout=60)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1, done
    assert done["miner_id"] == "e2e-sigterm"
    assert 0 < done["usage"]["completion_tokens"] <= max_tokens
    market.verify(done)


def test_sigint_restarts_mid_job_hand_it_back_without_failing_it(market: Market) -> None:
    """A miner stopped three times while it runs the job (SIGINT, the grace period
    runs out, the job is handed back) costs the job none of its attempts: it stays
    pending for the next start, which completes it. Before, each stop used up one of
    its three attempts and the third left it failed with "miner shutting down"."""
    miner = market.start_miner(miner_id="e2e-handback", grace_seconds=1)
    job_id = market.submit(LONG_PROMPT, **{**LONG_PARAMS, "max_tokens": 400})
    for stop in range(1, 4):
        market.wait_running(job_id)
        code, seconds = miner.terminate(timeout=15, signum=signal.SIGINT)
        if code != 0:
            market.fail(f"stop {stop}: the miner exited with {code} after {seconds:.1f} s")
        job = market.job(job_id)
        assert job["status"] == "pending", (stop, job)
        assert job["error_code"] == "handed_back", job
        assert "shutting down" in (job["error"] or ""), job
        miner.start()
    done = market.wait_job(job_id, {"completed", "failed"}, timeout=60)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1, done  # only the claim that completed it counts
    assert done["miner_id"] == "e2e-handback"
    market.verify(done)
    assert miner.log_text().count("stopping: no new jobs; 1 running") == 3


def test_result_survives_a_coordinator_crash(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-outbox")
    job_id = market.submit(LONG_PROMPT, **{**LONG_PARAMS, "max_tokens": 150})
    market.wait_job(job_id, {"running"}, timeout=15)
    market.coordinator.kill()
    killed_at = time.monotonic()

    # The miner finishes generating and keeps the result on disk.
    kept_file = miner.outbox / f"{job_id}.json"
    market.wait_until(lambda: kept_file.exists() or None, 30, f"{kept_file} to be written")
    assert private(kept_file), oct(kept_file.stat().st_mode)
    kept = json.loads(kept_file.read_text())
    assert kept["miner_id"] == "e2e-outbox"
    assert kept["result"]
    assert 0 < kept["usage"]["completion_tokens"] <= 150
    assert miner.alive()

    # Back on the same data dir and port well within the job's 30 s lease.
    market.coordinator.start()
    restarted_after = time.monotonic() - killed_at
    job = market.wait_job(job_id, {"completed", "failed", "pending"}, timeout=20)
    delivered_after = time.monotonic() - killed_at
    print(
        f"coordinator restarted {restarted_after:.1f} s after the kill; "
        f"result delivered {delivered_after:.1f} s after the kill"
    )
    assert restarted_after < 20, "restarted too late: the job's lease may have lapsed"
    assert job["status"] == "completed", job
    assert job["result"] == kept["result"]
    assert job["usage"] == kept["usage"]
    assert job["attempts"] == 1, job
    assert job["miner_id"] == "e2e-outbox"
    market.verify(job)
    market.wait_until(lambda: (not kept_file.exists()) or None, 5, "the outbox file to go")
    assert miner.alive()


def test_kept_result_is_delivered_by_the_next_start(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-kept")
    job_id = market.submit(LONG_PROMPT, **{**LONG_PARAMS, "max_tokens": 100})
    market.wait_job(job_id, {"running"}, timeout=15)
    market.coordinator.kill()
    kept_file = miner.outbox / f"{job_id}.json"
    market.wait_until(lambda: kept_file.exists() or None, 30, f"{kept_file} to be written")
    kept = json.loads(kept_file.read_text())

    # Stopped while the coordinator is away: the result stays on disk.
    code, seconds = miner.terminate(timeout=STOP_TIMEOUT_SECONDS)
    assert code == 0, f"exit code {code} {seconds:.1f} s after SIGTERM\n{market.diagnostics()}"
    assert kept_file.exists()
    assert "stays in" in miner.log_text()

    market.coordinator.start()
    assert market.job(job_id)["status"] == "running"  # its lease (30 s) still holds
    miner.start()
    job = market.wait_job(job_id, {"completed", "failed", "pending"}, timeout=20)
    assert job["status"] == "completed", job
    assert job["result"] == kept["result"]
    assert job["attempts"] == 1
    market.verify(job)
    market.wait_until(lambda: (not kept_file.exists()) or None, 5, "the outbox file to go")


def test_too_long_prompt_fails_for_good_and_the_daemon_carries_on(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-badinput")
    prompt = "word " * 5000  # ~5,000 tokens for a 2,048-token context; 25 kB of request
    job_id = market.submit(prompt, max_tokens=8)
    job = market.wait_job(job_id, {"completed", "failed"}, timeout=30)
    assert job["status"] == "failed", job
    assert "prompt_too_long" in (job["error"] or ""), job
    assert job["error_code"] == "miner_error", job
    assert job["attempts"] == 1, job  # not retryable: not requeued
    assert job["result"] is None

    after = market.run("Say hello.", max_tokens=8)
    assert_generation(after, 8)
    market.verify(after)
    assert miner.alive()
    assert market.job(job_id)["attempts"] == 1


def test_sigterm_while_the_coordinator_is_down_still_exits(market: Market) -> None:
    miner = market.start_miner(miner_id="e2e-down", grace_seconds=1)
    job_id = market.submit(LONG_PROMPT, **LONG_PARAMS)
    market.wait_running(job_id)
    market.coordinator.kill()

    code, seconds = miner.terminate(timeout=6)
    if code is None:
        miner.kill()
    assert code == 0, f"exit code {code} {seconds:.1f} s after SIGTERM"


def test_sigterm_while_registering_exits(market: Market) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    miner = market.start_miner(miner_id="e2e-unreachable", coordinator_url=nobody, wait=False)
    market.wait_until(
        lambda: "registering:" in miner.log_text() or None, 20, "a failed registration"
    )
    code, seconds = miner.terminate(timeout=5)
    if code is None:
        miner.kill()
    assert code == 0, f"exit code {code} {seconds:.1f} s after SIGTERM"


# --- a backend that dies mid-job ---------------------------------------------------------


def start_llama_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """llama-cpp-python's OpenAI-compatible server on the bundled model, as the miner's
    ``openai`` backend; returns once it lists its model."""
    from aitbc.miner.backends.bundled import bundled_model_path

    log_path = workdir / f"llama-server-{port}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()),
             "--model_alias", MODEL, "--port", str(port), "--n_ctx", "2048",
             "--n_threads", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("llama_cpp.server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail("llama_cpp.server did not start")
    raise AssertionError  # unreachable


def test_a_backend_that_dies_mid_job(market: Market) -> None:
    """The engine (an OpenAI-compatible server) is killed mid-generation: the job goes
    back to the queue as a retryable failure, the daemon keeps running and takes no
    jobs while the engine is down (so jobs do not burn their attempts on it), and once
    the engine is back it runs the job to completion."""
    port = free_port()
    server = start_llama_server(market.workdir, port)
    try:
        miner = market.start_miner(
            miner_id="e2e-openai",
            extra_args=("--backend", "openai", "--backend-url", f"http://127.0.0.1:{port}"),
        )
        job_id = market.submit(LONG_PROMPT, **{**LONG_PARAMS, "max_tokens": 300})
        market.wait_running(job_id)
        server.kill()
        server.wait(10)

        job = market.wait_job(job_id, {"pending", "failed"}, timeout=15)
        assert job["status"] == "pending", job
        assert job["attempts"] == 1 and job["error_code"] == "miner_error", job
        assert "backend_unreachable" in (job["error"] or ""), job
        time.sleep(3)  # the miner must not claim it again while the engine is down
        job = market.job(job_id)
        assert job["status"] == "pending" and job["attempts"] == 1, job
        assert miner.alive(), miner.logs()

        server = start_llama_server(market.workdir, port)
        done = market.wait_job(job_id, {"completed", "failed"}, timeout=60)
        assert done["status"] == "completed", done
        assert done["attempts"] == 2 and done["miner_id"] == "e2e-openai", done
        assert 0 < done["usage"]["completion_tokens"] <= 300
        market.verify(done)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


# --- a key the coordinator refuses -------------------------------------------------------


def error_lines(miner: MinerProcess) -> list[str]:
    return [line for line in miner.log_text().splitlines() if " ERROR " in line]


def test_a_revoked_key_stops_the_daemon_cleanly(market: Market) -> None:
    """The coordinator starts refusing the miner's key (revoked in its database while
    it was restarted) while a result waits for delivery: the daemon notices at once,
    says so in one line, still shuts down in order (the result stays on disk for a
    later start) and exits 1. Before, a refused poll ended the poll task unnoticed
    and a refused heartbeat was logged every second, with the daemon running on."""
    miner = market.start_miner(miner_id="e2e-revoked", grace_seconds=5)
    job_id = market.submit(LONG_PROMPT, **{**LONG_PARAMS, "max_tokens": 100})
    market.wait_job(job_id, {"running"}, timeout=15)
    market.coordinator.kill()
    kept_file = miner.outbox / f"{job_id}.json"
    market.wait_until(lambda: kept_file.exists() or None, 30, f"{kept_file} to be written")
    database = sqlite3.connect(market.coordinator.data_dir / "aitbc.db")
    try:
        with database:
            revoked = database.execute(
                "UPDATE api_keys SET revoked_at = created_at WHERE owner_id = ?",
                ("e2e-revoked",),
            ).rowcount
    finally:
        database.close()
    assert revoked == 1
    market.coordinator.start()

    assert miner.process is not None
    try:
        code = miner.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        market.fail("the miner kept running with a refused key")
    assert code == 1, f"exit code {code}\n{market.diagnostics()}"
    (line,) = error_lines(miner)
    assert "stopping: the" in line and "401 invalid_api_key" in line, line
    assert "Traceback" not in miner.log_text()
    # The shutdown ran in order: a last delivery attempt, and the result kept.
    assert f"result of {job_id} stays in" in miner.log_text()
    assert json.loads(kept_file.read_text())["miner_id"] == "e2e-revoked"


@dataclass
class StubCoordinator:
    """A tiny HTTP server in front of the real daemon: it registers the miner, takes
    its heartbeats, answers its first polls with no job and every later poll with
    401, as a coordinator does once the key is revoked; it keeps what it was sent."""

    registrations: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    polls: int = 0
    # Long polls waiting at once, and the most seen.
    waiting: int = 0
    most_waiting: int = 0

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def register(request: Request) -> JSONResponse:
            body = await request.json()
            self.registrations.append(body)
            return JSONResponse({"miner_id": body["miner_id"], "api_key": "stub-key"}, 201)

        async def heartbeat(request: Request) -> JSONResponse:
            self.heartbeats.append(await request.json())
            miner_id = request.path_params["miner_id"]
            return JSONResponse({"miner_id": miner_id, "status": "online", "cancelled_jobs": []})

        async def available(request: Request) -> JSONResponse:
            self.polls += 1
            if len(self.heartbeats) < 2:  # idle for a while first: no job yet
                self.waiting += 1
                self.most_waiting = max(self.most_waiting, self.waiting)
                try:
                    await asyncio.sleep(0.5)
                finally:
                    self.waiting -= 1
                return JSONResponse(None)
            detail = {"detail": "unknown or revoked API key", "error_code": "invalid_api_key"}
            return JSONResponse(detail, 401)

        return Starlette(
            routes=[
                Route("/v1/miners/register", register, methods=["POST"]),
                Route("/v1/miners/{miner_id}/heartbeat", heartbeat, methods=["POST"]),
                Route("/v1/jobs/available", available, methods=["GET"]),
            ]
        )


def test_a_refused_poll_stops_the_daemon_and_registration_declares_its_limits(
    tmp_path: Path,
) -> None:
    """The long poll answered 401 stops the daemon with one line and exit 1 (before,
    the poll task died unnoticed while heartbeats went on), whichever of its polls (one
    per slot, waiting at once) met it first. What it sent on the way:
    its concurrency and its template overhead at registration, and every heartbeat
    lists its running jobs, also when there are none (only listed jobs are renewed)."""
    stub = StubCoordinator()
    with served(stub.app()) as url:
        miner = MinerProcess(tmp_path, url, miner_id="e2e-stub", concurrency=2)
        try:
            miner.start()
            assert miner.process is not None
            try:
                code = miner.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the miner kept running after its poll was refused\n{miner.logs()}")
        finally:
            miner.stop()
    assert code == 1, miner.logs()
    (line,) = error_lines(miner)
    assert "stopping: the poll task failed: 401 invalid_api_key" in line, line
    # One long poll per slot: jobs submitted together are fetched together.
    assert stub.most_waiting == 2
    assert "Traceback" not in miner.log_text()

    (registration,) = stub.registrations
    assert registration["concurrency"] == 2
    # SmolLM2's chat template (a system prompt and role markers) adds some 30 tokens.
    assert set(registration["template_tokens"]) == {MODEL}
    assert 10 < registration["template_tokens"][MODEL] <= 256, registration
    assert len(stub.heartbeats) >= 2
    assert all(beat["running_jobs"] == [] for beat in stub.heartbeats), stub.heartbeats


@pytest.mark.parametrize("value", ["0", "1025", "two"])
def test_concurrency_out_of_bounds_is_refused_before_start(tmp_path: Path, value: str) -> None:
    """What a registration could not declare is refused by the command line."""
    finished = subprocess.run(
        [*AITBC, "miner", "--data-dir", str(tmp_path / "miner"), "--concurrency", value],
        capture_output=True,
        env=clean_env(),
        timeout=30,
    )
    assert finished.returncode == 2, finished
    assert b"--concurrency" in finished.stderr, finished.stderr
    assert not (tmp_path / "miner").exists()


def read_events(response: httpx.Response) -> Iterator[tuple[float, dict[str, Any]]]:
    """SSE events of a streamed response as they arrive: (arrival time, event)."""
    fields: dict[str, Any] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if fields:
                fields["data"] = json.loads(fields["data"])
                yield time.monotonic(), fields
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


def test_a_real_generation_streams_token_by_token_to_every_reader(market: Market) -> None:
    market.start_miner(miner_id="e2e-stream")
    job_id = market.submit("Tell me a short story about a lighthouse.", max_tokens=96, seed=7)
    url = f"{market.coordinator.base_url}/v1/jobs/{job_id}/stream"
    streams: list[list[tuple[float, dict[str, Any]]]] = []
    with httpx.Client(timeout=60) as http:
        for _reader in range(2):
            with http.stream("GET", url, headers=market.client_headers) as response:
                assert response.status_code == 200
                streams.append(list(read_events(response)))
    job = market.job(job_id)
    assert_generation(job, 96)
    for events in streams:
        assert events[-1][1]["event"] == "end"
        end = events[-1][1]["data"]
        assert end["status"] == "completed"
        assert end["usage"]["completion_tokens"] == job["usage"]["completion_tokens"]
        receipt = market.get(f"/v1/jobs/{job_id}/receipt")
        assert (end["receipt_id"], end["price"]) == (receipt["receipt_id"], receipt["price"])
        tokens = [event for _at, event in events if event["event"] == "token"]
        assert "".join(event["data"]["text"] for event in tokens) == job["result"]
        assert all(event["event"] != "reset" for _at, event in events)
    # The first reader followed the job live: pieces spread over the generation (the
    # miner sends its first text at once, then what came meanwhile, 5 times a second).
    live = [at for at, event in streams[0] if event["event"] == "token"]
    assert len(live) >= 4 and live[-1] - live[0] > 0.3, streams[0]
    # The second came after the end: the same pieces, from the database.
    assert [e for _a, e in streams[1]] == [e for _a, e in streams[0]]
