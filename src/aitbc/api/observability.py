"""Per request: an id, a metrics sample and a log line.

The request id is the caller's ``X-Request-Id`` when it is a short token (a proxy's
or a client's, so one id follows a request through every hop), else a new one; it
is sent back in ``X-Request-Id`` and set on every log record made while the request
is served (``aitbc.logs.REQUEST_ID``). Each answered request is counted in
``aitbc_http_requests_total`` and ``aitbc_http_request_duration_seconds`` by its
route template, and logged in one line (``aitbc.http``, INFO; health checks and
scrapes at DEBUG): method, route, path, status, duration. Never headers, query
strings or bodies: that is where keys, prompts and results are.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aitbc.logs import REQUEST_ID
from aitbc.services.metrics import Metrics

log = logging.getLogger("aitbc.http")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
QUIET_PATHS = frozenset({"/health", "/metrics"})
UNMATCHED_ROUTE = "unmatched"


class RequestIds:
    """New request ids: a random prefix per process and a counter (16 hex digits),
    unique without a system call per request."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def of(self, headers: Headers) -> str:
        """The caller's request id if it is a short token, else a new one."""
        given = headers.get("x-request-id")
        if given and _SANE_REQUEST_ID.fullmatch(given):
            return given
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"


class ObservabilityMiddleware:
    """Request id, metrics and the request log line (outermost middleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.request_ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            token = REQUEST_ID.set(self.request_ids.of(Headers(scope=scope)))
            try:
                await self.app(scope, receive, send)
            finally:
                REQUEST_ID.reset(token)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.request_ids.of(Headers(scope=scope))
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = scope["method"]
            self.metrics.observe_request(method, template, status, seconds)
            path = scope["path"]
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "%s %s %d %.1f ms",
                    method,
                    path,
                    status,
                    seconds * 1000,
                    extra={
                        "method": method,
                        "route": template,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )
            REQUEST_ID.reset(token)
