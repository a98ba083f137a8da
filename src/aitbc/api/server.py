"""How uvicorn serves the coordinator: the options ``aitbc serve`` and ``aitbc demo``
share.

Forwarded headers: uvicorn believes ``X-Forwarded-For`` / ``X-Forwarded-Proto`` from
127.0.0.1 unless told otherwise, so any local process (or a proxy that passes the
header on unchecked) could choose the address rate limits are counted by. Here they are
believed only from the proxies named in ``forwarded_allow_ips``, and not at all when it
is empty (the default).
"""

from __future__ import annotations

from typing import Any

from aitbc.settings import Settings

WS_MAX_MESSAGE_BYTES = 64 * 1024


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` from ``settings``."""
    trusted = settings.forwarded_allow_ips.strip()
    return {
        "proxy_headers": bool(trusted),
        # Never None: uvicorn would then read FORWARDED_ALLOW_IPS or trust 127.0.0.1.
        "forwarded_allow_ips": trusted or "",
        # /ws on the websockets library's current (sans-I/O) implementation: server
        # pings (a peer that stops answering is dropped) and small frames (a
        # subscriber sends only short requests).
        "ws": "websockets-sansio",
        "ws_ping_interval": settings.ws_ping_interval_seconds or None,
        "ws_ping_timeout": settings.ws_ping_timeout_seconds,
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
    }
