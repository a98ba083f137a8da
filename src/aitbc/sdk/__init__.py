"""The AITBC client SDK: what a client or a third party needs without the server.

``Client`` / ``AsyncClient`` (the coordinator's API, typed, with retries), their
exceptions, and offline receipt verification against pinned keys
(``verify_receipt``), with fetching, pinning and loading those keys. Talks HTTP
only; never imports storage.
"""

from __future__ import annotations

from aitbc.domain.receipts import VerifiedReceipt
from aitbc.domain.signing import KeyRing, PublicKey
from aitbc.errors import VerificationFailed
from aitbc.sdk.client import AsyncClient, Client, StreamEvent, StreamRestarted
from aitbc.sdk.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequest,
    Conflict,
    InsufficientFunds,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    ValidationError,
)
from aitbc.sdk.events import Event, EventStreamError
from aitbc.sdk.receipts import (
    default_keyring_path,
    fetch_keys,
    load_keyring,
    load_receipt,
    pin_keys,
    save_keyring,
    verify_receipt,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "Event",
    "EventStreamError",
    "InsufficientFunds",
    "KeyRing",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PublicKey",
    "RateLimited",
    "ServiceUnavailable",
    "StreamEvent",
    "StreamRestarted",
    "ValidationError",
    "VerificationFailed",
    "VerifiedReceipt",
    "default_keyring_path",
    "fetch_keys",
    "load_keyring",
    "load_receipt",
    "pin_keys",
    "save_keyring",
    "verify_receipt",
]
