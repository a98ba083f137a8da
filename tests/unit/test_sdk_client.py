"""The SDK's sending rules, against a scripted transport: retries on 429 and 503 as
``Retry-After`` says, no re-sent writes, errors by family, and where the URL and
key come from."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import aitbc
from aitbc.sdk import (
    APIConnectionError,
    AuthenticationError,
    InsufficientFunds,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from aitbc.sdk.config import resolve

BALANCE = {"address": "c1", "balance": 12.5, "held": 0.25}


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    """A transport answering in turn; the list records each request's method+path."""
    seen: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def client_on(transport: httpx.MockTransport, **options: object) -> aitbc.Client:
    return aitbc.Client(
        "http://coordinator", api_key="k", http_client=httpx.Client(transport=transport),
        **options,  # type: ignore[arg-type]
    )  # fmt: skip


def error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": f"{code}!", "error_code": code}, headers=headers)


def test_429_and_503_are_retried_after_what_retry_after_says() -> None:
    transport, seen = scripted(
        error(429, "rate_limited", **{"Retry-After": "0"}),
        error(503, "database_unavailable", **{"Retry-After": "0"}),
        httpx.Response(200, json=BALANCE),
    )
    with client_on(transport) as client:
        balance = client.accounts.me()
    assert (balance.balance, balance.held) == (12.5, 0.25)
    assert seen == ["GET /v1/accounts/me"] * 3


def test_retries_stop_at_max_retries_with_the_last_error() -> None:
    transport, seen = scripted(*[error(503, "database_unavailable", **{"Retry-After": "0"})] * 2)
    with client_on(transport, max_retries=1) as client, pytest.raises(ServiceUnavailable) as info:
        client.accounts.me()
    assert info.value.error_code == "database_unavailable" and info.value.status == 503
    assert info.value.retry_after == 0
    assert len(seen) == 2


def test_a_write_whose_fate_is_unknown_is_not_sent_again_but_a_read_is() -> None:
    transport, seen = scripted(httpx.ConnectError("refused"))
    with client_on(transport) as client, pytest.raises(APIConnectionError):
        client.jobs.submit("Say hello")
    assert seen == ["POST /v1/jobs"]
    transport, seen = scripted(httpx.ConnectError("refused"), httpx.Response(200, json=BALANCE))
    with client_on(transport) as client:
        assert client.accounts.me().address == "c1"
    assert seen == ["GET /v1/accounts/me"] * 2


@pytest.mark.parametrize(
    ("response", "kind", "code"),
    [
        (error(402, "insufficient_funds"), InsufficientFunds, "insufficient_funds"),
        (error(404, "job_not_found"), NotFound, "job_not_found"),
        (error(401, "invalid_api_key"), AuthenticationError, "invalid_api_key"),
        (
            httpx.Response(
                429, json={"error": {"message": "slow down", "type": "x", "code": "rate_limited"}}
            ),
            RateLimited,
            "rate_limited",
        ),
    ],
)
def test_errors_come_as_their_family_with_the_coordinators_words(
    response: httpx.Response, kind: type[Exception], code: str
) -> None:
    transport, _seen = scripted(response)
    with client_on(transport, max_retries=0) as client, pytest.raises(kind) as info:
        client.jobs.get("job_x")
    assert getattr(info.value, "error_code", None) == code


def test_submit_sends_the_job_request_shape() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return error(402, "insufficient_funds")

    client = aitbc.Client(
        "http://c", api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with client, pytest.raises(InsufficientFunds):
        client.jobs.submit("Hi", model="m", max_tokens=5, temperature=0, max_price="0.5")
    assert bodies == [
        {
            "model": "m",
            "max_price": "0.5",
            "prompt": "Hi",
            "params": {"max_tokens": 5, "temperature": 0},
        }
    ]


def test_the_url_and_key_come_from_arguments_then_environment_then_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("AITBC_URL", raising=False)
    monkeypatch.delenv("AITBC_API_KEY", raising=False)
    assert resolve(None, None) == ("http://127.0.0.1:8001", None)
    config = tmp_path / "aitbc" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"url": "http://from-file:1/", "api_key": "file-key"}))
    assert resolve(None, None) == ("http://from-file:1", "file-key")
    monkeypatch.setenv("AITBC_URL", "http://from-env:2")
    monkeypatch.setenv("AITBC_API_KEY", "env-key")
    assert resolve(None, None) == ("http://from-env:2", "env-key")
    assert resolve("http://given:3", "given-key") == ("http://given:3", "given-key")


def test_aitbc_exposes_the_clients_lazily() -> None:
    factory: Callable[..., object] = aitbc.AsyncClient
    assert factory.__name__ == "AsyncClient"
    with pytest.raises(AttributeError):
        aitbc.Nope  # type: ignore[attr-defined]  # noqa: B018
