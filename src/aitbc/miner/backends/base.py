"""The one interface every inference backend implements.

A backend serves a fixed set of model names and runs one generation at a time per
call; the daemon calls it from several tasks at once up to its concurrency. It
reports each produced token through ``on_token`` (for progress) and stops within a
token or two once ``cancelled`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

PromptMode = Literal["chat", "completion"]


class BackendError(Exception):
    """A generation that failed; ``retryable`` says whether another attempt (maybe on
    another miner) could succeed, ``error_code`` names the reason."""

    def __init__(self, message: str, *, retryable: bool, error_code: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.error_code = error_code


BACKEND_UNREACHABLE = "backend_unreachable"


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
    checks per token, and a callback told the completion-token count so far."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    on_token: Callable[[int], None] = lambda produced: None


class Backend(Protocol):
    """An inference engine serving named models."""

    name: str

    def models(self) -> list[str]:
        """Model names this backend serves (what the miner advertises)."""
        ...

    async def start(self) -> None:
        """Load models / check the server; raise BackendError if it cannot serve."""
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
