"""What a client cannot do to a real ``aitbc serve``: choose the address it is rate
limited by (X-Forwarded-For is believed only from configured proxies), or hold a
connection by sending its body slowly (408, connection closed).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import AITBC, clean_env, free_port, stop_process, wait_healthy

pytestmark = pytest.mark.e2e

LIMIT = 5
REGISTER = "/v1/clients/register"


@dataclass
class Server:
    """A running ``aitbc serve`` process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        stop_process(server.process)


def start(servers: list[Server], tmp_path: Path, *flags: str, **env: str) -> Server:
    """``aitbc serve`` with extra ``flags`` and AITBC_* ``env``, LIMIT requests a minute."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*AITBC, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
             "--log-level", "warning", *flags],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=clean_env(AITBC_RATE_LIMIT=f"{LIMIT}/minute", **env),
        )  # fmt: skip
    server = Server(process, port, log_path)
    servers.append(server)
    wait_healthy(process, server.base_url, server.log)
    return server


def register_from(server: Server, forwarded_for: str) -> int:
    response = httpx.post(
        server.base_url + REGISTER, json={}, headers={"X-Forwarded-For": forwarded_for}
    )
    return response.status_code


# --- forwarded headers


def test_invented_forwarded_addresses_do_not_escape_the_limit_by_default(
    servers: list[Server], tmp_path: Path
) -> None:
    server = start(servers, tmp_path)
    statuses = [register_from(server, f"203.0.113.{index}") for index in range(2 * LIMIT)]
    assert statuses == [201] * LIMIT + [429] * LIMIT, statuses


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_configured_proxy_is_believed(servers: list[Server], tmp_path: Path, how: str) -> None:
    if how == "flag":
        server = start(servers, tmp_path, "--forwarded-allow-ips", "127.0.0.1")
    else:
        server = start(servers, tmp_path, AITBC_FORWARDED_ALLOW_IPS="127.0.0.0/8")
    # Each forwarded client has a budget of its own...
    statuses = [register_from(server, f"203.0.113.{index}") for index in range(2 * LIMIT)]
    assert statuses == [201] * (2 * LIMIT), statuses
    # ...and it is the forwarded address that is counted, not ignored.
    statuses = [register_from(server, "198.51.100.7") for _ in range(LIMIT + 1)]
    assert statuses == [201] * LIMIT + [429], statuses


# --- request bodies that do not arrive

BODY = b'{"name": "slow"}'


def open_request(server: Server, length: int) -> socket.socket:
    """A raw connection that has sent a registration's headers and no body yet."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        f"POST {REGISTER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after
    ``timeout`` seconds)."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def parse(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_timed_out(response: bytes, reason: str) -> None:
    status, headers, body = parse(response)
    assert status == 408, response
    assert body["error_code"] == "request_timeout", body
    assert reason in str(body["detail"]), body
    assert headers["connection"] == "close"


def test_a_body_trickling_in_is_cut_off(servers: list[Server], tmp_path: Path) -> None:
    # One byte every 2.5 s never leaves a 4 s gap: the pace rule is what stops it.
    server = start(servers, tmp_path, AITBC_REQUEST_READ_TIMEOUT_SECONDS="4")
    padded = BODY + b" " * 200
    sock = open_request(server, len(padded))
    started = time.monotonic()
    response = b""
    with sock:
        for byte in padded:
            if time.monotonic() - started > 15:
                pytest.fail("the connection is still open after 15 s of trickling")
            sock.sendall(bytes([byte]))
            readable, _, _ = select.select([sock], [], [], 2.5)
            if readable:
                response = read_until_closed(sock, timeout=5)
                break
    elapsed = time.monotonic() - started
    assert response, "the server sent nothing"
    assert_timed_out(response, "too slow")
    assert 3.5 <= elapsed <= 9, elapsed
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"
    assert "Traceback" not in server.log(), server.log()


def test_a_body_that_stops_is_cut_off_after_the_gap(servers: list[Server], tmp_path: Path) -> None:
    server = start(servers, tmp_path, AITBC_REQUEST_READ_TIMEOUT_SECONDS="1")
    with open_request(server, len(BODY)) as sock:
        sock.sendall(BODY[:5])
        started = time.monotonic()
        response = read_until_closed(sock, timeout=10)
    assert_timed_out(response, "stalled")
    assert 0.9 <= time.monotonic() - started <= 5
    assert "Traceback" not in server.log(), server.log()


def test_a_slow_but_steady_body_may_take_longer_than_the_gap(
    servers: list[Server], tmp_path: Path
) -> None:
    server = start(servers, tmp_path, AITBC_REQUEST_READ_TIMEOUT_SECONDS="2")
    padded = BODY + b" " * 2984
    chunks = [padded[offset : offset + 300] for offset in range(0, len(padded), 300)]
    started = time.monotonic()
    with open_request(server, len(padded)) as sock:
        for chunk in chunks:  # 600 bytes/s, a chunk every 0.5 s: 5 s in all
            sock.sendall(chunk)
            time.sleep(0.5)
        sock.settimeout(5)
        response = sock.recv(65536)
    assert time.monotonic() - started > 4  # twice the 2 s gap
    status, _headers, body = parse(response)
    assert status == 201, body
    assert str(body["api_key"])
