"""A job's price is bound when it is submitted (issue 13, item 1).

A client's ``max_price`` (or the configured default) decides which miners are
offered a job and may claim it, so a miner cannot raise its price after seeing the
job; the receipt's ``unit_price`` never exceeds it, and the prompt tokens a receipt
may charge are bounded by the template allowance the miner declared before it
claimed.
"""

from __future__ import annotations

from typing import Any

import pytest

from aitbc.domain.jobs import DEFAULT_TEMPLATE_TOKENS
from tests.conftest import Coordinator
from tests.integration.helpers import assert_error, claim_ok, complete, get_job, ok, poll

MODEL = "smollm2-135m"


async def reregister(
    coordinator: Coordinator, miner_id: str, headers: dict[str, str], **fields: Any
) -> None:
    response = await coordinator.http.post(
        "/v1/miners/register",
        json={"miner_id": miner_id, "capabilities": [MODEL], "concurrency": 4, **fields},
        headers=headers,
    )
    assert response.status_code == 204, response.text


async def test_a_miner_cannot_raise_its_price_after_seeing_the_job(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.02")
    job = await coordinator.submit(client, max_price="0.05")
    assert job["max_price"] == 0.05
    # The miner sees the job, then posts a ruinous price before claiming it.
    offered = await poll(coordinator, "m1", miner)
    assert offered is not None and offered["job_id"] == job["job_id"]
    await reregister(coordinator, "m1", miner, price=1_000_000_000)
    assert_error(await coordinator.claim(job["job_id"], "m1", miner), 403, "price_above_max_price")
    # Nor is it offered the job any more, which stays pending for honest miners.
    assert await poll(coordinator, "m1", miner) is None
    assert (await get_job(coordinator, job["job_id"], client))["status"] == "pending"
    honest = await coordinator.new_miner("honest", price="0.05")
    offered = await poll(coordinator, "honest", honest)
    assert offered is not None and offered["job_id"] == job["job_id"]
    await claim_ok(coordinator, job["job_id"], "honest", honest)
    receipt = ok(await complete(coordinator, job["job_id"], "honest", honest))
    assert receipt["unit_price"] == 0.05


async def test_a_price_change_applies_only_to_jobs_claimed_after_it(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.01")
    first = await coordinator.submit(client, max_price="0.5")
    await claim_ok(coordinator, first["job_id"], "m1", miner)
    await reregister(coordinator, "m1", miner, price="0.4")
    second = await coordinator.submit(client, max_price="0.5")
    await claim_ok(coordinator, second["job_id"], "m1", miner)
    first_receipt = ok(await complete(coordinator, first["job_id"], "m1", miner))
    second_receipt = ok(await complete(coordinator, second["job_id"], "m1", miner))
    assert first_receipt["unit_price"] == 0.01
    assert second_receipt["unit_price"] == 0.4


async def test_without_max_price_the_configured_default_applies(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    dear = await coordinator.new_miner("dear", price="1.000001")
    job = await coordinator.submit(client)
    assert job["max_price"] == 1.0  # settings.default_max_price
    assert await poll(coordinator, "dear", dear) is None
    assert_error(await coordinator.claim(job["job_id"], "dear", dear), 403, "price_above_max_price")
    # The estimate counts only miners the job may be given to.
    assert job["estimated_cost"] is None


class TestConfiguredDefault:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"default_max_price": "0.002"}

    async def test_the_default_max_price_is_a_setting(self, coordinator: Coordinator) -> None:
        _client_id, client = await coordinator.new_client()
        job = await coordinator.submit(client)
        assert job["max_price"] == 0.002
        explicit = await coordinator.submit(client, max_price=3)
        assert explicit["max_price"] == 3


@pytest.mark.parametrize("value", [-1, "0.0000001", 10**9 + 1, "NaN", "a lot"])
async def test_max_price_must_be_an_amount(coordinator: Coordinator, value: Any) -> None:
    _client_id, client = await coordinator.new_client()
    response = await coordinator.http.post(
        "/v1/jobs", json={"prompt": "hi", "model": MODEL, "max_price": value}, headers=client
    )
    assert_error(response, 422, "validation_error")


async def test_prompt_tokens_are_bounded_by_the_declared_template(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.01", template_tokens={MODEL: 30})
    job = await coordinator.submit(client, prompt="hi")
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    # Declaring a bigger template after the claim changes nothing for this job.
    await reregister(coordinator, "m1", miner, price="0.01", template_tokens={MODEL: 256})
    # A 2-byte prompt: at most 2 + 30 prompt tokens (it was 2 + 512 before).
    too_many = await complete(
        coordinator, job["job_id"], "m1", miner, usage={"prompt_tokens": 33, "completion_tokens": 3}
    )
    assert_error(too_many, 422, "usage_exceeds_prompt")
    receipt = ok(
        await complete(
            coordinator,
            job["job_id"],
            "m1",
            miner,
            usage={"prompt_tokens": 32, "completion_tokens": 3},
        )
    )
    assert receipt["usage"]["prompt_tokens"] == 32


async def test_an_undeclared_template_gets_the_default_allowance(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price="0.01")
    job = await coordinator.submit(client, prompt="hi")
    await claim_ok(coordinator, job["job_id"], "m1", miner)
    bound = 2 + DEFAULT_TEMPLATE_TOKENS
    usage = {"prompt_tokens": bound + 1, "completion_tokens": 3}
    assert_error(
        await complete(coordinator, job["job_id"], "m1", miner, usage=usage),
        422,
        "usage_exceeds_prompt",
    )
    usage["prompt_tokens"] = bound
    ok(await complete(coordinator, job["job_id"], "m1", miner, usage=usage))


@pytest.mark.parametrize("template_tokens", [{MODEL: -1}, {MODEL: 257}, {MODEL: "many"}, {"": 3}])
async def test_template_tokens_are_bounded(
    coordinator: Coordinator, template_tokens: dict[str, Any]
) -> None:
    response = await coordinator.http.post(
        "/v1/miners/register",
        json={"miner_id": "m1", "capabilities": [MODEL], "template_tokens": template_tokens},
    )
    assert_error(response, 422, "validation_error")
