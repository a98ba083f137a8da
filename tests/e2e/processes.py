"""What the end-to-end tests share to run real ``aitbc`` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

AITBC = [sys.executable, "-m", "aitbc.cli.main"]
START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any AITBC_* setting of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITBC_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def spawn_serve(
    port: int, data_dir: Path, log_path: Path, cwd: Path, **env: str
) -> subprocess.Popen[bytes]:
    """``aitbc serve`` on ``port`` and ``data_dir``, its output in ``log_path``; ``env``
    adds AITBC_* settings to a clean environment."""
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*AITBC, "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(**env), cwd=cwd,
        )  # fmt: skip


def wait_healthy(
    process: subprocess.Popen[bytes],
    base_url: str,
    logs: Callable[[], str],
    timeout_seconds: float = START_TIMEOUT_SECONDS,
) -> None:
    """Return once ``/health`` says ok; fail the test (with ``logs()``) if the process
    exits or does not get there in time."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"aitbc serve exited with {process.returncode}:\n{logs()}")
        try:
            response = httpx.get(base_url + "/health", timeout=1)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 200 and response.json()["status"] == "ok":
            return
        time.sleep(0.05)
    pytest.fail(f"aitbc serve did not become healthy in time:\n{logs()}")
