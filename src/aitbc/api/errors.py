"""The only place errors become HTTP status codes: in the ``{detail, error_code}`` shape,
or, on the OpenAI-compatible routes (DESIGN.md section 9), in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with our ``error_code`` as ``code``
(what OpenAI's client libraries parse into their exceptions)."""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aitbc import errors
from aitbc.openai_schemas import openai_error_body

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.AITBCError], int] = {
    errors.InvalidRequest: 400,
    errors.AuthenticationRequired: 401,
    errors.InsufficientFunds: 402,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.PayloadTooLarge: 413,
    errors.ValidationFailed: 422,
    errors.VerificationFailed: 422,
    errors.RateLimited: 429,
    errors.ServiceUnavailable: 503,
}

CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    402: "insufficient_funds",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def status_for(error: errors.AITBCError) -> int:
    """The HTTP status of an AITBC error: the closest mapped class in its ancestry."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


# The routes that answer in OpenAI's shapes, errors included.
OPENAI_PATHS = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions"})


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes."""
    return path in OPENAI_PATHS


def error_body(
    path: str, status: int, detail: str, error_code: str, **extra: Any
) -> dict[str, Any]:
    """The error body for a request to ``path``: OpenAI's shape on its routes."""
    if is_openai_path(path):
        param = extra.get("param")
        return openai_error_body(
            status, detail, error_code, param if isinstance(param, str) else None
        )
    return {"detail": detail, "error_code": error_code, **extra}


def error_response(
    status: int,
    detail: str,
    error_code: str,
    headers: dict[str, str] | None = None,
    path: str = "",
    **extra: Any,
) -> JSONResponse:
    """A JSON error body in the contract's shape (OpenAI's on its routes)."""
    return JSONResponse(
        error_body(path, status, detail, error_code, **extra), status_code=status, headers=headers
    )


async def _aitbc_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(errors.AITBCError, exc)
    headers = None
    if isinstance(exc, errors.RateLimited | errors.ServiceUnavailable) and exc.retry_after_seconds:
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    return error_response(
        status_for(exc), exc.detail, exc.error_code, headers, request.url.path, **exc.extra
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    problems = exc.errors()
    path = request.url.path
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return error_response(400, "request body is not valid JSON", "invalid_json", path=path)
    details = [
        {
            "field": _field_path(tuple(p.get("loc", ()))),
            "message": p.get("msg", ""),
            "type": p.get("type", ""),
        }
        for p in problems
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    if is_openai_path(path):  # OpenAI answers a bad parameter with 400, naming it
        param = details[0]["field"] if details else None
        return error_response(
            400, summary or "invalid request", "invalid_value", path=path, param=param
        )
    return error_response(422, summary or "invalid request", "validation_error", errors=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    code = CODE_BY_STATUS.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, detail, code, dict(exc.headers or {}), request.url.path)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error", "internal_error", path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(errors.AITBCError, _aitbc_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
