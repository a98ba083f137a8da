"""Where the SDK and the command line find the coordinator and the API key.

In order: the arguments given, then ``AITBC_URL`` / ``AITBC_API_KEY``, then the config
file ``aitbc login`` writes (``$XDG_CONFIG_HOME/aitbc/config.json``, by default
``~/.config/aitbc/config.json``, mode 0600), then the default local coordinator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8001"


def config_path() -> Path:
    """The config file's path (it may not exist)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aitbc" / "config.json"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The config file's settings (``url``, ``api_key``), or none when it is missing
    or unreadable."""
    try:
        document = json.loads((path or config_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The coordinator URL (no trailing slash) and API key to use."""
    config: dict[str, Any] | None = None
    if base_url is None:
        base_url = os.environ.get("AITBC_URL")
    if base_url is None:
        config = load_config()
        base_url = str(config.get("url") or DEFAULT_URL)
    if api_key is None:
        api_key = os.environ.get("AITBC_API_KEY")
    if api_key is None:
        config = load_config() if config is None else config
        value = config.get("api_key")
        api_key = str(value) if value else None
    return base_url.rstrip("/"), api_key
