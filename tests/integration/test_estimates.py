"""Cost and time estimates on a submitted job, from online miners' prices and history.

Expected figures are worked out by hand here (not with ``aitbc.domain.pricing``) so
the test is an independent check of the method described there:
units = ceil(len(prompt) / 4) + max_tokens; cost = units × median price / 1000,
in integer µAIT rounded half up; time = median queue wait + max_tokens / observed
completion tokens per second.
"""

from __future__ import annotations

from tests.conftest import Coordinator
from tests.integration.helpers import claim_ok, complete, heartbeat, ok

PROMPT_41_CHARS = "x" * 41  # ceil(41 / 4) = 11 estimated prompt tokens


async def test_no_online_miner_means_no_cost_estimate(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    job = await coordinator.submit(client, prompt=PROMPT_41_CHARS, params={"max_tokens": 90})
    assert job["estimated_cost"] is None
    assert job["estimated_time_seconds"] is None


async def test_cost_is_units_times_median_price_of_eligible_miners(
    coordinator: Coordinator,
) -> None:
    _client_id, client = await coordinator.new_client()
    await coordinator.new_miner("cheap", price=0.1)
    await coordinator.new_miner("middle", price="0.333333")
    await coordinator.new_miner("dear", price=5)
    await coordinator.new_miner("dearest", price=7)
    # Not eligible for smollm2 jobs: serves another model.
    await coordinator.new_miner("other-model", models=["llama3.2"], price=1000)
    # The only one eligible for jobs asking for an A100 (and eligible for any job).
    await coordinator.new_miner(
        "a100", price="0.05", gpu_info={"name": "NVIDIA A100-SXM4-80GB", "memory": "80GB"}
    )

    job = await coordinator.submit(
        client, prompt=PROMPT_41_CHARS, params={"max_tokens": 90}, max_price=1000
    )
    # units = 11 + 90 = 101; eligible prices 0.05, 0.1, 0.333333, 5, 7 -> median 0.333333.
    # 101 × 333_333 µAIT / 1000 = 33_666.633 µAIT -> 33_667 µAIT = 0.033667 AIT.
    assert job["estimated_cost"] == 0.033667
    fetched = ok(await coordinator.http.get(f"/v1/jobs/{job['job_id']}", headers=client))
    assert fetched["estimated_cost"] == 0.033667

    a100_job = await coordinator.submit(
        client,
        prompt=PROMPT_41_CHARS,
        params={"max_tokens": 90},
        requirements={"gpu_type": "a100"},
        max_price=1000,
    )
    # Only the A100 miner qualifies: 101 × 50_000 µAIT / 1000 = 5_050 µAIT.
    assert a100_job["estimated_cost"] == 0.00505

    llama_job = await coordinator.submit(
        client, model="llama3.2", prompt="abcd", params={"max_tokens": 999}, max_price=1000
    )
    # units = 1 + 999 = 1000 at 1000 AIT per 1000 units.
    assert llama_job["estimated_cost"] == 1000

    nobody = await coordinator.submit(client, model="mistral-7b")
    assert nobody["estimated_cost"] is None


async def test_silent_miners_stop_counting(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    one = await coordinator.new_miner("one", price=1)
    await coordinator.new_miner("two", price=2)
    await coordinator.new_miner("three", price=3)
    prompt = "y" * 40  # 10 prompt tokens
    job = await coordinator.submit(client, prompt=prompt, params={"max_tokens": 90}, max_price=3)
    assert job["estimated_cost"] == 0.2  # 100 units at the median of (1, 2, 3)

    coordinator.clock.advance(61)  # all silent for longer than miner_offline_after_seconds
    job = await coordinator.submit(client, prompt=prompt, params={"max_tokens": 90})
    assert job["estimated_cost"] is None

    await heartbeat(coordinator, "one", one)
    coordinator.clock.advance(6)  # past the estimate cache's refresh interval
    job = await coordinator.submit(client, prompt=prompt, params={"max_tokens": 90})
    assert job["estimated_cost"] == 0.1  # only "one" (1 AIT per 1000) is online


async def test_time_estimate_learns_from_completed_jobs(coordinator: Coordinator) -> None:
    _client_id, client = await coordinator.new_client()
    miner = await coordinator.new_miner("m1", price=1)
    first = await coordinator.submit(client, params={"max_tokens": 100})
    assert first["estimated_time_seconds"] is None

    coordinator.clock.advance(2)  # waited 2 s in the queue
    await claim_ok(coordinator, first["job_id"], "m1", miner)
    coordinator.clock.advance(10)  # ran 10 s for 50 completion tokens: 5 tokens/s
    usage = {"prompt_tokens": 3, "completion_tokens": 50}
    result = "word " * 50  # room for the 50 tokens it charges
    ok(await complete(coordinator, first["job_id"], "m1", miner, result=result, usage=usage))

    coordinator.clock.advance(6)  # past the estimate cache's refresh interval
    second = await coordinator.submit(client, params={"max_tokens": 100})
    # 2 s median wait + 100 tokens / 5 tokens per second.
    assert second["estimated_time_seconds"] == 22.0
    other_model = await coordinator.submit(client, model="llama3.2", params={"max_tokens": 100})
    assert other_model["estimated_time_seconds"] is None
