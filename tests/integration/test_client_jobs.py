"""Client side of jobs over the ASGI app: submit (both seed shapes), read, list, cancel,
download and history."""

from __future__ import annotations

from typing import Any

from tests.conftest import Coordinator
from tests.integration.helpers import (
    MODEL,
    assert_error,
    claim_ok,
    complete,
    get_job,
    ok,
)

DAY = 24 * 3600


# --- submission ------------------------------------------------------------------------


async def test_submit_prompt_shape(coordinator: Coordinator) -> None:
    client_id, client = await coordinator.new_client()
    response = await coordinator.http.post(
        "/v1/jobs",
        json={
            "prompt": "Write a haiku about GPUs",
            "model": MODEL,
            "params": {"max_tokens": 64, "temperature": 0.2, "top_p": 0.5, "seed": 7},
        },
        headers=client,
    )
    job = ok(response, 201)
    assert job["job_id"].startswith("job_")
    assert job["status"] == "pending"
    assert job["prompt"] == "Write a haiku about GPUs"
    assert job["model"] == MODEL
    assert job["params"]["max_tokens"] == 64
    assert job["params"]["temperature"] == 0.2
    assert job["params"]["top_p"] == 0.5
    assert job["params"]["seed"] == 7
    assert job["priority"] == "normal"
    assert job["timeout_seconds"] == 3600
    assert job["output_config"] == {"destination": "local", "format": "json"}
    assert job["client_id"] == client_id
    assert job["progress"] == 0
    assert job["attempts"] == 0
    assert job["miner_id"] is None
    assert job["result"] is None
    assert job["error"] is None
    assert job["error_code"] is None
    assert job["usage"] is None
    assert job["input_file_id"] is None
    assert job["created_at"] == "2026-02-13T10:00:00Z"
    assert job["started_at"] is None
    assert job["completed_at"] is None
    assert "estimated_cost" in job and "estimated_time_seconds" in job
    assert await get_job(coordinator, job["job_id"], client) == job


async def test_submit_input_shape(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    job = ok(
        await coordinator.http.post(
            "/v1/jobs",
            json={
                "model": MODEL,
                "input": "Summarise the plot of Hamlet",
                "output_config": {"destination": "local", "format": "text"},
                "requirements": {"gpu_type": "v100", "gpu_count": 2, "min_vram_gb": 16},
                "priority": "high",
                "timeout_seconds": 600,
            },
            headers=client,
        ),
        201,
    )
    assert job["status"] == "pending"
    assert job["prompt"] == "Summarise the plot of Hamlet"
    assert job["input_file_id"] is None
    assert job["output_config"] == {"destination": "local", "format": "text"}
    assert job["requirements"]["gpu_type"].lower() == "v100"
    assert job["requirements"]["gpu_count"] == 2
    assert job["requirements"]["min_vram_gb"] == 16
    assert job["priority"] == "high"
    assert job["timeout_seconds"] == 600
    fetched = await get_job(coordinator, job["job_id"], client)
    assert fetched["requirements"] == job["requirements"]
    assert fetched["priority"] == "high"


async def test_prompt_and_input_are_aliases(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    same = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi there", "input": "hi there"}, headers=client
    )
    job = ok(same, 201)
    assert job["prompt"] == "hi there"
    assert job["model"] == MODEL  # the configured default model

    different = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "one", "input": "two"}, headers=client
    )
    body = assert_error(different, 422, "validation_error")
    assert body["errors"]

    neither = await coordinator.http.post("/v1/jobs", json={"model": MODEL}, headers=client)
    body = assert_error(neither, 422, "validation_error")
    assert body["errors"]

    empty = await coordinator.http.post("/v1/jobs", json={"prompt": ""}, headers=client)
    assert_error(empty, 422, "validation_error")


async def test_unknown_fields_are_refused(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    typo = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi", "promt": "hi"}, headers=client
    )
    body = assert_error(typo, 422, "validation_error")
    assert any(error["field"] == "promt" for error in body["errors"]), body
    nested = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi", "requirements": {"cpu_cores": 8}}, headers=client
    )
    body = assert_error(nested, 422, "validation_error")
    assert any("cpu_cores" in error["field"] for error in body["errors"]), body
    listed = ok(await coordinator.http.get("/v1/jobs", headers=client))
    assert listed["total"] == 0


