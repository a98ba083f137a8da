"""The SDK's exceptions: one class per family of the contract's ``error_code`` (by
HTTP status, as the coordinator maps them), all under :class:`APIError`.

``except aitbc.InsufficientFunds`` catches a 402 whatever its exact ``error_code``;
``exc.error_code`` and ``exc.detail`` carry the coordinator's words, ``exc.status``
the HTTP status, ``exc.response`` the raw response.
"""

from __future__ import annotations

import httpx


class APIError(Exception):
    """Base class of everything the SDK raises about a call."""

    def __init__(
        self,
        detail: str,
        *,
        error_code: str = "error",
        status: int | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status} {error_code}: {detail}" if status else detail)
        self.detail = detail
        self.error_code = error_code
        self.status = status
        self.response = response


class APIConnectionError(APIError):
    """The coordinator could not be reached (or the connection broke)."""


class APITimeoutError(APIConnectionError):
    """The coordinator did not answer in time."""


class APIStatusError(APIError):
    """The coordinator answered with an error status."""


class BadRequest(APIStatusError):
    """400: a request that cannot be done as asked."""


class AuthenticationError(APIStatusError):
    """401: no API key, or one the coordinator does not know (or revoked)."""


class InsufficientFunds(APIStatusError):
    """402: the balance cannot cover the job, transfer or order."""


class PermissionDenied(APIStatusError):
    """403: the key's role or owner does not allow this."""


class NotFound(APIStatusError):
    """404: no such thing, or not visible to this key."""


class Conflict(APIStatusError):
    """409: the resource's state does not allow it (already claimed, cancelled...)."""


class PayloadTooLarge(APIStatusError):
    """413: a body, upload or prompt over the coordinator's limit."""


class ValidationError(APIStatusError):
    """422: a field with the wrong type or value, or a signature that fails."""


class RateLimited(APIStatusError):
    """429: too many requests; ``retry_after`` seconds to wait (None if unsaid)."""

    retry_after: float | None = None


class ServiceUnavailable(APIStatusError):
    """503 (and other 5xx): try again later; ``retry_after`` when the server said."""

    retry_after: float | None = None


ERROR_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequest,
    401: AuthenticationError,
    402: InsufficientFunds,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number of seconds), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from(response: httpx.Response) -> APIStatusError:
    """The exception for an error response (either of the coordinator's shapes)."""
    detail, code = response.reason_phrase or "error", "http_error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):  # OpenAI's shape (the gateway's routes)
            detail = str(body["error"].get("message") or detail)
            code = str(body["error"].get("code") or code)
        else:
            detail = str(body.get("detail") or detail)
            code = str(body.get("error_code") or code)
    status = response.status_code
    kind = ERROR_BY_STATUS.get(status, ServiceUnavailable if status >= 500 else APIStatusError)
    error = kind(detail, error_code=code, status=status, response=response)
    if isinstance(error, RateLimited | ServiceUnavailable):
        error.retry_after = retry_after_seconds(response)
    return error
