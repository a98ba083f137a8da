"""The official ``openai`` package, sync and async, against a real ``aitbc serve`` and
a real ``aitbc miner`` on the bundled model: chat and completions, streamed and not,
usage and receipts, and a reader that goes away mid-stream (its job is cancelled and
refunded)."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.e2e import test_miner_daemon as daemon_tests
from tests.e2e.test_miner_daemon import MODEL, Market

market = daemon_tests.market  # the fixture: a coordinator process and a client account


def client_of(market: Market) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=market.client_headers["X-Api-Key"],
        base_url=market.coordinator.base_url + "/v1",
        max_retries=0,
        timeout=60,
    )


def test_the_openai_client_runs_chat_and_completions_on_a_real_miner(
    market: Market,
) -> None:
    market.start_miner(miner_id="e2e-openai")
    with client_of(market) as client:
        run_the_openai_client(market, client)


def run_the_openai_client(market: Market, client: openai.OpenAI) -> None:
    (listed,) = client.models.list().data
    assert listed.id == MODEL and listed.model_extra == {"price": 0.02, "miners": 1}

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Describe the sea in three sentences."},
        ],
        max_tokens=40,
        temperature=0,
    )
    chat = raw.parse()
    job = market.job(raw.headers["X-AITBC-Job-Id"])
    assert job["status"] == "completed" and job["params"]["mode"] == "messages"
    assert chat.choices[0].message.content == job["result"] and job["result"].strip()
    assert chat.usage is not None
    assert chat.usage.completion_tokens == job["usage"]["completion_tokens"]
    receipt = market.verify(job)
    receipt_id, price = receipt.receipt["receipt_id"], receipt.receipt["price"]
    assert raw.headers["X-AITBC-Receipt-Id"] == receipt_id
    assert chat.usage.model_extra == {"cost": price, "receipt_id": receipt_id}

    # The same request streamed: the same text (temperature 0), token by token.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Describe the sea in three sentences."},
        ],
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == chat.choices[0].message.content
    assert len(pieces) >= 2
    final = chunks[-1]
    assert final.usage is not None and final.usage.completion_tokens == chat.usage.completion_tokens
    assert (final.usage.model_extra or {})["receipt_id"].startswith("rcpt_")

    completion = client.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8


def test_the_async_client_streams_and_a_reader_leaving_cancels_its_job(
    market: Market,
) -> None:
    market.start_miner(miner_id="e2e-openai-async")

    async def scenario() -> tuple[str, str]:
        client = openai.AsyncOpenAI(
            api_key=market.client_headers["X-Api-Key"],
            base_url=market.coordinator.base_url + "/v1",
            max_retries=0,
            timeout=60,
        )
        async with client:
            stream = await client.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=10, stream=True, seed=3
            )
            text = "".join([chunk.choices[0].text async for chunk in stream])
            # A long answer, left after its first pieces.
            async with client.chat.completions.with_streaming_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Write a long story about a cat."}],
                max_tokens=400,
                stream=True,
            ) as response:
                job_id = response.headers["X-AITBC-Job-Id"]
                seen = 0
                async for line in response.iter_lines():
                    if line.startswith("data: ") and '"content"' in line:
                        seen += 1
                    if seen >= 3:
                        break
        return text, job_id

    text, job_id = asyncio.run(scenario())
    assert text.strip()
    job = market.wait_job(job_id, {"cancelled", "completed"}, timeout=20)
    assert job["status"] == "cancelled", job
    assert job["usage"] is None or job["usage"]["completion_tokens"] < 400
    # Its hold came back: nothing is held once the cancel is through.
    deadline = time.monotonic() + 10
    while market.get("/v1/accounts/me")["held"] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert market.get("/v1/accounts/me")["held"] == 0


@pytest.mark.parametrize("bad_key", ["wrong-key"])
def test_a_bad_key_is_openais_authentication_error(market: Market, bad_key: str) -> None:
    with (
        openai.OpenAI(
            api_key=bad_key, base_url=market.coordinator.base_url + "/v1", max_retries=0
        ) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()
