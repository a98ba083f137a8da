"""A job through its whole life over the ASGI app."""

from __future__ import annotations

from tests.conftest import Coordinator


async def test_job_lifecycle(coordinator: Coordinator) -> None:
    http = coordinator.http
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.5)
    job = await coordinator.submit(client)
    assert job["status"] == "pending"
    offered = await http.get("/v1/jobs/available", params={"miner_id": "m1"}, headers=miner)
    assert offered.status_code == 200, offered.text
    assert offered.json()["job_id"] == job["job_id"]
    claimed = await coordinator.claim(job["job_id"], "m1", miner)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["status"] == "running"
    done = await http.post(
        f"/v1/jobs/{job['job_id']}/complete",
        json={
            "miner_id": "m1",
            "result": "Hello!",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        },
        headers=miner,
    )
    assert done.status_code == 200, done.text
    fetched = await http.get(f"/v1/jobs/{job['job_id']}", headers=client)
    assert fetched.json()["status"] == "completed"
    assert fetched.json()["result"] == "Hello!"
