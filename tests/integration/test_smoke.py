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


async def test_job_documents_are_exactly_the_job_schema(coordinator: Coordinator) -> None:
    """Job responses are built as plain JSON for speed: each must validate against the
    documented ``Job`` schema and be exactly what pydantic itself would serialize."""
    from aitbc.schemas import Job, JobList, Receipt

    http = coordinator.http
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=0.25, gpu_info={"name": "A100", "memory": 80})
    submitted = await coordinator.submit(
        client,
        requirements={"gpu_type": "a100", "gpu_count": 1, "min_vram_gb": 40},
        output_config={"format": "text"},
        priority="high",
        params={"max_tokens": 16, "stop": ["\n"], "seed": 7},
    )
    job_id = submitted["job_id"]
    offered = (
        await http.get("/v1/jobs/available", params={"miner_id": "m1"}, headers=miner)
    ).json()
    claimed = (await coordinator.claim(job_id, "m1", miner)).json()
    coordinator.clock.advance(1.5)
    receipt = (
        await http.post(
            f"/v1/jobs/{job_id}/complete",
            json={
                "miner_id": "m1",
                "result": "hi",
                "usage": {"prompt_tokens": 2, "completion_tokens": 1},
            },
            headers=miner,
        )
    ).json()
    assert Receipt.model_validate(receipt).model_dump(mode="json", exclude_none=True) == receipt
    completed = fetched = (await http.get(f"/v1/jobs/{job_id}", headers=client)).json()
    for document in (submitted, offered, claimed, fetched):
        assert Job.model_validate(document).model_dump(mode="json") == document
    assert completed["usage"] == {"prompt_tokens": 2, "completion_tokens": 1}
    assert completed["completed_at"].endswith("Z") and completed["estimated_cost"] is not None
    listing = (await http.get("/v1/jobs", headers=client)).json()
    assert JobList.model_validate(listing).model_dump(mode="json") == listing
