"""The one exception tree of AITBC.

Every failure the service can explain is an :class:`AITBCError` carrying a stable
snake_case ``error_code`` and a human ``detail``. Domain and service code raise
these; only the HTTP layer (``aitbc.api.errors``) turns them into status codes.
"""

from __future__ import annotations

from typing import Any


class AITBCError(Exception):
    """Base class: every error AITBC raises on purpose derives from this."""

    error_code = "error"

    def __init__(self, detail: str, *, error_code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if error_code is not None:
            self.error_code = error_code
        self.extra = extra


class InvalidRequest(AITBCError):
    """The request is well-formed JSON but asks for something that cannot be done."""

    error_code = "invalid_request"


class ValidationFailed(AITBCError):
    """A field has the wrong type or value (schema validation)."""

    error_code = "validation_error"


class AuthenticationRequired(AITBCError):
    """No API key, or one that is not known."""

    error_code = "unauthorized"


class PermissionDenied(AITBCError):
    """A known key whose role or owner does not allow this action."""

    error_code = "forbidden"


class NotFound(AITBCError):
    """An id that does not exist (or is not visible to the caller)."""

    error_code = "not_found"


class Conflict(AITBCError):
    """The resource is in a state that does not allow the action."""

    error_code = "conflict"


class Gone(AITBCError):
    """Something that existed and is no longer kept (pruned events, say)."""

    error_code = "gone"


class InvalidTransition(Conflict):
    """A job state-machine transition that the lifecycle forbids."""

    error_code = "invalid_transition"


class InsufficientFunds(AITBCError):
    """A payment or hold that is more than the payer's balance (HTTP 402)."""

    error_code = "insufficient_funds"


class NonceReused(Conflict):
    """A transfer whose nonce its sender used before: a replay."""

    error_code = "nonce_reused"


class PayloadTooLarge(AITBCError):
    """A request body, upload or prompt over the configured size limit."""

    error_code = "payload_too_large"


class RateLimited(AITBCError):
    """Too many requests for this key or address in the current window."""

    error_code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class ServiceUnavailable(AITBCError):
    """A dependency (the database, or any miner for a model) is not available now;
    ``retry_after_seconds``, when known, becomes the ``Retry-After`` header."""

    error_code = "service_unavailable"

    def __init__(
        self,
        detail: str,
        *,
        error_code: str | None = None,
        retry_after_seconds: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, error_code=error_code, **extra)
        self.retry_after_seconds = retry_after_seconds


class VerificationFailed(AITBCError):
    """A signature, key or signed object that does not check out.

    ``error_code`` names the specific reason (``bad_signature``, ``unknown_key``,
    ``malformed_signature``, ``not_canonical``, ``price_mismatch`` ...) so a verifier
    can tell a tampered receipt from one signed by a key it never pinned.
    """

    error_code = "verification_failed"
