"""An ASGI app served by a real uvicorn server in a background thread, for tests
that need real HTTP connections (keep-alive, status codes on the wire) in process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

START_TIMEOUT_SECONDS = 30.0


@contextmanager
def served(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 (``config``: more uvicorn settings)
    and yield its base URL; the server stops on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, ws="none", **config)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="served", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
