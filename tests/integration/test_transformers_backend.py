"""The ``transformers`` backend on the real bundled model (dequantized from its GGUF).

Loaded once for the module (about 20 s on this machine's CPU). Checks that batching
is real (concurrent jobs share one generation loop) and invisible (a job's greedy
output is the same batched or alone; each row keeps its own parameters, stop
sequences, length and cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from aitbc.miner.backends.base import (
    BackendError,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
)

pytest.importorskip("torch")
pytest.importorskip("transformers")

from aitbc.miner.backends.transformers import TransformersBackend

MODEL = "smollm2-135m"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[TransformersBackend]:
    loaded = TransformersBackend(max_batch=8)
    await loaded.start()
    yield loaded
    await loaded.close()


pytestmark = pytest.mark.asyncio(loop_scope="module")


def greedy(prompt: str, max_tokens: int = 12, **extra: object) -> GenerationRequest:
    return GenerationRequest(
        model=MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        **extra,  # type: ignore[arg-type]
    )


async def test_greedy_output_is_the_same_batched_or_alone(backend: TransformersBackend) -> None:
    prompts = ["Name three uses of a GPU.", "Hi", "Write one sentence about the sea."]
    alone = [await backend.generate(greedy(p), GenerationControl()) for p in prompts]
    before = backend.batches_run
    batched = await asyncio.gather(
        *(backend.generate(greedy(p), GenerationControl()) for p in prompts)
    )
    # One generation loop served all three.
    assert backend.batches_run == before + 1
    assert backend.largest_batch >= 3
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in alone]
    for generation in batched:
        assert generation.text.strip()
        assert 1 <= generation.completion_tokens <= 12
        assert generation.prompt_tokens > 0


async def test_rows_keep_their_own_parameters(backend: TransformersBackend) -> None:
    seeded = GenerationRequest(model=MODEL, prompt="Tell me a fact.", max_tokens=10, seed=7)
    short = greedy("Count from one to twenty in words.", max_tokens=3)
    stopped = greedy("The capital of France is", max_tokens=12, mode="completion", stop=(".",))
    counts: list[int] = []
    control = GenerationControl(on_token=counts.append)
    first, three, paris = await asyncio.gather(
        backend.generate(seeded, control),
        backend.generate(short, GenerationControl()),
        backend.generate(stopped, GenerationControl()),
    )
    again = await backend.generate(seeded, GenerationControl())
    assert again.text == first.text  # the seed, not the batch, decides the sample
    assert counts == list(range(1, first.completion_tokens + 1))
    assert three.completion_tokens == 3 and three.finish_reason == "length"
    assert "." not in paris.text and "Paris" in paris.text
    assert paris.finish_reason == "stop"


async def test_cancelling_one_row_leaves_the_others(backend: TransformersBackend) -> None:
    control = GenerationControl()
    control.on_token = lambda produced: control.cancelled.set() if produced >= 2 else None
    long_job = GenerationRequest(model=MODEL, prompt="Write a long story.", max_tokens=500)
    cancelled, kept = await asyncio.gather(
        backend.generate(long_job, control),
        backend.generate(greedy("Hi", max_tokens=6), GenerationControl()),
        return_exceptions=True,
    )
    assert isinstance(cancelled, GenerationCancelled)
    assert not isinstance(kept, BaseException) and kept.completion_tokens >= 1


async def test_errors_are_per_row(backend: TransformersBackend) -> None:
    too_long = greedy("word " * 9000, max_tokens=4)
    fine = greedy("Hi", max_tokens=4)
    failed, ok = await asyncio.gather(
        backend.generate(too_long, GenerationControl()),
        backend.generate(fine, GenerationControl()),
        return_exceptions=True,
    )
    assert isinstance(failed, BackendError)
    assert failed.error_code == "prompt_too_long" and not failed.retryable
    assert not isinstance(ok, BaseException) and ok.text
    with pytest.raises(BackendError) as caught:
        await backend.generate(
            GenerationRequest(model="other-model", prompt="x"), GenerationControl()
        )
    assert caught.value.error_code == "model_not_served" and caught.value.retryable


async def test_template_tokens_bound_what_it_bills(backend: TransformersBackend) -> None:
    """The declared overhead is what the chat template adds (SmolLM2's system prompt
    and role markers), and every prompt it bills stays within its UTF-8 bytes plus it."""
    (declared,) = backend.template_tokens().items()
    model, overhead = declared
    assert model == MODEL
    empty_chat = await backend.generate(greedy("", max_tokens=1), GenerationControl())
    assert overhead >= empty_chat.prompt_tokens > 10, (overhead, empty_chat)
    assert overhead <= 256
    for prompt in ["Say hi.", "Ünïcödé ✓ and a longer sentence!", "数学 " * 20]:
        for mode in ("chat", "completion"):
            generation = await backend.generate(
                greedy(prompt, max_tokens=1, mode=mode), GenerationControl()
            )
            assert generation.prompt_tokens <= len(prompt.encode()) + overhead, (prompt, mode)
