"""Small helpers shared by the integration tests (the fixtures live in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import httpx

from aitbc.services.sweeper import sweep_once
from tests.conftest import Coordinator

MODEL = "smollm2-135m"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Check an error response: its status, and a body of exactly detail + error_code
    (plus an optional ``errors`` list), both non-empty strings."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) in ({"detail", "error_code"}, {"detail", "error_code", "errors"}), body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["error_code"], str) and body["error_code"], body
    if "errors" in body:
        assert isinstance(body["errors"], list), body
    if code is not None:
        assert body["error_code"] == code, body
    return body


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have ``status``."""
    assert response.status_code == status, response.text
    return response.json()


async def sweep(coordinator: Coordinator) -> dict[str, int]:
    """One sweeper pass at the fake clock's current time."""
    return await sweep_once(coordinator.runtime)


async def get_job(coordinator: Coordinator, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = ok(await coordinator.http.get(f"/v1/jobs/{job_id}", headers=headers))
    return body


async def poll(
    coordinator: Coordinator, miner_id: str, headers: dict[str, str], wait: float = 0
) -> dict[str, Any] | None:
    """One ``GET /v1/jobs/available`` for ``miner_id``: the offered job or None."""
    response = await coordinator.http.get(
        "/v1/jobs/available", params={"miner_id": miner_id, "wait": wait}, headers=headers
    )
    body: dict[str, Any] | None = ok(response)
    return body


async def claim_ok(
    coordinator: Coordinator, job_id: str, miner_id: str, headers: dict[str, str]
) -> dict[str, Any]:
    body: dict[str, Any] = ok(await coordinator.claim(job_id, miner_id, headers))
    assert body["status"] == "running"
    assert body["miner_id"] == miner_id
    return body


async def complete(
    coordinator: Coordinator,
    job_id: str,
    miner_id: str,
    headers: dict[str, str],
    result: str = "Hello!",
    usage: dict[str, int] | None = None,
) -> httpx.Response:
    payload: dict[str, Any] = {"miner_id": miner_id, "result": result}
    payload["usage"] = usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": 2}
    return await coordinator.http.post(f"/v1/jobs/{job_id}/complete", json=payload, headers=headers)


async def progress(
    coordinator: Coordinator,
    job_id: str,
    miner_id: str,
    headers: dict[str, str],
    value: int,
    stream: tuple[int, str] | None = None,
) -> httpx.Response:
    """A progress report; ``stream``: ``(offset, delta)``, text of the job's output."""
    payload: dict[str, Any] = {"miner_id": miner_id, "progress": value}
    if stream is not None:
        payload["offset"], payload["delta"] = stream
    return await coordinator.http.post(f"/v1/jobs/{job_id}/progress", json=payload, headers=headers)


async def fail(
    coordinator: Coordinator,
    job_id: str,
    miner_id: str,
    headers: dict[str, str],
    *,
    retryable: bool,
    error: str = "CUDA out of memory",
) -> httpx.Response:
    return await coordinator.http.post(
        f"/v1/jobs/{job_id}/fail",
        json={"miner_id": miner_id, "error": error, "retryable": retryable},
        headers=headers,
    )


async def heartbeat(
    coordinator: Coordinator,
    miner_id: str,
    headers: dict[str, str],
    running_jobs: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = dict(extra)
    if running_jobs is not None:  # omitted: renews none (as an empty list)
        payload["running_jobs"] = running_jobs
    body: dict[str, Any] = ok(
        await coordinator.http.post(
            f"/v1/miners/{miner_id}/heartbeat", json=payload, headers=headers
        )
    )
    return body


async def running_job(
    coordinator: Coordinator,
    client: dict[str, str],
    miner_id: str,
    miner: dict[str, str],
    **job: Any,
) -> dict[str, Any]:
    """Submit a job as ``client`` and claim it as ``miner_id``."""
    submitted = await coordinator.submit(client, **job)
    return await claim_ok(coordinator, submitted["job_id"], miner_id, miner)
