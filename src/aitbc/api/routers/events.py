"""``/ws``: the live event stream (DESIGN.md section 8).

The client sends JSON requests: ``{"method": "subscribe", "params": [channels],
"id"?, "since"?: {channel: seq}}``, ``unsubscribe`` (same shape), ``auth``
(``{"params": {"api_key": "..."}}``, for browsers, which cannot set ``X-Api-Key``)
and ``ping``. Every request is answered ``{"id", "result": {...}}`` or ``{"id",
"error": {"code", "message"}}``; events arrive as ``{"channel", "type", "seq",
"data"}``. Subscriptions are served by ``services.event_hub``.

Close codes: 1000 idle (no subscription and nothing said for ``ws_idle_seconds``),
1001 the coordinator is stopping, 1008 a key that is unknown or was revoked while
connected, 1013 too slow to keep up (resume with ``since``) or too many connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from aitbc.api.middleware import api_key_of
from aitbc.domain.events import Channel, Viewer, may_subscribe
from aitbc.errors import AITBCError
from aitbc.services.auth import authenticate
from aitbc.services.event_hub import Subscriber
from aitbc.services.runtime import Principal, Runtime

router = APIRouter(tags=["Events"])
log = logging.getLogger(__name__)

ANONYMOUS = Viewer(role=None, owner_id=None)
# How often a connection's key is checked again (a revocation ends the connection).
KEY_RECHECK_SECONDS = 5.0
# Requests one connection may make per minute (a subscribe with since reads the log).
MAX_REQUESTS_PER_MINUTE = 120
POLICY_VIOLATION_CLOSE_CODE = 1008
# A consumer too slow to keep up, or no room for another (RFC 6455 "try again later").
SLOW_CONSUMER_CLOSE_CODE = 1013
MAX_CHANNELS_PER_REQUEST = 16


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _viewer(principal: Principal) -> Viewer:
    return Viewer(role=principal.role, owner_id=principal.owner_id)


def _close_code(subscriber: Subscriber) -> int:
    """The close code for a connection the hub or the route said must close."""
    if subscriber.too_slow:
        return SLOW_CONSUMER_CLOSE_CODE
    return subscriber.close_code or 1000


def _reply(request_id: Any, result: dict[str, Any]) -> str:
    return orjson.dumps({"id": request_id, "result": result}).decode("utf-8")


def _error(request_id: Any, code: str, message: str) -> str:
    return orjson.dumps({"id": request_id, "error": {"code": code, "message": message}}).decode(
        "utf-8"
    )


@router.websocket("/ws")
async def event_stream(websocket: WebSocket) -> None:
    """Subscribe to live events; see the module docstring for the protocol."""
    runtime: Runtime = websocket.app.state.runtime
    settings = runtime.settings
    hub = runtime.events
    if hub.connections >= settings.ws_max_connections:
        await websocket.close(SLOW_CONSUMER_CLOSE_CODE, "too many connections; try again later")
        return
    secret = api_key_of(websocket.headers)
    viewer = ANONYMOUS
    if secret:
        try:
            viewer = _viewer(await authenticate(runtime, secret))
        except AITBCError as exc:
            await websocket.accept()
            await websocket.send_text(_error(None, exc.error_code, exc.detail))
            await websocket.close(POLICY_VIOLATION_CLOSE_CODE, "invalid API key")
            return
    await websocket.accept()
    subscriber = Subscriber(viewer, settings.ws_max_queued_events)
    hub.add(subscriber)
    connection = _Connection(runtime, websocket, subscriber, secret)
    writer = asyncio.create_task(connection.write())
    reader = asyncio.create_task(connection.read())
    try:
        await asyncio.wait((writer, reader), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.remove(subscriber)
        subscriber.close(1000, "")
        for task in (reader, writer):
            if not task.done():
                task.cancel()
        for task in (reader, writer):
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug: end this connection, say so, serve the others
                log.exception("/ws connection failed")


class _Connection:
    """One socket: a reader answering requests, a writer draining the queue."""

    def __init__(
        self, runtime: Runtime, websocket: WebSocket, subscriber: Subscriber, secret: str | None
    ) -> None:
        self.runtime = runtime
        self.websocket = websocket
        self.subscriber = subscriber
        self.secret = secret
        # Start times of this minute's requests (a sliding window), and requests
        # refused for going over it.
        self._recent: list[float] = []
        self._refused = 0

    async def write(self) -> None:
        """Send queued frames until the connection must close; then close it."""
        subscriber = self.subscriber
        try:
            while True:
                text = await subscriber.next_frame()
                if text is None:
                    break
                await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the peer went away
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(_close_code(subscriber), subscriber.close_reason)

    async def read(self) -> None:
        """Answer requests until the peer leaves or the connection goes idle."""
        settings = self.runtime.settings
        last_heard = time.monotonic()
        last_key_check = last_heard
        while not self.subscriber.closing:
            now = time.monotonic()
            wait = KEY_RECHECK_SECONDS
            if not self.subscriber.channels:
                wait = min(wait, max(last_heard + settings.ws_idle_seconds - now, 0.0))
            try:
                async with asyncio.timeout(wait):
                    message = await self.websocket.receive()
            except TimeoutError:
                now = time.monotonic()
                if not self.subscriber.channels and now - last_heard >= settings.ws_idle_seconds:
                    self.subscriber.close(1000, "idle: no subscription")
                    return
                if self.secret and now - last_key_check >= KEY_RECHECK_SECONDS:
                    last_key_check = now
                    if not await self._key_still_valid():
                        return
                continue
            if message["type"] == "websocket.disconnect":
                return
            last_heard = time.monotonic()
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            await self.handle(text)

    async def _key_still_valid(self) -> bool:
        try:
            await authenticate(self.runtime, self.secret)
        except AITBCError:
            self.subscriber.close(POLICY_VIOLATION_CLOSE_CODE, "API key revoked")
            return False
        return True

    async def handle(self, text: str) -> None:
        """Answer one request (errors are replies, never a closed connection). Every
        message counts against the connection's budget, well-formed or not."""
        now = time.monotonic()
        self._recent = [moment for moment in self._recent if now - moment < 60]
        if len(self._recent) < MAX_REQUESTS_PER_MINUTE:
            self._refused = 0
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        request_id: Any = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request_id, str | int | None) or isinstance(request_id, bool):
            request_id = None
        try:
            if len(self._recent) >= MAX_REQUESTS_PER_MINUTE:
                self._refused += 1
                if self._refused > MAX_REQUESTS_PER_MINUTE:
                    # Not listening to refusals either: the replies would pile up.
                    self.subscriber.close(POLICY_VIOLATION_CLOSE_CODE, "too many requests")
                    return
                raise _BadRequest(
                    "rate_limited",
                    f"at most {MAX_REQUESTS_PER_MINUTE} requests a minute on one connection",
                )
            self._recent.append(now)
            if not isinstance(request, dict):
                raise _BadRequest("invalid_message", "a request is one JSON object")
            if request.get("id") is not None and request_id is None:
                raise _BadRequest("invalid_message", "id must be a string, an integer or null")
            method = request.get("method")
            if method == "subscribe":
                await self.subscribe(request_id, request)
            elif method == "unsubscribe":
                self.unsubscribe(request_id, request)
            elif method == "auth":
                await self.auth(request_id, request)
            elif method == "ping":
                self.subscriber.send_now(_reply(request_id, {"pong": True}))
            else:
                raise _BadRequest(
                    "unknown_method",
                    "method must be one of subscribe, unsubscribe, auth, ping",
                )
        except _BadRequest as exc:
            self.subscriber.send_now(_error(request_id, exc.code, exc.message))
        except AITBCError as exc:
            self.subscriber.send_now(_error(request_id, exc.error_code, exc.detail))

    def _channels(self, request: dict[str, Any]) -> list[Channel]:
        params = request.get("params")
        if (
            not isinstance(params, list)
            or not params
            or len(params) > MAX_CHANNELS_PER_REQUEST
            or not all(isinstance(name, str) for name in params)
        ):
            raise _BadRequest("invalid_params", "params must be a non-empty list of channel names")
        channels: list[Channel] = []
        for name in params:
            try:
                channel = Channel(name)
            except ValueError:
                known = ", ".join(member.value for member in Channel)
                raise _BadRequest(
                    "unknown_channel", f"no channel {name[:64]!r}; channels are {known}"
                ) from None
            if channel not in channels:
                channels.append(channel)
        return channels

    async def subscribe(self, request_id: Any, request: dict[str, Any]) -> None:
        """Validate the whole request first: a refused subscribe subscribes nothing."""
        channels = self._channels(request)
        subscriber = self.subscriber
        for channel in channels:
            if not may_subscribe(subscriber.viewer, channel):
                raise _BadRequest(
                    "unauthorized",
                    f"{channel.value} needs an API key (X-Api-Key, or an auth request first)",
                )
        since = self._since(request, channels)

        def acknowledge(starts: dict[Channel, int]) -> None:
            subscriber.send_now(
                _reply(
                    request_id,
                    {
                        "subscribed": [channel.value for channel in subscriber.channels],
                        "seq": {channel.value: seq for channel, seq in starts.items()},
                    },
                )
            )

        await self.runtime.events.subscribe(
            self.runtime.engine, subscriber, channels, since, acknowledge
        )

    @staticmethod
    def _since(request: dict[str, Any], channels: list[Channel]) -> dict[Channel, int]:
        raw = request.get("since")
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise _BadRequest("invalid_params", 'since must be an object {"<channel>": seq}')
        since: dict[Channel, int] = {}
        for name, offset in raw.items():
            channel = next((member for member in channels if member.value == name), None)
            if channel is None:
                raise _BadRequest(
                    "invalid_params", f"since names {name[:64]!r}, which this request does not"
                )
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise _BadRequest("invalid_params", "a since offset is an integer >= 0")
            since[channel] = offset
        return since

    def unsubscribe(self, request_id: Any, request: dict[str, Any]) -> None:
        """Stop the channels named (channels not followed are ignored)."""
        for channel in self._channels(request):
            self.runtime.events.unsubscribe(self.subscriber, channel)
        self.subscriber.send_now(
            _reply(
                request_id,
                {"subscribed": [channel.value for channel in self.subscriber.channels]},
            )
        )

    async def auth(self, request_id: Any, request: dict[str, Any]) -> None:
        """Authenticate a connection opened without a key."""
        if self.secret is not None:
            raise _BadRequest("already_authenticated", "this connection has a key already")
        params = request.get("params")
        secret = params.get("api_key") if isinstance(params, dict) else None
        if not isinstance(secret, str) or not secret:
            raise _BadRequest("invalid_params", 'auth takes {"params": {"api_key": "..."}}')
        principal = await authenticate(self.runtime, secret)
        self.secret = secret
        self.subscriber.viewer = _viewer(principal)
        self.subscriber.send_now(
            _reply(request_id, {"authenticated": True, "role": principal.role})
        )
