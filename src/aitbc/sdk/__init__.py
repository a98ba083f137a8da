"""The AITBC client SDK: what a client or a third party needs without the server.

Today: offline receipt verification against pinned keys (``verify_receipt``), and
fetching, pinning and loading those keys. Talks HTTP only; never imports storage.
"""

from __future__ import annotations

from aitbc.domain.receipts import VerifiedReceipt
from aitbc.domain.signing import KeyRing, PublicKey
from aitbc.errors import VerificationFailed
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
    "KeyRing",
    "PublicKey",
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
