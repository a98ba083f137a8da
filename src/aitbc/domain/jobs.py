"""The job lifecycle: states, the transitions between them, and who may run what.

A job is born ``pending``. A miner's claim makes it ``running`` (with a lease);
the miner then completes it (``completed``) or reports a failure. A lease that
lapses or a retryable failure puts it back to ``pending`` until ``max_attempts``
claims have been spent, then it is ``failed``. A job past its ``timeout_seconds``
is ``failed``. The client may cancel a job that is not yet terminal. Terminal
states (completed, failed, cancelled) never change again.

``ALLOWED_TRANSITIONS`` is the map of all of it. The hot paths do not consult it
at run time: ``aitbc.storage.job_queries`` writes each step's precondition into the
WHERE clause of one conditional UPDATE (claim: pending and runnable by this miner;
complete: running, held by this miner, before the deadline; ...), so concurrent
requests cannot both win a transition; the integration tests hold each step to
these rules. ``ensure_transition`` guards the steps decided in Python (cancel).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from aitbc.errors import InvalidTransition


class JobStatus(enum.StrEnum):
    """The five job states of the contract."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # running -> pending: lease lapsed or retryable failure, attempts left.
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PENDING}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class Priority(enum.StrEnum):
    """Client-chosen priority; higher ranks are dispatched first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Sortable number: high=2, normal=1, low=0."""
        return PRIORITY_RANKS[self]


PRIORITY_RANKS = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


def is_terminal(status: JobStatus) -> bool:
    """True for completed, failed and cancelled: states that never change again."""
    return status in TERMINAL_STATUSES


def ensure_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> target`` is allowed."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(
            f"job is {current.value}; it cannot become {target.value}",
            error_code=f"job_{current.value}",
        )


def status_after_lost_attempt(attempts: int, max_attempts: int) -> JobStatus:
    """Where a running job goes when its attempt is lost (lease lapsed, retryable failure).

    ``attempts`` counts claims so far, including the one just lost.
    """
    return JobStatus.PENDING if attempts < max_attempts else JobStatus.FAILED


def deadline(created_at: datetime, timeout_seconds: int) -> datetime:
    """The moment a job that is not finished by then fails with ``timeout``."""
    return created_at + timedelta(seconds=timeout_seconds)


@dataclass(frozen=True, slots=True)
class Requirements:
    """Hardware a job asks for; ``None`` means "any"."""

    gpu_type: str | None = None
    gpu_count: int | None = None
    min_vram_gb: float | None = None


@dataclass(frozen=True, slots=True)
class MinerHardware:
    """What a miner serves and has: the models it runs and its GPUs."""

    models: frozenset[str]
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    gpu_count: int = 0


def can_run(model: str, requirements: Requirements, miner: MinerHardware) -> bool:
    """Whether ``miner`` may be given a job for ``model`` with ``requirements``.

    The model must be one the miner serves (never substituted). ``gpu_type`` matches
    case-insensitively as a substring of the GPU name ("a100" matches
    "NVIDIA A100-SXM4-80GB"); ``gpu_count`` and ``min_vram_gb`` (per GPU) are minimums.
    """
    if model not in miner.models:
        return False
    if requirements.gpu_type and (
        not miner.gpu_name or requirements.gpu_type.lower() not in miner.gpu_name.lower()
    ):
        return False
    if requirements.gpu_count and miner.gpu_count < requirements.gpu_count:
        return False
    if requirements.min_vram_gb and (
        miner.gpu_memory_gb is None or miner.gpu_memory_gb < requirements.min_vram_gb
    ):
        return False
    return True


def within_price(max_price_micro: int | None, price_micro: int) -> bool:
    """Whether a miner posting ``price_micro`` (µAIT per 1,000 units) may take a job
    whose client accepts at most ``max_price_micro`` (None: jobs from before prices
    were bound, which any price may take)."""
    return max_price_micro is None or price_micro <= max_price_micro


# Prompt tokens allowed for the chat template of a miner that declared none for the
# model it claims with (a declaration, up to MAX_TEMPLATE_TOKENS, replaces this).
DEFAULT_TEMPLATE_TOKENS = 64
# The most prompt tokens a miner may declare its chat template adds (and so what a
# job's hold assumes before any miner has claimed it).
MAX_TEMPLATE_TOKENS = 256


@dataclass(frozen=True, slots=True)
class MinerTerms:
    """What a miner charges and takes on: its posted price (µAIT per 1,000 units), the
    most jobs it holds at once, and the prompt tokens its chat template adds per model."""

    price_micro: int
    concurrency: int = 1
    template_tokens: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_columns(
        cls, price_micro: int, concurrency: int, template_tokens: object
    ) -> MinerTerms:
        """Terms from a miner's stored columns (``template_tokens`` is JSON or None)."""
        declared = template_tokens if isinstance(template_tokens, dict) else {}
        return cls(
            price_micro=int(price_micro),
            concurrency=int(concurrency),
            template_tokens=tuple(
                sorted((str(model), int(tokens)) for model, tokens in declared.items())
            ),
        )

    def prompt_allowance(self, model: str) -> int:
        """Tokens a receipt may charge on top of the prompt's UTF-8 bytes for ``model``."""
        for name, tokens in self.template_tokens:
            if name == model:
                return tokens
        return DEFAULT_TEMPLATE_TOKENS