async def test_bad_json_body_is_400(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    response = await coordinator.http.post(
        "/v1/jobs",
        content=b'{"prompt": "hi",',
        headers={**client, "Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_json")


async def test_wrong_types_are_422_with_field_errors(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    response = await coordinator.http.post(
        "/v1/jobs",
        json={
            "prompt": "hi",
            "priority": "urgent",
            "timeout_seconds": "soon",
            "requirements": {"gpu_count": "two"},
            "params": {"max_tokens": -1},
        },
        headers=client,
    )
    body = assert_error(response, 422, "validation_error")
    fields = {error["field"] for error in body["errors"]}
    assert {
        "priority",
        "timeout_seconds",
        "requirements.gpu_count",
        "params.max_tokens",
    } <= fields, body
    for error in body["errors"]:
        assert set(error) >= {"field", "message"}, error
    # The human summary names the offending fields too.
    assert "timeout_seconds" in body["detail"]

    not_an_object = await coordinator.http.post("/v1/jobs", json=["hi"], headers=client)
    assert_error(not_an_object, 422, "validation_error")


async def test_timeout_above_the_maximum_is_refused(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    response = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi", "timeout_seconds": 86401}, headers=client
    )
    assert_error(response, 400, "timeout_too_long")


# --- reading and listing -----------------------------------------------------------------


async def test_get_unknown_job_is_404(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    response = await coordinator.http.get("/v1/jobs/job_doesnotexist", headers=client)
    assert_error(response, 404, "job_not_found")


async def test_list_envelope_paging_and_status_filter(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    ids: list[str] = []
    for index in range(5):
        ids.append((await coordinator.submit(client, prompt=f"job {index}"))["job_id"])
        coordinator.clock.advance(1)
    newest_first = list(reversed(ids))

    everything = ok(await coordinator.http.get("/v1/jobs", headers=client))
    assert set(everything) == {"jobs", "total", "has_more"}
    assert [job["job_id"] for job in everything["jobs"]] == newest_first
    assert everything["total"] == 5
    assert everything["has_more"] is False

    first = ok(await coordinator.http.get("/v1/jobs", params={"limit": 2}, headers=client))
    assert [job["job_id"] for job in first["jobs"]] == newest_first[:2]
    assert first["total"] == 5
    assert first["has_more"] is True

    middle = ok(
        await coordinator.http.get("/v1/jobs", params={"limit": 2, "offset": 2}, headers=client)
    )
    assert [job["job_id"] for job in middle["jobs"]] == newest_first[2:4]
    assert middle["has_more"] is True

    last = ok(
        await coordinator.http.get("/v1/jobs", params={"limit": 2, "offset": 4}, headers=client)
    )
    assert [job["job_id"] for job in last["jobs"]] == newest_first[4:]
    assert last["total"] == 5
    assert last["has_more"] is False

    beyond = ok(await coordinator.http.get("/v1/jobs", params={"offset": 50}, headers=client))
    assert beyond == {"jobs": [], "total": 5, "has_more": False}

    ok(await coordinator.http.delete(f"/v1/jobs/{ids[1]}", headers=client))
    ok(await coordinator.http.post(f"/v1/jobs/{ids[3]}/cancel", headers=client))
    cancelled = ok(
        await coordinator.http.get("/v1/jobs", params={"status": "cancelled"}, headers=client)
    )
    assert [job["job_id"] for job in cancelled["jobs"]] == [ids[3], ids[1]]
    assert cancelled["total"] == 2
    pending = ok(
        await coordinator.http.get(
            "/v1/jobs", params={"status": "pending", "limit": 1}, headers=client
        )
    )
    assert pending["total"] == 3
    assert pending["has_more"] is True
    assert [job["job_id"] for job in pending["jobs"]] == [ids[4]]
    completed = ok(
        await coordinator.http.get("/v1/jobs", params={"status": "completed"}, headers=client)
    )
    assert completed == {"jobs": [], "total": 0, "has_more": False}


async def test_list_refuses_bad_query_values(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    for params in ({"status": "done"}, {"limit": 0}, {"limit": 101}, {"offset": -1}):
        response = await coordinator.http.get("/v1/jobs", params=params, headers=client)
        assert_error(response, 422, "validation_error")
    ok(await coordinator.http.get("/v1/jobs", params={"limit": 100}, headers=client))


async def test_a_client_never_sees_another_clients_job(coordinator: Coordinator) -> None:
    _alice_id, alice = await coordinator.new_client()
    _bob_id, bob = await coordinator.new_client()
    job = await coordinator.submit(alice)
    job_id = job["job_id"]

    assert_error(await coordinator.http.get(f"/v1/jobs/{job_id}", headers=bob), 404)
    assert_error(await coordinator.http.delete(f"/v1/jobs/{job_id}", headers=bob), 404)
    assert_error(await coordinator.http.post(f"/v1/jobs/{job_id}/cancel", headers=bob), 404)
    assert_error(await coordinator.http.get(f"/v1/jobs/{job_id}/download", headers=bob), 404)
    listed = ok(await coordinator.http.get("/v1/jobs", headers=bob))
    assert listed == {"jobs": [], "total": 0, "has_more": False}
    history = ok(
        await coordinator.http.get(
            "/v1/jobs/history", params={"from": "2026-01-01", "to": "2026-12-31"}, headers=bob
        )
    )
    assert history["total"] == 0

    # Bob's attempts changed nothing for Alice.
    assert (await get_job(coordinator, job_id, alice))["status"] == "pending"
    assert ok(await coordinator.http.get("/v1/jobs", headers=alice))["total"] == 1


# --- cancelling ------------------------------------------------------------------------


async def test_cancel_with_delete_and_with_post(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    first = (await coordinator.submit(client))["job_id"]
    second = (await coordinator.submit(client))["job_id"]

    coordinator.clock.advance(5)
    cancelled = ok(await coordinator.http.delete(f"/v1/jobs/{first}", headers=client))
    assert cancelled["status"] == "cancelled"
    assert cancelled["error_code"] == "cancelled"
    assert cancelled["completed_at"] == "2026-02-13T10:00:05Z"
    assert_error(await coordinator.http.delete(f"/v1/jobs/{first}", headers=client), 409)
    assert_error(await coordinator.http.post(f"/v1/jobs/{first}/cancel", headers=client), 409)

    cancelled = ok(await coordinator.http.post(f"/v1/jobs/{second}/cancel", headers=client))
    assert cancelled["status"] == "cancelled"
    assert_error(await coordinator.http.post(f"/v1/jobs/{second}/cancel", headers=client), 409)
    assert_error(await coordinator.http.delete(f"/v1/jobs/{second}", headers=client), 409)

    assert (await get_job(coordinator, first, client))["status"] == "cancelled"
    assert_error(await coordinator.http.delete("/v1/jobs/job_nope", headers=client), 404)


async def test_cancel_a_completed_job_is_409(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")
    job = await coordinator.submit(client)
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    ok(await complete(coordinator, job["job_id"], "m1", miner))
    for response in (
        await coordinator.http.delete(f"/v1/jobs/{job['job_id']}", headers=client),
        await coordinator.http.post(f"/v1/jobs/{job['job_id']}/cancel", headers=client),
    ):
        assert_error(response, 409)
    assert (await get_job(coordinator, job["job_id"], client))["status"] == "completed"


# --- download --------------------------------------------------------------------------


async def _finished(
    coordinator: Coordinator, client: dict[str, str], miner: dict[str, str], fmt: str, text: str
) -> dict[str, Any]:
    job = await coordinator.submit(client, output_config={"format": fmt})
    assert_error(
        await coordinator.http.get(f"/v1/jobs/{job['job_id']}/download", headers=client),
        409,
        "result_not_ready",
    )
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    assert_error(
        await coordinator.http.get(f"/v1/jobs/{job['job_id']}/download", headers=client),
        409,
        "result_not_ready",
    )
    coordinator.clock.advance(3)
    usage = {"prompt_tokens": 4, "completion_tokens": 6}
    ok(await complete(coordinator, job["job_id"], "m1", miner, result=text, usage=usage))
    return job


async def test_download_json_and_text(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1")

    as_json = await _finished(coordinator, client, miner, "json", "Bonjour, monde")
    response = await coordinator.http.get(f"/v1/jobs/{as_json['job_id']}/download", headers=client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "attachment" in response.headers["content-disposition"]
    assert f"{as_json['job_id']}.json" in response.headers["content-disposition"]
    assert response.json() == {
        "job_id": as_json["job_id"],
        "model": MODEL,
        "result": "Bonjour, monde",
        "usage": {"prompt_tokens": 4, "completion_tokens": 6},
        "completed_at": "2026-02-13T10:00:03Z",
    }

    as_text = await _finished(coordinator, client, miner, "text", "line one\nligne deux é")
    response = await coordinator.http.get(f"/v1/jobs/{as_text['job_id']}/download", headers=client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert f"{as_text['job_id']}.txt" in response.headers["content-disposition"]
    assert response.text == "line one\nligne deux é"


async def test_download_of_a_cancelled_job_is_409(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client)
    ok(await coordinator.http.delete(f"/v1/jobs/{job['job_id']}", headers=client))
    response = await coordinator.http.get(f"/v1/jobs/{job['job_id']}/download", headers=client)
    assert_error(response, 409, "result_not_ready")


# --- history ---------------------------------------------------------------------------


async def test_history_by_inclusive_dates(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    _other_id, other = await coordinator.new_client()
    # 2026-02-13 10:00, 2026-02-13 23:59:59, 2026-02-14 10:00, 2026-02-15 10:00
    first = (await coordinator.submit(client))["job_id"]
    await coordinator.submit(other)
    coordinator.clock.advance(14 * 3600 - 1)
    late = (await coordinator.submit(client))["job_id"]
    coordinator.clock.advance(10 * 3600 + 1)
    second_day = (await coordinator.submit(client))["job_id"]
    coordinator.clock.advance(DAY)
    third_day = (await coordinator.submit(client))["job_id"]

    async def history(start: str, end: str, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = ok(
            await coordinator.http.get(
                "/v1/jobs/history", params={"from": start, "to": end, **params}, headers=client
            )
        )
        return body

    def ids(page: dict[str, Any]) -> list[str]:
        return [job["job_id"] for job in page["jobs"]]

    assert ids(await history("2026-02-13", "2026-02-13")) == [late, first]
    assert ids(await history("2026-02-14", "2026-02-14")) == [second_day]
    assert ids(await history("2026-02-13", "2026-02-14")) == [second_day, late, first]
    assert ids(await history("2026-02-14", "2026-02-15")) == [third_day, second_day]
    everything = await history("2026-02-01", "2026-02-28")
    assert everything["total"] == 4
    assert set(everything) == {"jobs", "total", "has_more"}
    assert (await history("2026-02-16", "2026-03-01"))["total"] == 0
    assert (await history("2026-02-12", "2026-02-12"))["total"] == 0
    paged = await history("2026-02-13", "2026-02-15", limit=3)
    assert paged["total"] == 4
    assert paged["has_more"] is True
    assert ids(paged) == [third_day, second_day, late]


async def test_history_refuses_bad_ranges(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    backwards = await coordinator.http.get(
        "/v1/jobs/history", params={"from": "2026-02-14", "to": "2026-02-13"}, headers=client
    )
    assert_error(backwards, 400, "invalid_date_range")
    for params in (
        {"to": "2026-02-13"},
        {"from": "2026-02-13"},
        {"from": "13/02/2026", "to": "2026-02-14"},
        {"from": "2026-02-30", "to": "2026-03-01"},
    ):
        response = await coordinator.http.get("/v1/jobs/history", params=params, headers=client)
        assert_error(response, 422, "validation_error")
