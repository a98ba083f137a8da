"""AITBC: a marketplace for AI compute.

Clients submit AI jobs and pay in AIT; miners run real models; the coordinator
(:func:`aitbc.api.create_app`) matches them and records every step. From Python,
``aitbc.Client`` and ``aitbc.AsyncClient`` (:mod:`aitbc.sdk`) call its API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from aitbc.sdk.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    """``aitbc.Client`` and ``aitbc.AsyncClient``, imported on first use (the server
    and the command line do not pay for the SDK's imports)."""
    if name in ("Client", "AsyncClient"):
        from aitbc.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'aitbc' has no attribute {name!r}")
