"""The miner's inference backends against real engines generating real text.

- ``openai``: a real ``python -m llama_cpp.server`` process serving the bundled
  SmolLM2 model as ``smollm2-135m`` (started once for the module).
- ``ollama``: ``tests.fakes.ollama_server.FakeOllama``. Ollama itself cannot run on
  this machine (no binary, no internet to fetch one); the fake speaks Ollama's
  documented wire format and generates with the same model through llama.cpp.
- ``llamacpp``: in process.

Every engine is asked for one thread per job: this machine has two cores, often
shared with other work, and llama.cpp's threads spin while they wait for each other,
so more threads than free cores makes generation many times slower (the llamacpp
backend limits prompt processing to its threads too; a test at the end checks it).
Generations are kept short (``max_tokens`` 4 to 24) except the cancelled ones, which
ask for 1000 tokens and are stopped after the first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from aitbc.miner.backends import create_backend
from aitbc.miner.backends.base import (
    Backend,
    BackendError,
    Generation,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
    PromptMode,
)
from aitbc.miner.backends.bundled import bundled_model_path
from aitbc.miner.backends.llamacpp import LlamaCppBackend
from aitbc.miner.backends.ollama import OllamaBackend
from aitbc.miner.backends.openai import OpenAIBackend
from aitbc.miner.backends.remote import REMOTE_TEMPLATE_TOKENS
from tests.fakes.ollama_server import FakeOllama

MODEL = "smollm2-135m"
MODES: list[PromptMode] = ["chat", "completion"]
PROMPTS: dict[PromptMode, str] = {
    "chat": "Name three colours of the rainbow.",
    "completion": "The three primary colours are",
}
LONG_PROMPTS: dict[PromptMode, str] = {
    "chat": "Write a very long story about a dragon who learns to bake bread.",
    "completion": "Chapter one. The dragon woke before dawn and",
}
TOO_LONG_PROMPT = "hello " * 3000  # 3000 tokens, beyond the 2048-token context
SERVER_START_SECONDS = 60.0
GENERATION_TIMEOUT_SECONDS = 60.0
CANCEL_SECONDS = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def request(mode: PromptMode, **extra: Any) -> GenerationRequest:
    params: dict[str, Any] = {"max_tokens": 16, "temperature": 0.7, "seed": 11, **extra}
    prompt = params.pop("prompt", PROMPTS[mode])
    return GenerationRequest(model=params.pop("model", MODEL), prompt=prompt, mode=mode, **params)


async def generate(
    backend: Backend, req: GenerationRequest, control: GenerationControl | None = None
) -> Generation:
    return await asyncio.wait_for(
        backend.generate(req, control or GenerationControl()), GENERATION_TIMEOUT_SECONDS
    )


async def generate_tracked(
    backend: Backend, req: GenerationRequest
) -> tuple[Generation, list[int]]:
    """A generation and the counts ``on_token`` was told, in order."""
    counts: list[int] = []
    generation = await generate(backend, req, GenerationControl(on_token=counts.append))
    return generation, counts


def check_generation(generation: Generation, counts: list[int], max_tokens: int) -> None:
    assert generation.text.strip(), generation
    assert 1 <= generation.completion_tokens <= max_tokens, generation
    assert generation.finish_reason in ("stop", "length"), generation
    assert counts, "on_token was never called"
    assert counts == list(range(1, len(counts) + 1)), counts


async def check_stop_sequence(backend: Backend, mode: PromptMode) -> None:
    """Greedy decoding twice: without a stop sequence, then stopping at the third
    word of the first text; the second text is the first one cut before it."""
    reference = await generate(backend, request(mode, temperature=0.0, max_tokens=24))
    words = reference.text.split()
    assert len(words) >= 4, reference
    stop = " " + words[2]
    expected = reference.text[: reference.text.index(stop)]
    stopped = await generate(backend, request(mode, temperature=0.0, max_tokens=24, stop=(stop,)))
    assert stopped.text == expected, (reference, stop, stopped)
    assert stop not in stopped.text
    assert stopped.finish_reason == "stop", stopped
    assert stopped.completion_tokens <= reference.completion_tokens


async def check_seed(backend: Backend, mode: PromptMode) -> None:
    req = request(mode, temperature=0.9, seed=1234, max_tokens=16)
    first = await generate(backend, req)
    second = await generate(backend, req)
    assert first.text.strip()
    assert first.text == second.text
    assert first.completion_tokens == second.completion_tokens


async def cancel_after_first_token(backend: Backend, mode: PromptMode) -> float:
    """Start a 1000-token generation, set ``cancelled`` from another task once the
    first token is reported, and return the seconds from then to GenerationCancelled."""
    loop = asyncio.get_running_loop()
    first_token = asyncio.Event()
    control = GenerationControl(on_token=lambda n: loop.call_soon_threadsafe(first_token.set))
    cancelled_at = 0.0

    async def cancel() -> None:
        nonlocal cancelled_at
        await first_token.wait()
        cancelled_at = time.monotonic()
        control.cancelled.set()

    canceller = asyncio.create_task(cancel())
    req = request(mode, prompt=LONG_PROMPTS[mode], max_tokens=1000, temperature=0.8)
    with pytest.raises(GenerationCancelled):
        await generate(backend, req, control)
    elapsed = time.monotonic() - cancelled_at
    await canceller
    return elapsed


async def check_unreachable(name: str) -> None:
    backend = create_backend(name, model=None, url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendError) as caught:
            await backend.start()
        assert caught.value.error_code == "backend_unreachable"
        assert not caught.value.retryable
    finally:
        await backend.close()


async def check_model_not_served(backend: Backend) -> None:
    with pytest.raises(BackendError) as caught:
        await generate(backend, request("chat", model="llama-3-70b"))
    assert caught.value.error_code == "model_not_served"
    assert caught.value.retryable


async def check_prompt_too_long(backend: Backend, mode: PromptMode) -> None:
    with pytest.raises(BackendError) as caught:
        await generate(backend, request(mode, prompt=TOO_LONG_PROMPT, max_tokens=8))
    assert caught.value.error_code == "prompt_too_long", caught.value
    assert not caught.value.retryable


# ---------------------------------------------------------------------- openai


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 5 seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real llama-cpp-python OpenAI-compatible server; its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(bundled_model_path()),
        "--model_alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + SERVER_START_SECONDS
            while True:
                if process.poll() is not None:
                    pytest.fail(f"llama_cpp.server exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:
            stop_process(process)


@pytest.fixture
async def openai_backend(llama_server: str) -> AsyncIterator[Backend]:
    backend = create_backend("openai", model=None, url=llama_server)
    await backend.start()
    yield backend
    await backend.close()


async def test_openai_start_lists_the_served_model(openai_backend: Backend) -> None:
    assert openai_backend.models() == [MODEL]
    # It cannot tokenize: the documented constant for every model it serves.
    assert openai_backend.template_tokens() == {MODEL: REMOTE_TEMPLATE_TOKENS}


@pytest.mark.parametrize("mode", MODES)
async def test_openai_generates(openai_backend: Backend, mode: PromptMode) -> None:
    generation, counts = await generate_tracked(openai_backend, request(mode))
    check_generation(generation, counts, 16)
    # llama-cpp-python's server sends no usage: the backend meters the streamed chunks.
    assert generation.completion_tokens == counts[-1]


@pytest.mark.parametrize("mode", MODES)
async def test_openai_seed_makes_it_deterministic(
    openai_backend: Backend, mode: PromptMode
) -> None:
    await check_seed(openai_backend, mode)


@pytest.mark.parametrize("mode", MODES)
async def test_openai_honours_stop_sequences(openai_backend: Backend, mode: PromptMode) -> None:
    await check_stop_sequence(openai_backend, mode)


async def test_openai_refuses_a_model_it_does_not_serve(openai_backend: Backend) -> None:
    await check_model_not_served(openai_backend)


async def test_openai_start_refuses_a_model_the_server_does_not_list(llama_server: str) -> None:
    backend = OpenAIBackend(llama_server, model="nope")
    try:
        with pytest.raises(BackendError) as caught:
            await backend.start()
        assert caught.value.error_code == "model_not_served"
        assert not caught.value.retryable
    finally:
        await backend.close()


@pytest.mark.parametrize("mode", MODES)
async def test_openai_cancel_stops_promptly(openai_backend: Backend, mode: PromptMode) -> None:
    elapsed = await cancel_after_first_token(openai_backend, mode)
    assert elapsed < CANCEL_SECONDS
    # Closing the stream stopped the server too: it is free for the next job at once
    # (finishing the 1000 tokens would take it tens of seconds).
    started = time.monotonic()
    generation = await generate(openai_backend, request(mode, max_tokens=4))
    assert generation.completion_tokens >= 1
    assert time.monotonic() - started < 5.0


async def test_openai_unreachable_server_fails_at_start() -> None:
    await check_unreachable("openai")


@pytest.mark.parametrize("mode", MODES)
async def test_openai_prompt_too_long_is_final(openai_backend: Backend, mode: PromptMode) -> None:
    await check_prompt_too_long(openai_backend, mode)


# ---------------------------------------------------------------------- ollama


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
async def ollama_backend(fake_ollama: FakeOllama) -> AsyncIterator[Backend]:
    backend = create_backend("ollama", model=None, url=fake_ollama.url)
    await backend.start()
    yield backend
    await backend.close()


async def test_ollama_start_lists_the_served_model(ollama_backend: Backend) -> None:
    assert ollama_backend.models() == [MODEL]
    assert ollama_backend.template_tokens() == {MODEL: REMOTE_TEMPLATE_TOKENS}


@pytest.mark.parametrize("mode", MODES)
async def test_ollama_generates_and_meters_ollamas_counts(
    ollama_backend: Backend, fake_ollama: FakeOllama, mode: PromptMode
) -> None:
    finals_before = len(fake_ollama.finals)
    generation, counts = await generate_tracked(ollama_backend, request(mode))
    check_generation(generation, counts, 16)
    assert len(fake_ollama.finals) == finals_before + 1
    final = fake_ollama.finals[-1]
    assert generation.prompt_tokens == final["prompt_eval_count"] > 0
    assert generation.completion_tokens == final["eval_count"]
    assert generation.finish_reason == final["done_reason"]
    if generation.finish_reason == "length":
        assert generation.completion_tokens == 16
    path, body = fake_ollama.requests[-1]
    assert path == ("/api/chat" if mode == "chat" else "/api/generate")
    assert body["stream"] is True
    assert body["options"]["num_predict"] == 16
    assert body["options"]["seed"] == 11


@pytest.mark.parametrize("mode", MODES)
async def test_ollama_seed_makes_it_deterministic(
    ollama_backend: Backend, mode: PromptMode
) -> None:
    await check_seed(ollama_backend, mode)


@pytest.mark.parametrize("mode", MODES)
async def test_ollama_honours_stop_sequences(ollama_backend: Backend, mode: PromptMode) -> None:
    await check_stop_sequence(ollama_backend, mode)


async def test_ollama_refuses_a_model_it_does_not_serve(ollama_backend: Backend) -> None:
    await check_model_not_served(ollama_backend)


async def test_ollama_start_refuses_a_model_the_server_does_not_list(
    fake_ollama: FakeOllama,
) -> None:
    backend = OllamaBackend(fake_ollama.url, model="nope")
    try:
        with pytest.raises(BackendError) as caught:
            await backend.start()
        assert caught.value.error_code == "model_not_served"
        assert not caught.value.retryable
    finally:
        await backend.close()


@pytest.mark.parametrize("mode", MODES)
async def test_ollama_cancel_stops_promptly(
    ollama_backend: Backend, fake_ollama: FakeOllama, mode: PromptMode
) -> None:
    stopped_before = fake_ollama.stopped_early
    elapsed = await cancel_after_first_token(ollama_backend, mode)
    assert elapsed < CANCEL_SECONDS
    # Closing the stream stopped the generation on the server as well.
    assert await asyncio.to_thread(fake_ollama.wait_idle, CANCEL_SECONDS)
    assert fake_ollama.stopped_early == stopped_before + 1


async def test_ollama_unreachable_server_fails_at_start() -> None:
    await check_unreachable("ollama")


async def test_ollama_prompt_too_long_is_final() -> None:
    # A small context keeps the (truncated) prompt cheap to evaluate.
    with FakeOllama(context_tokens=256) as server:
        backend = create_backend("ollama", model=None, url=server.url)
        try:
            await backend.start()
            with pytest.raises(BackendError) as caught:
                await generate(backend, request("completion", prompt="hello " * 400, max_tokens=4))
            assert caught.value.error_code == "prompt_too_long", caught.value
            assert not caught.value.retryable
        finally:
            await backend.close()


async def test_ollama_completion_is_a_raw_continuation(
    ollama_backend: Backend, fake_ollama: FakeOllama
) -> None:
    generation = await generate(ollama_backend, request("completion", max_tokens=4))
    assert generation.prompt_tokens == len(fake_ollama.tokenize(PROMPTS["completion"]))


async def test_ollama_accepts_the_latest_tag(fake_ollama: FakeOllama) -> None:
    fake_ollama.model_name = f"{MODEL}:latest"
    backend = OllamaBackend(fake_ollama.url, model=MODEL)
    try:
        await backend.start()
        assert backend.models() == [MODEL]
    finally:
        fake_ollama.model_name = MODEL
        await backend.close()


async def test_ollama_model_removed_after_start_is_retryable(
    ollama_backend: Backend, fake_ollama: FakeOllama
) -> None:
    fake_ollama.model_name = "another-model"
    try:
        with pytest.raises(BackendError) as caught:
            await generate(ollama_backend, request("chat", max_tokens=4))
    finally:
        fake_ollama.model_name = MODEL
    assert caught.value.retryable
    assert caught.value.error_code == "model_not_served"


async def test_fake_ollama_speaks_the_wire_format(fake_ollama: FakeOllama) -> None:
    """The stand-in answers as docs/api.md describes (what the tests above rely on)."""
    async with httpx.AsyncClient(base_url=fake_ollama.url, timeout=30) as http:
        tags = (await http.get("/api/tags")).json()
        [entry] = tags["models"]
        assert entry["name"] == entry["model"] == MODEL
        assert {"modified_at", "size", "digest", "details"} <= set(entry)
        assert entry["details"]["format"] == "gguf"

        for path, key in (("/api/generate", "response"), ("/api/chat", "message")):
            body: dict[str, Any] = {"model": MODEL, "options": {"num_predict": 5, "seed": 3}}
            if path == "/api/chat":
                body["messages"] = [{"role": "user", "content": "Hi"}]
            else:
                body["prompt"] = "Hi"
            async with http.stream("POST", path, json=body) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/x-ndjson"
                lines = [line async for line in response.aiter_lines() if line]
            objects = [json.loads(line) for line in lines]
            *pieces, final = objects
            assert pieces and all(piece["done"] is False for piece in pieces)
            assert all({"model", "created_at", key} <= set(piece) for piece in pieces)
            if key == "message":
                assert all(piece["message"]["role"] == "assistant" for piece in pieces)
            assert final["done"] is True
            assert final["done_reason"] in ("stop", "length")
            for field in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            ):
                assert isinstance(final[field], int) and final[field] >= 0, (field, final)
            assert 1 <= final["eval_count"] <= 5

        missing = await http.post("/api/generate", json={"model": "x", "prompt": "Hi"})
        assert missing.status_code == 404
        assert missing.json() == {"error": 'model "x" not found, try pulling it first'}
        refused = await http.post(
            "/api/generate", json={"model": MODEL, "prompt": TOO_LONG_PROMPT, "truncate": False}
        )
        assert refused.status_code == 400
        assert "context length" in refused.json()["error"]


# -------------------------------------------------------------------- llamacpp


@pytest.fixture
async def llamacpp_backend() -> AsyncIterator[Backend]:
    backend = LlamaCppBackend(threads_per_job=1)
    await backend.start()
    yield backend
    await backend.close()


@pytest.mark.parametrize("mode", MODES)
async def test_llamacpp_generates(llamacpp_backend: Backend, mode: PromptMode) -> None:
    generation, counts = await generate_tracked(llamacpp_backend, request(mode))
    check_generation(generation, counts, 16)
    assert generation.prompt_tokens > 0
    # on_token is told once per sampled token; an end-of-text token is sampled but
    # not metered, so progress may run one ahead of the metered count.
    assert generation.completion_tokens <= counts[-1] <= generation.completion_tokens + 1


# Prompts a template overhead must cover beyond the probes it was measured on.
BOUND_PROMPTS = ["Say hi.", "Ünïcödé ✓ and a longer sentence, with punctuation!", "数学 " * 20]


async def test_llamacpp_template_tokens_bound_what_it_bills(llamacpp_backend: Backend) -> None:
    """The declared overhead is what llama.cpp's chat template really adds (SmolLM2's
    adds a system prompt of some 30 tokens), and every billed prompt stays within
    its UTF-8 bytes plus it, in both modes."""
    (declared,) = llamacpp_backend.template_tokens().items()
    model, overhead = declared
    assert model == MODEL
    empty_chat = await generate(llamacpp_backend, request("chat", prompt="", max_tokens=1))
    assert overhead >= empty_chat.prompt_tokens > 10, (overhead, empty_chat)
    assert overhead <= 256
    for prompt in BOUND_PROMPTS:
        for mode in MODES:
            generation = await generate(
                llamacpp_backend, request(mode, prompt=prompt, max_tokens=1)
            )
            assert generation.prompt_tokens <= len(prompt.encode()) + overhead, (prompt, mode)


async def test_llamacpp_seed_makes_it_deterministic(llamacpp_backend: Backend) -> None:
    await check_seed(llamacpp_backend, "chat")


async def test_llamacpp_refuses_a_model_it_does_not_serve(llamacpp_backend: Backend) -> None:
    await check_model_not_served(llamacpp_backend)


@pytest.mark.parametrize("mode", MODES)
async def test_llamacpp_cancel_stops_promptly(llamacpp_backend: Backend, mode: PromptMode) -> None:
    elapsed = await cancel_after_first_token(llamacpp_backend, mode)
    assert elapsed < CANCEL_SECONDS


@pytest.mark.parametrize("mode", MODES)
async def test_llamacpp_prompt_too_long_is_final(
    llamacpp_backend: Backend, mode: PromptMode
) -> None:
    await check_prompt_too_long(llamacpp_backend, mode)


async def test_llamacpp_runs_two_generations_at_once() -> None:
    backend = LlamaCppBackend(concurrency=2, threads_per_job=1)
    await backend.start()
    try:
        moments: dict[str, list[float]] = {"a": [], "b": []}

        def control(name: str) -> GenerationControl:
            return GenerationControl(on_token=lambda n: moments[name].append(time.monotonic()))

        # Long enough that one cannot finish before the other's thread gets going.
        first, second = await asyncio.gather(
            generate(backend, request("completion", max_tokens=64), control("a")),
            generate(backend, request("chat", max_tokens=64), control("b")),
        )
    finally:
        await backend.close()
    for generation in (first, second):
        assert generation.text.strip()
        assert 1 <= generation.completion_tokens <= 64
    # Both were generating at the same time: each produced a token before the other's last.
    assert moments["a"][0] < moments["b"][-1]
    assert moments["b"][0] < moments["a"][-1]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every default is one thread")
async def test_llamacpp_threads_per_job_bounds_prompt_processing_too() -> None:
    backend = LlamaCppBackend(concurrency=2, threads_per_job=1)
    await backend.start()
    try:
        contexts = [backend._idle.get_nowait() for _ in range(2)]
        for llm in contexts:
            backend._idle.put_nowait(llm)
        assert [(llm.n_threads, llm.n_threads_batch) for llm in contexts] == [(1, 1), (1, 1)]
    finally:
        await backend.close()
