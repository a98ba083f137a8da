"""``transformers``: torch + Hugging Face transformers in process, CPU or CUDA.

Loads a local model directory, or a GGUF file (dequantized by transformers; the
bundled SmolLM2 file by default, served as ``smollm2-135m``). Nothing is ever
downloaded: loading is local-only.

Concurrent jobs are **batched into one generation loop**: the jobs waiting when a
batch starts (up to ``max_batch``) are left-padded into one tensor and decoded
together, one forward pass per step for the whole batch, so a GPU is kept busy
instead of serving one sequence at a time. Each row keeps its own parameters:
temperature, top-p, stop sequences, ``max_tokens``, and a seeded generator, so a
job's output does not depend on what it was batched with (greedy decoding gives
the same text batched or alone). A row that finishes, hits a stop sequence or is
cancelled stops producing tokens; the batch ends when every row has. Jobs that
arrive while a batch runs wait for the next one (static batching).

Its template overhead is measured at load with the tokenizer and chat template that
meter every job (tokenizing only, no generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field
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

log = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 32
# How long the scheduler waits for more jobs to join a batch once one arrived: a
# miner claims jobs one HTTP round trip apart, and a job that just misses a batch
# waits for the whole batch to finish, so a short wait buys much fuller batches.
BATCH_GATHER_SECONDS = 0.05


@dataclass
class _Row:
    request: GenerationRequest
    control: GenerationControl
    future: asyncio.Future[Generation]
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    done: bool = False
    cancelled: bool = False
    error: BackendError | None = None
    text: str | None = None
    finish_reason: str = "length"


class TransformersBackend:
    """Batched generation on a transformers causal LM."""

    name = "transformers"

    def __init__(
        self,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        model_path: Path | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        device: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_path = model_path
        self.max_batch = max(1, max_batch)
        self.device_name = device
        self.device = device or "cpu"
        self._pending: asyncio.Queue[_Row] = asyncio.Queue()
        self._scheduler: asyncio.Task[None] | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.context_tokens = 0
        self._template_tokens = 0
        # Figures for tests and benchmarks: batches run and the largest one.
        self.batches_run = 0
        self.largest_batch = 0

    def models(self) -> list[str]:
        """The one model name this backend serves."""
        return [self.model_name]

    def template_tokens(self) -> dict[str, int]:
        """The template overhead measured at load."""
        return {self.model_name: self._template_tokens}

    async def start(self) -> None:
        """Load tokenizer and model (tens of seconds on a CPU), then start batching."""
        await asyncio.to_thread(self._load)
        self._scheduler = asyncio.create_task(self._schedule())

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise BackendError(
                "torch and transformers are not installed: pip install 'aitbc[transformers]'",
                retryable=False,
                error_code="backend_missing",
            ) from exc
        path = self.model_path or bundled_model_path()
        if not path.exists():
            raise BackendError(
                f"model {path} not found", retryable=False, error_code="model_missing"
            )
        device = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        if path.is_file():  # a GGUF file: transformers dequantizes it
            where, extra = str(path.parent), {"gguf_file": path.name}
        else:
            where, extra = str(path), {}
        # Local files only: these machines have no internet, and a miner must never
        # fetch weights it was not given.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(
            where, local_files_only=True, dtype=dtype, **extra
        )
        # (typed loosely: transformers' stubs mistype ``.to`` on a loaded model)
        self.model = model.to(device).eval()
        self.device = device
        self.context_tokens = int(getattr(model.config, "max_position_embeddings", 2048))

        def prompt_tokens(prompt: str, mode: PromptMode) -> int:
            return len(self._prompt_ids(GenerationRequest(self.model_name, prompt, mode=mode)))

        self._template_tokens = template_overhead(prompt_tokens)
        log.info("transformers: %s on %s (%s)", path.name, device, dtype)

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Queue ``request`` for the next batch and wait for its row."""
        if request.model != self.model_name:
            raise BackendError(
                f"this miner serves {self.model_name}, not {request.model}",
                retryable=True,
                error_code="model_not_served",
            )
        row = _Row(request, control, asyncio.get_running_loop().create_future())
        await self._pending.put(row)
        return await row.future

    async def _schedule(self) -> None:
        while True:
            batch = [await self._pending.get()]
            await asyncio.sleep(BATCH_GATHER_SECONDS)
            while len(batch) < self.max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                await asyncio.to_thread(self._run_batch, batch)
            except Exception as exc:  # the engine failed: every row of the batch did
                log.exception("transformers batch failed")
                for row in batch:
                    row.error = row.error or BackendError(
                        f"generation failed: {exc!r}", retryable=True, error_code="backend_error"
                    )
            for row in batch:
                if row.future.done():
                    continue
                if row.error is not None:
                    row.future.set_exception(row.error)
                elif row.cancelled:
                    row.future.set_exception(GenerationCancelled())
                else:
                    row.future.set_result(
                        Generation(
                            row.text or "",
                            len(row.prompt_ids),
                            len(row.generated),
                            row.finish_reason,
                        )
                    )

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tokenizer = self.tokenizer
        messages = request.chat_messages()
        if messages is not None and tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        else:
            ids = tokenizer(request.prompt)["input_ids"]
        return [int(token) for token in ids]

    def _run_batch(self, batch: list[_Row]) -> None:
        """Decode ``batch`` together until every row is done (in a worker thread)."""
        import torch
        from transformers import DynamicCache

        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        tokenizer, device = self.tokenizer, self.device
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id or 0
        end_ids = {tokenizer.eos_token_id} - {None}
        live: list[_Row] = []
        for row in batch:
            row.prompt_ids = self._prompt_ids(row.request)
            if len(row.prompt_ids) >= self.context_tokens:
                row.error = BackendError(
                    f"prompt of {len(row.prompt_ids)} tokens does not fit the model's "
                    f"{self.context_tokens}-token context",
                    retryable=False,
                    error_code="prompt_too_long",
                )
            else:
                live.append(row)
        if not live:
            return
        width = max(len(row.prompt_ids) for row in live)
        input_ids = torch.tensor(
            [[pad_id] * (width - len(row.prompt_ids)) + row.prompt_ids for row in live],
            device=device,
        )
        mask = torch.tensor(
            [[0] * (width - len(row.prompt_ids)) + [1] * len(row.prompt_ids) for row in live],
            device=device,
        )
        generators = []
        for row in live:
            generator = torch.Generator(device=device)
            seed = row.request.seed
            generator.manual_seed(seed if seed is not None else secrets.randbits(32))
            generators.append(generator)
        budget = [
            min(row.request.max_tokens, self.context_tokens - len(row.prompt_ids)) for row in live
        ]
        # One key/value cache for the whole batch, which every forward pass extends in
        # place (transformers' Cache API: ``cache=`` in, the same object out).
        cache = DynamicCache(config=self.model.config)
        step_ids = input_ids
        with torch.inference_mode():
            while not all(row.done for row in live):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
                output = self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                )
                logits = output.logits[:, -1, :].float()
                next_ids = []
                for index, row in enumerate(live):
                    if row.done:
                        next_ids.append(pad_id)
                        continue
                    token = self._sample(logits[index], row.request, generators[index])
                    next_ids.append(token)
                    self._advance(row, token, end_ids, budget[index])
                step_ids = torch.tensor(next_ids, device=device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)

    @staticmethod
    def _sample(logits: Any, request: GenerationRequest, generator: Any) -> int:
        import torch

        if request.temperature <= 0:
            return int(torch.argmax(logits))
        probabilities = torch.softmax(logits / request.temperature, dim=-1)
        if request.top_p < 1.0:
            ordered, order = torch.sort(probabilities, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            keep = ordered.cumsum(-1) - ordered < request.top_p
            ordered = ordered * keep
            choice = torch.multinomial(ordered / ordered.sum(), 1, generator=generator)
            return int(order[choice])
        return int(torch.multinomial(probabilities, 1, generator=generator))

    def _advance(self, row: _Row, token: int, end_ids: set[int], budget: int) -> None:
        """Record ``token`` for ``row`` and decide whether the row is done."""
        if row.control.cancelled.is_set():
            row.done = row.cancelled = True
            return
        if token in end_ids:
            row.done, row.finish_reason = True, "stop"
        else:
            row.generated.append(token)
            row.control.on_token(len(row.generated))
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        for stop in row.request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, row.done, row.finish_reason = text[:cut], True, "stop"
        if not row.done and len(row.generated) >= budget:
            row.done, row.finish_reason = True, "length"
        if row.done:
            row.text = text

    async def healthy(self) -> bool:
        """In process: it can take work whenever it is loaded."""
        return True

    async def close(self) -> None:
        """Stop batching and free the model."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        self.model = None
