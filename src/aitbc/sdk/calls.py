"""One API call described once (method, path, body, how to read the answer), sent by
either client of ``aitbc.sdk.client``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call: what to send and how to read a successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    body: Any = None
    # Safe to send again when the connection failed (reads, deletes).
    idempotent: bool = False


def model_parser(schema: type[Any]) -> Callable[[httpx.Response], Any]:
    """Read the answer as ``schema`` (a pydantic model)."""
    return lambda response: schema.model_validate_json(response.content)


def json_body(response: httpx.Response) -> Any:
    """Read the answer as plain JSON."""
    return response.json()
