"""Rate limits per API key (per address without a key), their headers, and /health."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aitbc import __version__
from aitbc.api import create_app
from tests.conftest import Coordinator, make_settings
from tests.e2e.processes import free_port
from tests.integration.helpers import assert_error, ok

LIMIT = 5


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"rate_limit": f"{LIMIT}/minute", "miner_rate_limit": ""}


def _limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["X-RateLimit-Limit"]),
        int(headers["X-RateLimit-Remaining"]),
        int(headers["X-RateLimit-Reset"]),
    )


async def test_the_sixth_request_in_a_minute_is_429(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    remaining_seen: list[int] = []
    for _ in range(LIMIT):
        response = await coordinator.http.get("/v1/jobs", headers=client)
        assert response.status_code == 200, response.text
        limit, remaining, reset = _limit_headers(response)
        assert limit == LIMIT
        assert time.time() - 1 <= reset <= time.time() + 61
        remaining_seen.append(remaining)
    assert remaining_seen == [4, 3, 2, 1, 0]

    refused = await coordinator.http.get("/v1/jobs", headers=client)
    assert_error(refused, 429, "rate_limited")
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    limit, remaining, _reset = _limit_headers(refused)
    assert (limit, remaining) == (LIMIT, 0)
    # Refused requests do nothing: a refused submission creates no job.
    submit = await coordinator.http.post("/v1/jobs", json={"prompt": "hi"}, headers=client)
    assert_error(submit, 429, "rate_limited")
    jobs = ok(await coordinator.http.get("/v1/admin/jobs", headers=coordinator.admin_headers))
    assert jobs["total"] == 0


async def test_each_key_has_its_own_budget(coordinator: Coordinator) -> None:
    _alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    for _ in range(LIMIT):
        ok(await coordinator.http.get("/v1/jobs", headers=alice))
    assert_error(await coordinator.http.get("/v1/jobs", headers=alice), 429, "rate_limited")
    response = await coordinator.http.get("/v1/jobs", headers=bob)
    assert response.status_code == 200, response.text
    assert _limit_headers(response)[1] == LIMIT - 1


async def test_error_responses_carry_the_headers_and_count(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    missing = await coordinator.http.get("/v1/jobs/job_nope", headers=client)
    assert_error(missing, 404)
    assert _limit_headers(missing)[:2] == (LIMIT, LIMIT - 1)


async def test_requests_without_a_key_are_limited_by_address(coordinator: Coordinator) -> None:
    # Two registrations and three refused reads spend this address's five.
    await coordinator.new_client()
    await coordinator.new_client()
    for _ in range(3):
        assert_error(await coordinator.http.get("/v1/jobs"), 401, "missing_api_key")
    refused = await coordinator.http.post("/v1/clients/register", json={})
    assert_error(refused, 429, "rate_limited")
    assert "Retry-After" in refused.headers


async def test_admin_miners_and_health_are_not_held_to_the_client_limit(
    coordinator: Coordinator,
) -> None:
    miner = await coordinator.new_miner("m1")
    for _ in range(LIMIT + 3):
        ok(await coordinator.http.get("/v1/admin/stats", headers=coordinator.admin_headers))
        ok(await coordinator.http.post("/v1/miners/m1/heartbeat", json={}, headers=miner))
        ok(await coordinator.http.get("/health"))


async def test_health(coordinator: Coordinator) -> None:
    response = await coordinator.http.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "version": __version__,
        "database": "ok",
        "rate_limits": {"storage": "memory", "degraded": False, "detail": None},
    }


async def _health_of(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    app = create_app(make_settings(tmp_path, "sqlite", **overrides), run_sweeper=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_redis_password_never_shows_in_health(tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    body = await _health_of(tmp_path, rate_limit="5/minute", rate_limit_storage_url=url)
    assert body["status"] == "ok"
    assert body["rate_limits"]["degraded"] is True
    assert "redis://***@127.0.0.1:" in body["rate_limits"]["detail"]
    assert "hunter2" not in json.dumps(body)


async def test_the_explicit_storage_url_wins_over_redis_url(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    body = await _health_of(
        tmp_path, rate_limit_storage_url=closed, redis_url="redis://127.0.0.1:6379/0"
    )
    assert body["rate_limits"]["degraded"] is True
    assert closed in body["rate_limits"]["detail"]


def test_an_unsupported_rate_limit_storage_is_refused_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite", rate_limit_storage_url="memcached://127.0.0.1")
    with pytest.raises(ValueError, match=r"use memory:// or redis://"):
        create_app(settings)


async def test_anonymous_explorer_reads_have_their_own_budget(tmp_path: Path) -> None:
    app = create_app(
        make_settings(tmp_path, "sqlite", rate_limit="2/minute", explorer_rate_limit="5/minute"),
        run_sweeper=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            explorer = [(await http.get("/v1/explorer/blocks")).status_code for _ in range(6)]
            other = [(await http.get("/v1/keys")).status_code for _ in range(3)]
    assert explorer == [200] * 5 + [429]
    assert other == [200, 200, 429]
