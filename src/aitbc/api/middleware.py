"""ASGI middleware: authentication + rate limits per key (or per address), body size caps.

Rate limits use the ``limits`` library's sliding-window counters; the storage is
in-process by default and can be Redis so several coordinators share the counts.
Every response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset``; refused requests get 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aitbc.errors import AITBCError
from aitbc.services.auth import authenticate, hash_key
from aitbc.services.runtime import Principal, Runtime

PRINCIPAL_STATE_KEY = "principal"
AUTH_ERROR_STATE_KEY = "auth_error"
UPLOAD_PATH = "/v1/files"
MULTIPART_OVERHEAD_BYTES = 64 * 1024
EXEMPT_PATHS = frozenset({"/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})


@dataclass(frozen=True)
class _Limits:
    default: list[RateLimitItem]
    miner: list[RateLimitItem]


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


class AuthRateLimitMiddleware:
    """Resolve the caller's key once per request, then apply its rate limits."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        settings = runtime.settings
        self.limits = _Limits(_parse(settings.rate_limit), _parse(settings.miner_rate_limit))
        url = settings.rate_limit_storage_url
        if not url.startswith("async+"):
            url = "async+" + url
        storage = storage_from_string(url)
        if not isinstance(storage, Storage):
            raise ValueError(f"rate limit storage {url!r} has no asyncio implementation")
        self.storage = storage
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secret = Headers(scope=scope).get("x-api-key")
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
            client = scope.get("client")
            identity = "ip:" + (client[0] if client else "unknown")
            items = self.limits.default
        if not items:
            await self.app(scope, receive, send)
            return

        allowed = True
        for item in items:
            if not await self.limiter.hit(item, identity):
                allowed = False
                break
        tightest_remaining = math.inf
        header_item = items[0]
        reset_at = 0.0
        for item in items:
            stats = await self.limiter.get_window_stats(item, identity)
            if stats.remaining < tightest_remaining:
                tightest_remaining = stats.remaining
                header_item = item
                reset_at = stats.reset_time
        headers = [
            (b"x-ratelimit-limit", str(header_item.amount).encode()),
            (b"x-ratelimit-remaining", str(int(max(tightest_remaining, 0))).encode()),
            (b"x-ratelimit-reset", str(math.ceil(reset_at)).encode()),
        ]
        if not allowed:
            retry_after = max(1, math.ceil(reset_at - time.time()))
            await _send_json(
                send,
                429,
                {
                    "detail": f"rate limit exceeded ({header_item}); retry in {retry_after} s",
                    "error_code": "rate_limited",
                },
                [*headers, (b"retry-after", str(retry_after).encode())],
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodySizeLimitMiddleware:
    """Refuse bodies over the configured size (uploads get their own, larger cap)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope["path"] == UPLOAD_PATH else self.max_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(
                send,
                413,
                {"detail": f"request body over {limit} bytes", "error_code": "payload_too_large"},
                [],
            )
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


class _BodyTooLarge(HTTPException):
    """Raised from inside body parsing; an HTTPException so FastAPI passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")
