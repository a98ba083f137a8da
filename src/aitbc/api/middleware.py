"""ASGI middleware: authentication + rate limits per key (or per address), request bodies
bounded in size and in pace.

Rate limits are decided by :mod:`aitbc.api.rate_limits` (in process, or shared through
Redis). Every limited response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``
and ``X-RateLimit-Reset``; refused requests get 429 with ``Retry-After``.

A body must keep arriving: a gap of ``request_read_timeout_seconds`` between two chunks,
or a body slower on average than ``MIN_BODY_BYTES_PER_SECOND`` once that grace period
is spent, ends the request with 408 and the connection is closed. The second rule is
what stops a client trickling one byte every few seconds, which never leaves a gap;
an upload at any sane pace may take as long as it needs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aitbc.api.errors import error_body
from aitbc.api.rate_limits import RateLimiter
from aitbc.errors import AITBCError
from aitbc.services.auth import authenticate, hash_key
from aitbc.services.runtime import Principal, Runtime

PRINCIPAL_STATE_KEY = "principal"
AUTH_ERROR_STATE_KEY = "auth_error"
UPLOAD_PATH = "/v1/files"
MULTIPART_OVERHEAD_BYTES = 64 * 1024
EXPLORER_PREFIXES = ("/explorer/", "/v1/explorer/")
EXEMPT_PATHS = frozenset({"/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})
# Apache's mod_reqtimeout default (MinRate=500): slower than a 4 kbit/s modem.
MIN_BODY_BYTES_PER_SECOND = 500


@dataclass(frozen=True)
class _Limits:
    default: list[RateLimitItem]
    miner: list[RateLimitItem]
    # Anonymous reads of the public chain: a verifier downloads it all.
    explorer: list[RateLimitItem]


def _parse(spec: str) -> list[RateLimitItem]:
    return parse_many(spec) if spec.strip() else []


async def _send_json(
    send: Send, status: int, body: dict[str, object], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def api_key_of(headers: Headers) -> str | None:
    """The caller's API key: ``X-Api-Key``, or ``Authorization: Bearer <key>`` (what
    OpenAI's clients send, DESIGN.md section 9)."""
    secret = headers.get("x-api-key")
    if secret:
        return secret
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class AuthRateLimitMiddleware:
    """Resolve the caller's key once per request, then apply its rate limits."""

    def __init__(self, app: ASGIApp, runtime: Runtime, limiter: RateLimiter) -> None:
        self.app = app
        self.runtime = runtime
        settings = runtime.settings
        self.limits = _Limits(
            _parse(settings.rate_limit),
            _parse(settings.miner_rate_limit),
            _parse(settings.explorer_rate_limit),
        )
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secret = api_key_of(Headers(scope=scope))
        state = scope.setdefault("state", {})
        principal: Principal | None = None
        if secret:
            try:
                principal = await authenticate(self.runtime, secret)
            except AITBCError as exc:
                state[AUTH_ERROR_STATE_KEY] = exc
        state[PRINCIPAL_STATE_KEY] = principal

        if (principal is not None and principal.is_admin) or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if principal is not None and secret:
            identity = "key:" + hash_key(secret)
            items = self.limits.miner if principal.role == "miner" else self.limits.default
        else:
            # The peer's address: uvicorn puts a forwarded one here only when the peer
            # is a proxy listed in forwarded_allow_ips.
            client = scope.get("client")
            identity = "ip:" + (client[0] if client else "unknown")
            items = (
                self.limits.explorer
                if scope["path"].startswith(EXPLORER_PREFIXES)
                else self.limits.default
            )
        if not items:
            await self.app(scope, receive, send)
            return

        decision = await self.limiter.decide(items, identity)
        headers = [
            (b"x-ratelimit-limit", str(decision.item.amount).encode()),
            (b"x-ratelimit-remaining", str(decision.remaining).encode()),
            (b"x-ratelimit-reset", str(math.ceil(decision.reset_at)).encode()),
        ]
        if not decision.allowed:
            self.runtime.metrics.rate_limited.labels(identity.partition(":")[0]).inc()
            retry_after = max(1, math.ceil(decision.reset_at - time.time()))
            await _send_json(
                send,
                429,
                error_body(
                    scope["path"],
                    429,
                    f"rate limit exceeded ({decision.item}); retry in {retry_after} s",
                    "rate_limited",
                ),
                [*headers, (b"retry-after", str(retry_after).encode())],
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitsMiddleware:
    """Refuse bodies over the configured size (uploads get their own, larger cap) with
    413, and bodies that stall or trickle with 408 (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, max_upload_bytes: int, read_timeout: float
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared in (None, "0") and "transfer-encoding" not in headers:
            # No body (RFC 9112 section 6.3): nothing to bound, nothing to wait for.
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope["path"] == UPLOAD_PATH else self.max_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(
                send,
                413,
                error_body(
                    scope["path"], 413, f"request body over {limit} bytes", "payload_too_large"
                ),
                [],
            )
            return
        gap = self.read_timeout
        loop = asyncio.get_running_loop()
        received = 0
        first_read_at: float | None = None
        body_complete = False
        response_started = False
        answered = False

        async def guarded_receive() -> Message:
            nonlocal received, first_read_at, body_complete
            if body_complete:
                # Only the disconnect is left: streaming responses wait on it for long.
                return await receive()
            now = loop.time()
            if first_read_at is None:
                # From the first read, not from the request's start: time the app spent
                # before reading (a key lookup, say) is not the client's.
                first_read_at = now
            allowance = first_read_at + gap + received / MIN_BODY_BYTES_PER_SECOND
            stalled = now + gap <= allowance
            try:
                async with asyncio.timeout_at(now + gap if stalled else allowance):
                    message = await receive()
            except TimeoutError:
                if stalled:
                    detail = f"request body stalled: no data for {gap:g} s"
                else:
                    detail = f"request body too slow: under {MIN_BODY_BYTES_PER_SECOND} bytes/s"
                await answer_timed_out(detail)
                raise _ReadTimedOut(detail) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
                body_complete = not message.get("more_body", False)
            else:
                body_complete = True
            return message

        async def answer_timed_out(detail: str) -> None:
            nonlocal answered
            if response_started:
                return
            answered = True
            await _send_json(
                send,
                408,
                error_body(scope["path"], 408, detail, "request_timeout"),
                [(b"connection", b"close")],
            )

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if answered:
                return  # the 408 is out; what the app says after it goes nowhere
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _ReadTimedOut:
            if not answered:
                raise


class _BodyTooLarge(HTTPException):
    """Raised from inside body parsing; an HTTPException so FastAPI passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class _ReadTimedOut(HTTPException):
    """Unwinds the app once the 408 is sent; an HTTPException so FastAPI passes it on."""

    def __init__(self, detail: str) -> None:
        super().__init__(408, detail)
