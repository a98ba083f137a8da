"""Response classes for the API's hot paths."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONDocument(Response):
    """A JSON response from plain JSON values (a job document, a page of them).

    Routes that return one still declare their pydantic schema as ``response_model``
    for the OpenAPI document; FastAPI passes a ``Response`` through untouched.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialize with orjson (keys in insertion order, as the schema lists them)."""
        return orjson.dumps(content)
