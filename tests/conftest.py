"""Shared fixtures: a coordinator app on SQLite and (when configured) PostgreSQL.

PostgreSQL tests run when ``AITBC_TEST_DATABASE_URL`` is set (CI sets it to the
server on 127.0.0.1:5432); each test gets an emptied ``public`` schema.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aitbc.api import create_app
from aitbc.services.runtime import Runtime
from aitbc.settings import Settings, to_async_url

ADMIN_KEY = "test-admin-key"
TEST_MINER_CONCURRENCY = 16
PG_URL = os.environ.get("AITBC_TEST_DATABASE_URL")
BACKENDS = ["sqlite", *(["postgresql"] if PG_URL else [])]


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 2, 13, 10, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def reset_postgres(url: str) -> None:
    """Drop everything in the public schema so each test starts empty."""
    import asyncpg

    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(plain)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


@dataclass
class Coordinator:
    """A running app, an HTTP client on it, and handles for tests."""

    app: FastAPI
    http: httpx.AsyncClient
    clock: FakeClock
    backend: str
    admin_headers: dict[str, str] = field(default_factory=lambda: {"X-Api-Key": ADMIN_KEY})

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def new_client(self) -> tuple[str, dict[str, str]]:
        response = await self.http.post("/v1/clients/register", json={"name": "test"})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["client_id"], {"X-Api-Key": body["api_key"]}

    async def new_miner(
        self, miner_id: str, models: list[str] | None = None, **extra: Any
    ) -> dict[str, str]:
        # Tests hold several jobs per miner unless they test the limit itself.
        payload = {
            "miner_id": miner_id,
            "capabilities": models or ["smollm2-135m"],
            "concurrency": TEST_MINER_CONCURRENCY,
            **extra,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        response = await self.http.post("/v1/miners/register", json=payload)
        assert response.status_code == 201, response.text
        return {"X-Api-Key": response.json()["api_key"]}

    async def submit(self, headers: dict[str, str], **job: Any) -> dict[str, Any]:
        payload = {"prompt": "Say hello", "model": "smollm2-135m", **job}
        response = await self.http.post("/v1/jobs", json=payload, headers=headers)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def claim(self, job_id: str, miner_id: str, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(
            f"/v1/jobs/{job_id}/claim", json={"miner_id": miner_id}, headers=headers
        )


def make_settings(tmp_path: Path, backend: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "admin_key": ADMIN_KEY,
        "rate_limit": "",
        "miner_rate_limit": "",
        # Enough for the dearest jobs tests submit; tests of payment set their own.
        "client_grant": 1_000_000,
        "database_url": to_async_url(PG_URL) if backend == "postgresql" and PG_URL else None,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the coordinator's settings."""
    return {}


@pytest.fixture
async def coordinator(
    tmp_path: Path, backend: str, settings_overrides: dict[str, Any]
) -> AsyncIterator[Coordinator]:
    if backend == "postgresql" and PG_URL:
        await reset_postgres(to_async_url(PG_URL))
    clock = FakeClock()
    app = create_app(
        make_settings(tmp_path, backend, **settings_overrides), clock=clock, run_sweeper=False
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Coordinator(app=app, http=http, clock=clock, backend=backend)
