"""The one interface every inference backend implements.

A backend serves a fixed set of model names and runs one generation at a time per
call; the daemon calls it from several tasks at once up to its concurrency. It
reports each produced token through ``on_token`` (for progress) and stops within a
token or two once ``cancelled`` is set.

It also says, per model, how many prompt tokens its template adds (``template_tokens``):
the coordinator charges a receipt at most a prompt's UTF-8 bytes plus that many prompt
tokens, so the figure is measured where the backend can count tokens (see
:func:`template_overhead`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

PromptMode = Literal["chat", "completion", "messages"]


class BackendError(Exception):
    """A generation that failed; ``retryable`` says whether another attempt (maybe on
    another miner) could succeed, ``error_code`` names the reason."""

    def __init__(self, message: str, *, retryable: bool, error_code: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.error_code = error_code


BACKEND_UNREACHABLE = "backend_unreachable"

# The bounds of a declared template overhead (the coordinator refuses more).
MAX_TEMPLATE_TOKENS = 256
# The prompts the overhead is measured on: none, one byte, plain words, and multi-byte
# text. An empty prompt shows the template alone (in chat mode only: a job's prompt is
# never empty, and in completion mode there would be nothing to continue); the others
# catch a tokenizer that adds a token at the start of text (a BOS token, a space prefix).
TEMPLATE_PROBES = ("", "x", "Hello, world", "Grüße aus Köln: 東京 🙂")


class GenerationCancelled(Exception):
    """The job was cancelled (or taken away) while generating."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One job's generation: the model it names and its parameters."""

    model: str
    prompt: str
    mode: PromptMode = "chat"
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def chat_messages(self) -> list[dict[str, str]] | None:
        """The chat messages to put in the model's chat template: the prompt as one
        user message (``chat``), the prompt's JSON array of ``{role, content}``
        (``messages``, as the coordinator checked it); None to continue the prompt
        as plain text (``completion``)."""
        if self.mode == "completion":
            return None
        if self.mode == "messages":
            messages: list[dict[str, str]] = json.loads(self.prompt)
            return messages
        return [{"role": "user", "content": self.prompt}]

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> GenerationRequest:
        """The request a coordinator ``Job`` document describes; unknown parameters
        are refused by the coordinator's schema, so none are silently dropped here."""
        params = job.get("params") or {}
        return cls(
            model=job["model"],
            prompt=job["prompt"],
            mode=params.get("mode") or "chat",
            max_tokens=int(params.get("max_tokens") or 256),
            temperature=float(params.get("temperature", 0.7)),
            top_p=float(params.get("top_p", 0.9)),
            stop=tuple(params.get("stop") or ()),
            seed=params.get("seed"),
        )


def template_overhead(prompt_tokens: Callable[[str, PromptMode], int]) -> int:
    """The most prompt tokens a model's template adds on top of a prompt's UTF-8 bytes:
    the maximum over :data:`TEMPLATE_PROBES`, in chat and completion mode, of
    ``prompt_tokens(prompt, mode) - len(prompt.encode())``, clamped to 0..256.

    ``prompt_tokens`` is the count the backend bills a prompt, the way it bills a job."""
    modes: tuple[PromptMode, ...] = ("chat", "completion")
    worst = max(
        prompt_tokens(prompt, mode) - len(prompt.encode())
        for prompt in TEMPLATE_PROBES
        for mode in modes
        if prompt or mode == "chat"
    )
    return min(MAX_TEMPLATE_TOKENS, max(0, worst))


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished generation with the tokens the engine metered."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


@dataclass(slots=True)
class GenerationControl:
    """How the daemon steers a running generation: a cancel flag the engine's thread
    checks per token, a callback told the completion-token count so far, and one
    given the text generated since its last call (the job's stream; a backend that
    cannot tell its text before the end never calls it, and the coordinator streams
    the result at once when the job completes)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    on_token: Callable[[int], None] = lambda produced: None
    on_text: Callable[[str], None] = lambda text: None


class Backend(Protocol):
    """An inference engine serving named models."""

    name: str

    def models(self) -> list[str]:
        """Model names this backend serves (what the miner advertises)."""
        ...

    async def start(self) -> None:
        """Load models / check the server; raise BackendError if it cannot serve."""
        ...

    def template_tokens(self) -> dict[str, int]:
        """Per served model, the most prompt tokens its template adds to a prompt's
        UTF-8 bytes (0..256; known once started): what the registration declares."""
        ...

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Run one generation; raise GenerationCancelled or BackendError
        (``error_code="backend_unreachable"`` when the engine cannot be reached)."""
        ...

    async def healthy(self) -> bool:
        """Whether the engine can take work now (a server answers; in process: yes)."""
        ...

    async def close(self) -> None:
        """Release the engine."""
        ...
