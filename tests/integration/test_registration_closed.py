"""Closed self-registration: only an admin creates client keys and registers miners."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, ok

MINER = {"miner_id": "m1", "capabilities": ["smollm2-135m"]}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"open_client_registration": False, "open_miner_registration": False}


async def _admin_client(coordinator: Coordinator) -> dict[str, str]:
    created = ok(
        await coordinator.http.post(
            "/v1/admin/clients", json={"name": "acme"}, headers=coordinator.admin_headers
        ),
        201,
    )
    return {"X-Api-Key": created["api_key"]}


async def test_client_self_registration_is_refused(coordinator: Coordinator) -> None:
    response = await coordinator.http.post("/v1/clients/register", json={"name": "me"})
    assert_error(response, 403, "registration_closed")
    client = await _admin_client(coordinator)
    job = await coordinator.submit(client)
    assert job["status"] == "pending"
    # A client key does not reopen registration either.
    again = await coordinator.http.post("/v1/clients/register", json={}, headers=client)
    assert_error(again, 403, "registration_closed")


async def test_miner_self_registration_is_refused(coordinator: Coordinator) -> None:
    assert_error(
        await coordinator.http.post("/v1/miners/register", json=MINER), 403, "registration_closed"
    )
    registered = ok(
        await coordinator.http.post(
            "/v1/miners/register", json=MINER, headers=coordinator.admin_headers
        ),
        201,
    )
    assert registered["miner_id"] == "m1"
    miner = {"X-Api-Key": registered["api_key"]}
    ok(await coordinator.http.post("/v1/miners/m1/heartbeat", json={}, headers=miner))


async def test_a_client_key_cannot_register_miners(coordinator: Coordinator) -> None:
    client = await _admin_client(coordinator)
    response = await coordinator.http.post("/v1/miners/register", json=MINER, headers=client)
    assert_error(response, 403)
    miners = ok(await coordinator.http.get("/v1/admin/miners", headers=coordinator.admin_headers))
    assert miners == []
