"""The OpenAI-compatible gateway through the official ``openai`` client, on both
databases, with a miner played by the test (claims and completes over HTTP); the
real miner on the bundled model is in tests/e2e/test_openai_gateway.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Coordinator
from tests.integration.helpers import claim_ok, complete, ok, poll, progress

MODEL = "smollm2-135m"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"gateway_queue_seconds": 1.0, "rate_limit": "1000/minute"}


@pytest.fixture
async def api(coordinator: Coordinator) -> AsyncIterator[tuple[openai.AsyncOpenAI, str]]:
    """An AsyncOpenAI client of a new client account, and its API key."""
    _client_id, headers = await coordinator.new_client()
    key = headers["X-Api-Key"]
    client = openai.AsyncOpenAI(
        api_key=key,
        base_url="http://testserver/v1",
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=coordinator.app)),
        max_retries=0,
    )
    async with client:
        yield client, key


async def serve_one(
    coordinator: Coordinator, miner_id: str, miner: dict[str, str], result: str, **usage: int
) -> dict[str, Any]:
    """Play the miner for the next job: wait for it, claim it, stream two pieces of
    ``result`` with progress reports, complete it. The job as claimed."""
    job = None
    while job is None:
        job = await poll(coordinator, miner_id, miner, wait=0.2)
    claimed = await claim_ok(coordinator, job["job_id"], miner_id, miner)
    half = len(result) // 2
    for offset, piece in ((0, result[:half]), (half, result[half:])):
        if piece:
            ok(await progress(coordinator, job["job_id"], miner_id, miner, 50, (offset, piece)))
    counts = usage or {"prompt_tokens": 3, "completion_tokens": 2}
    ok(await complete(coordinator, job["job_id"], miner_id, miner, result=result, usage=counts))
    return claimed


async def test_models_lists_what_online_miners_serve_with_the_lowest_price(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _key = api
    assert (await client.models.list()).data == []
    await coordinator.new_miner("cheap", price=0.01)
    await coordinator.new_miner("dear", price=0.05)
    await coordinator.new_miner("other", models=["tinyllama"], price=0.2)
    coordinator.runtime.estimates.invalidate()
    models = {model.id: model for model in (await client.models.list()).data}
    assert set(models) == {MODEL, "tinyllama"}
    assert models[MODEL].owned_by == "aitbc"
    assert models[MODEL].model_extra == {"price": 0.01, "miners": 2}


async def test_a_chat_completion_is_a_paid_job_with_its_receipt(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, key = api
    miner = await coordinator.new_miner("m1")
    miner_task = asyncio.create_task(serve_one(coordinator, "m1", miner, "Paris."))
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
        ],
        max_tokens=8,
        temperature=0,
        seed=1,
        stop=["\n"],
    )
    claimed = await miner_task
    completion = raw.parse()
    job_id = raw.headers["X-AITBC-Job-Id"]
    receipt_id = raw.headers["X-AITBC-Receipt-Id"]
    assert job_id == claimed["job_id"] and completion.id == f"chatcmpl-{job_id}"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Paris."
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 2)
    # The job carries the conversation as messages, and the parameters as given.
    assert claimed["params"]["mode"] == "messages"
    assert json.loads(claimed["prompt"]) == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert claimed["params"]["max_tokens"] == 8
    assert claimed["params"]["stop"] == ["\n"]
    # Billing is the receipt's.
    receipt = ok(
        await coordinator.http.get(f"/v1/receipts/{receipt_id}", headers={"X-Api-Key": key})
    )
    assert receipt["job_id"] == job_id
    assert completion.usage.model_extra == {"cost": receipt["price"], "receipt_id": receipt_id}


async def test_a_streamed_chat_completion_ends_with_usage_cost_and_receipt(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, key = api
    miner = await coordinator.new_miner("m1", price=0.02)
    miner_task = asyncio.create_task(serve_one(coordinator, "m1", miner, "Hello there!"))
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=2,
    )
    chunks = [chunk async for chunk in stream]
    claimed = await miner_task
    assert {chunk.id for chunk in chunks} == {f"chatcmpl-{claimed['job_id']}"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello there!"
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish[-1] == "length" and set(finish[:-1]) == {None}  # 2 of max 2 tokens
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.total_tokens == 5
    extra = usage_chunk.usage.model_extra or {}
    receipt = ok(
        await coordinator.http.get(
            f"/v1/receipts/{extra['receipt_id']}", headers={"X-Api-Key": key}
        )
    )
    assert receipt["job_id"] == claimed["job_id"]
    assert extra["cost"] == receipt["price"] == 0.0001  # 5 tokens at 0.02 AIT per 1,000


async def test_completions_continue_the_prompt_streamed_and_not(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _key = api
    miner = await coordinator.new_miner("m1")
    miner_task = asyncio.create_task(serve_one(coordinator, "m1", miner, " blue."))
    completion = await client.completions.create(model=MODEL, prompt="The sky is")
    claimed = await miner_task
    assert claimed["params"]["mode"] == "completion" and claimed["prompt"] == "The sky is"
    assert claimed["params"]["max_tokens"] == 16  # OpenAI's default for this endpoint
    assert completion.object == "text_completion"
    assert completion.choices[0].text == " blue."
    miner_task = asyncio.create_task(serve_one(coordinator, "m1", miner, " green."))
    stream = await client.completions.create(model=MODEL, prompt=["Grass is"], stream=True)
    pieces = [chunk.choices[0].text async for chunk in stream]
    await miner_task
    assert "".join(pieces) == " green."


async def test_errors_come_in_openais_shape(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, key = api
    await coordinator.new_miner("m1")
    chat = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        await client.with_options(api_key="not-a-key").chat.completions.create(
            model=MODEL,
            messages=chat,  # type: ignore[arg-type]
        )
    assert unauthorized.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="gpt-9", messages=chat)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    with pytest.raises(openai.BadRequestError) as many:
        await client.chat.completions.create(model=MODEL, messages=chat, n=2)  # type: ignore[arg-type]
    assert (many.value.code, many.value.param) == ("unsupported_parameter", "n")
    with pytest.raises(openai.BadRequestError) as logprobs:
        await client.chat.completions.create(
            model=MODEL,
            messages=chat,
            logprobs=True,  # type: ignore[arg-type]
        )
    assert logprobs.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as hot:
        await client.chat.completions.create(
            model=MODEL,
            messages=chat,
            temperature=5,  # type: ignore[arg-type]
        )
    assert hot.value.param == "temperature"
    # Parameters at values that ask for nothing are accepted (and a miner is needed).
    raw = await coordinator.http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": chat, "frequency_penalty": 0, "bogus": 1},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert raw.status_code == 400
    assert raw.json()["error"] == {
        "message": "parameter 'bogus' is not supported by this gateway",
        "type": "invalid_request_error",
        "param": "bogus",
        "code": "unsupported_parameter",
    }


async def test_a_client_short_of_funds_gets_402_and_nothing_is_held(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, key = api
    await coordinator.new_miner("m1")
    headers = {"X-Api-Key": key}
    me = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    # Give nearly everything away: what is left cannot cover a 4,096-token hold.
    ok(
        await coordinator.http.post(
            "/v1/transfers",
            json={"to": "m1", "amount": me["balance"] - 0.001, "nonce": 1},
            headers=headers,
        ),
        201,
    )
    with pytest.raises(openai.APIStatusError) as short:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4096
        )
    assert short.value.status_code == 402 and short.value.code == "insufficient_funds"
    after = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    assert (after["balance"], after["held"]) == (0.001, 0)


async def test_no_miner_taking_the_job_in_time_is_503_with_retry_after_and_a_refund(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, key = api
    await coordinator.new_miner("m1")  # online, but it never polls
    headers = {"X-Api-Key": key}
    before = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    with pytest.raises(openai.InternalServerError) as unavailable:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "no_miner_available"
    assert unavailable.value.response.headers["Retry-After"] == "5"
    (job,) = ok(await coordinator.http.get("/v1/jobs", headers=headers))["jobs"]
    assert job["status"] == "cancelled"
    after = ok(await coordinator.http.get("/v1/accounts/me", headers=headers))
    assert (after["balance"], after["held"]) == (before["balance"], 0)


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "2/minute"}])
async def test_rate_limited_requests_get_openais_429_with_retry_after(
    coordinator: Coordinator, api: tuple[openai.AsyncOpenAI, str]
) -> None:
    client, _key = api
    await client.models.list()
    await client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        await client.models.list()
    assert limited.value.code == "rate_limited"
    assert int(limited.value.response.headers["Retry-After"]) >= 1
