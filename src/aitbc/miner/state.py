"""What a miner keeps on disk, all private (0600 files in a 0700 directory).

- ``miner.json``: its miner id, the API key the coordinator gave it, and that
  coordinator's URL, reused on restart;
- ``miner_ed25519.pem``: its signing key (the public half is registered);
- ``outbox/<job_id>.json``: finished results not yet acknowledged by the
  coordinator. A result is written here before it is first sent and removed only
  once the coordinator answered, so a crash or an outage never loses one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aitbc.domain.signing import SigningKey

IDENTITY_FILE = "miner.json"
KEY_FILE = "miner_ed25519.pem"
OUTBOX_DIR = "outbox"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this miner is at which coordinator."""

    miner_id: str
    api_key: str
    coordinator_url: str


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` with mode 0600."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class MinerState:
    """The miner's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.outbox_dir = data_dir / OUTBOX_DIR
        self.outbox_dir.mkdir(exist_ok=True, mode=0o700)

    def load_identity(self) -> Identity | None:
        """The saved identity, or None before the first registration."""
        path = self.data_dir / IDENTITY_FILE
        if not path.exists():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
        return Identity(**values)

    def save_identity(self, identity: Identity) -> None:
        """Keep the identity (the API key is shown only once by the coordinator)."""
        _write_private(self.data_dir / IDENTITY_FILE, json.dumps(asdict(identity)).encode())

    def signing_key(self, random_bytes: Callable[[int], bytes]) -> SigningKey:
        """The miner's Ed25519 key, created on first use."""
        path = self.data_dir / KEY_FILE
        if path.exists():
            return SigningKey.from_pem(path.read_bytes())
        key = SigningKey.from_seed(random_bytes(32))
        _write_private(path, key.to_pem())
        return key

    def keep(self, job_id: str, completion: dict[str, Any]) -> None:
        """Store a finished result until the coordinator acknowledges it."""
        _write_private(self.outbox_dir / f"{job_id}.json", json.dumps(completion).encode())

    def kept(self) -> dict[str, dict[str, Any]]:
        """Results waiting to be delivered, by job id."""
        pending: dict[str, dict[str, Any]] = {}
        for path in sorted(self.outbox_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                pending[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        return pending

    def delivered(self, job_id: str) -> None:
        """Forget a result the coordinator acknowledged (or refused for good)."""
        with contextlib.suppress(FileNotFoundError):
            (self.outbox_dir / f"{job_id}.json").unlink()
