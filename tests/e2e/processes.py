"""What the end-to-end tests share to run real ``aitbc`` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

AITBC = [sys.executable, "-m", "aitbc.cli.main"]


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
