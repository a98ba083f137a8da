"""Live events from ``/ws`` (DESIGN.md section 8) as an async iterator that
reconnects and resumes exactly.

:func:`event_stream` (``AsyncClient.events``) subscribes to the channels asked for
and yields each :class:`Event`. When the connection drops (network, a coordinator
restart, 1013 for a consumer that fell behind) it reconnects with a jittered
backoff and subscribes again with ``since`` set to the last offset it yielded per
channel (or the offset the subscription started at), so no event is missed or
repeated across reconnects. An error the coordinator answers (an unknown channel,
``since_expired`` for events no longer kept, an unknown or revoked key) ends the
iteration with :class:`EventStreamError`; a coordinator that cannot be reached at
the first attempt, with :class:`aitbc.sdk.errors.APIConnectionError`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from aitbc.sdk.errors import APIConnectionError, APIError

RECONNECT_BASE_SECONDS = 0.5
MAX_RECONNECT_SECONDS = 30.0
# Close codes after which reconnecting cannot help.
_FINAL_CLOSE_CODES = {1008: "invalid_api_key"}


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its channel, type (``job.running``...), offset and data."""

    channel: str
    type: str
    seq: int
    data: dict[str, Any]


class EventStreamError(APIError):
    """The coordinator refused a subscription (``code`` says why)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}", error_code=code)
        self.detail = message


def websocket_url(base_url: str) -> str:
    """``http(s)://host`` as ``ws(s)://host/ws``."""
    if base_url.startswith("https://"):
        return "wss://" + base_url.removeprefix("https://").rstrip("/") + "/ws"
    return "ws://" + base_url.removeprefix("http://").rstrip("/") + "/ws"


async def event_stream(
    base_url: str,
    api_key: str | None,
    channels: Iterable[str],
    since: Mapping[str, int] | None = None,
    *,
    reconnect: bool = True,
    max_reconnect_seconds: float = MAX_RECONNECT_SECONDS,
) -> AsyncIterator[Event]:
    """Events of ``channels`` as they happen (after ``since[channel]`` for those it
    names), reconnecting and resuming until the caller stops iterating."""
    wanted = list(dict.fromkeys(channels))
    if not wanted:
        raise ValueError("name at least one channel")
    resume: dict[str, int] = dict(since or {})
    url = websocket_url(base_url)
    headers = {"X-Api-Key": api_key} if api_key else None
    failures = 0
    connected_once = False
    while True:
        try:
            async with connect(url, additional_headers=headers, open_timeout=10) as connection:
                connected_once = True
                await _subscribe(connection, wanted, resume)
                failures = 0
                async for raw in connection:
                    message = json.loads(raw)
                    if "channel" not in message:
                        _raise_if_error(message)
                        continue
                    event = Event(
                        message["channel"], message["type"], message["seq"], message["data"]
                    )
                    resume[event.channel] = event.seq
                    yield event
                code = connection.close_code
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            if isinstance(exc, InvalidURI) or not connected_once:
                # A first connection that fails is a wrong URL or a coordinator that is
                # down: say so rather than retrying for ever.
                raise APIConnectionError(f"cannot reach {url}: {exc}") from exc
            code = None
        if code in _FINAL_CLOSE_CODES:
            raise EventStreamError(_FINAL_CLOSE_CODES[code], "the coordinator refused the API key")
        if not reconnect:
            return
        failures += 1
        delay = min(max_reconnect_seconds, RECONNECT_BASE_SECONDS * 2 ** min(failures, 10))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)


async def _subscribe(
    connection: ClientConnection, channels: list[str], resume: dict[str, int]
) -> None:
    """Subscribe (resuming where ``resume`` says) and record each channel's start."""
    request: dict[str, Any] = {"method": "subscribe", "params": channels, "id": "subscribe"}
    known = {channel: seq for channel, seq in resume.items() if channel in channels}
    if known:
        request["since"] = known
    await connection.send(json.dumps(request))
    while True:
        reply = json.loads(await connection.recv())
        if reply.get("id") == "subscribe":
            break
        _raise_if_error(reply)
    _raise_if_error(reply)
    for channel, seq in (reply.get("result", {}).get("seq") or {}).items():
        resume.setdefault(channel, seq)


def _raise_if_error(reply: Mapping[str, Any]) -> None:
    error = reply.get("error")
    if isinstance(error, dict):
        raise EventStreamError(str(error.get("code")), str(error.get("message")))
