"""The job state machine and the dispatch eligibility rules in ``aitbc.domain.jobs``."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from aitbc.domain.jobs import (
    ALLOWED_TRANSITIONS,
    PRIORITY_RANKS,
    TERMINAL_STATUSES,
    JobStatus,
    MinerHardware,
    Priority,
    Requirements,
    can_run,
    deadline,
    ensure_transition,
    is_terminal,
    status_after_lost_attempt,
)
from aitbc.errors import AITBCError, Conflict, InvalidTransition

P, R, C, F, X = (
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)

# The lifecycle written out by hand, independently of ALLOWED_TRANSITIONS.
EXPECTED_ALLOWED = {
    (P, R),  # claimed
    (P, X),  # cancelled while queued
    (P, F),  # timed out while queued
    (R, C),  # completed
    (R, F),  # failed (non-retryable, timeout, attempts spent)
    (R, X),  # cancelled while running
    (R, P),  # lease lapsed / retryable failure with attempts left
}
ALL_PAIRS = list(itertools.product(JobStatus, repeat=2))
ALLOWED_PAIRS = [pair for pair in ALL_PAIRS if pair in EXPECTED_ALLOWED]
FORBIDDEN_PAIRS = [pair for pair in ALL_PAIRS if pair not in EXPECTED_ALLOWED]


def _pair_id(pair: tuple[JobStatus, JobStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# --- states ---------------------------------------------------------------------------


def test_exactly_the_five_contract_states() -> None:
    assert [s.value for s in JobStatus] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]


def test_status_is_a_str_enum() -> None:
    assert JobStatus("running") is JobStatus.RUNNING
    assert isinstance(JobStatus.RUNNING, str)
    assert str(JobStatus.RUNNING) == "running"
    assert f"{JobStatus.FAILED}" == "failed"
    with pytest.raises(ValueError):
        JobStatus("claimed")


def test_terminal_statuses() -> None:
    assert frozenset({C, F, X}) == TERMINAL_STATUSES
    for status in JobStatus:
        assert is_terminal(status) is (status in {C, F, X})


def test_transition_table_covers_every_state() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobStatus)


def test_transition_table_matches_the_lifecycle() -> None:
    table = {(src, dst) for src, targets in ALLOWED_TRANSITIONS.items() for dst in targets}
    assert table == EXPECTED_ALLOWED


# --- transitions ----------------------------------------------------------------------


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=_pair_id)
def test_allowed_transition_passes(pair: tuple[JobStatus, JobStatus]) -> None:
    current, target = pair
    ensure_transition(current, target)  # does not raise


@pytest.mark.parametrize("pair", FORBIDDEN_PAIRS, ids=_pair_id)
def test_forbidden_transition_raises(pair: tuple[JobStatus, JobStatus]) -> None:
    current, target = pair
    with pytest.raises(InvalidTransition) as info:
        ensure_transition(current, target)
    error = info.value
    # The HTTP layer maps Conflict to 409; the code says which state blocked it.
    assert isinstance(error, Conflict)
    assert isinstance(error, AITBCError)
    assert error.error_code == f"job_{current.value}"
    assert current.value in error.detail
    assert target.value in error.detail


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES), ids=str)
def test_terminal_states_never_change(status: JobStatus) -> None:
    assert ALLOWED_TRANSITIONS[status] == frozenset()
    for target in JobStatus:
        with pytest.raises(InvalidTransition):
            ensure_transition(status, target)


def test_no_self_transitions() -> None:
    for status in JobStatus:
        with pytest.raises(InvalidTransition):
            ensure_transition(status, status)


def test_completed_only_from_running() -> None:
    sources = {src for src, targets in ALLOWED_TRANSITIONS.items() if C in targets}
    assert sources == {R}


def test_every_non_terminal_state_can_reach_a_terminal_one() -> None:
    for status in JobStatus:
        if not is_terminal(status):
            assert ALLOWED_TRANSITIONS[status] & TERMINAL_STATUSES


def test_invalid_transition_error_code_is_per_instance() -> None:
    with pytest.raises(InvalidTransition) as first:
        ensure_transition(C, R)
    with pytest.raises(InvalidTransition) as second:
        ensure_transition(X, R)
    assert first.value.error_code == "job_completed"
    assert second.value.error_code == "job_cancelled"
    assert InvalidTransition.error_code == "invalid_transition"


# --- lost attempts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "expected"),
    [
        (1, 3, P),
        (2, 3, P),
        (3, 3, F),
        (4, 3, F),
        (1, 1, F),
        (0, 1, P),
    ],
)
def test_status_after_lost_attempt(attempts: int, max_attempts: int, expected: JobStatus) -> None:
    assert status_after_lost_attempt(attempts, max_attempts) is expected


def test_lost_attempt_outcome_is_always_reachable_from_running() -> None:
    for attempts in range(0, 6):
        target = status_after_lost_attempt(attempts, 3)
        ensure_transition(R, target)


# --- deadline ---------------------------------------------------------------------------


def test_deadline_adds_timeout() -> None:
    created = datetime(2026, 2, 13, 10, 0, 0, tzinfo=UTC)
    assert deadline(created, 3600) == datetime(2026, 2, 13, 11, 0, 0, tzinfo=UTC)
    assert deadline(created, 1) == created + timedelta(seconds=1)


def test_deadline_crosses_midnight_and_keeps_timezone() -> None:
    created = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    result = deadline(created, 86400)
    assert result == datetime(2027, 1, 1, 23, 59, 30, tzinfo=UTC)
    assert result.tzinfo is UTC


# --- can_run ----------------------------------------------------------------------------

A100 = MinerHardware(
    models=frozenset({"smollm2-135m", "llama3.2"}),
    gpu_name="NVIDIA A100-SXM4-80GB",
    gpu_memory_gb=80.0,
    gpu_count=2,
)
CPU_ONLY = MinerHardware(models=frozenset({"smollm2-135m"}))
ANY = Requirements()


def test_requirements_default_to_any() -> None:
    assert Requirements(gpu_type=None, gpu_count=None, min_vram_gb=None) == ANY
    assert can_run("smollm2-135m", ANY, CPU_ONLY)
    assert can_run("smollm2-135m", ANY, A100)


def test_model_must_be_served() -> None:
    assert not can_run("llama3.2", ANY, CPU_ONLY)
    assert can_run("llama3.2", ANY, A100)
    # never substituted, never fuzzy-matched
    assert not can_run("smollm2", ANY, CPU_ONLY)
    assert not can_run("SMOLLM2-135M", ANY, CPU_ONLY)
    assert not can_run("smollm2-135m", ANY, MinerHardware(models=frozenset()))


def test_model_check_comes_before_hardware() -> None:
    huge = Requirements(gpu_type="a100", gpu_count=1, min_vram_gb=1)
    assert not can_run("mistral-7b", huge, A100)


@pytest.mark.parametrize(
    "gpu_type", ["a100", "A100", "nvidia", "NVIDIA A100", "sxm4-80gb", "A100-SXM4-80GB"]
)
def test_gpu_type_is_case_insensitive_substring(gpu_type: str) -> None:
    assert can_run("smollm2-135m", Requirements(gpu_type=gpu_type), A100)


@pytest.mark.parametrize("gpu_type", ["h100", "a10 0", "A100-PCIE", "rtx"])
def test_gpu_type_mismatch(gpu_type: str) -> None:
    assert not can_run("smollm2-135m", Requirements(gpu_type=gpu_type), A100)


def test_gpu_type_requires_a_named_gpu() -> None:
    assert not can_run("smollm2-135m", Requirements(gpu_type="a100"), CPU_ONLY)


def test_gpu_count_is_a_minimum() -> None:
    assert can_run("smollm2-135m", Requirements(gpu_count=1), A100)
    assert can_run("smollm2-135m", Requirements(gpu_count=2), A100)
    assert not can_run("smollm2-135m", Requirements(gpu_count=3), A100)
    assert not can_run("smollm2-135m", Requirements(gpu_count=1), CPU_ONLY)


def test_min_vram_is_a_per_gpu_minimum() -> None:
    assert can_run("smollm2-135m", Requirements(min_vram_gb=24), A100)
    assert can_run("smollm2-135m", Requirements(min_vram_gb=80.0), A100)
    assert not can_run("smollm2-135m", Requirements(min_vram_gb=80.5), A100)
    # 2 x 80 GB is not one 160 GB GPU
    assert not can_run("smollm2-135m", Requirements(min_vram_gb=160), A100)


def test_min_vram_needs_known_memory() -> None:
    unknown_memory = MinerHardware(
        models=frozenset({"smollm2-135m"}), gpu_name="RTX 4090", gpu_count=1
    )
    assert not can_run("smollm2-135m", Requirements(min_vram_gb=8), unknown_memory)
    assert can_run("smollm2-135m", Requirements(gpu_type="4090"), unknown_memory)


def test_zero_minimums_mean_any() -> None:
    assert can_run("smollm2-135m", Requirements(gpu_count=0, min_vram_gb=0.0), CPU_ONLY)


def test_all_requirements_must_hold_together() -> None:
    fits = Requirements(gpu_type="a100", gpu_count=2, min_vram_gb=40)
    assert can_run("llama3.2", fits, A100)
    for too_much in (
        Requirements(gpu_type="h100", gpu_count=2, min_vram_gb=40),
        Requirements(gpu_type="a100", gpu_count=4, min_vram_gb=40),
        Requirements(gpu_type="a100", gpu_count=2, min_vram_gb=96),
    ):
        assert not can_run("llama3.2", too_much, A100)


# --- priority ---------------------------------------------------------------------------


def test_priority_ranks() -> None:
    assert Priority.LOW.rank == 0
    assert Priority.NORMAL.rank == 1
    assert Priority.HIGH.rank == 2
    assert set(PRIORITY_RANKS) == set(Priority)


def test_priority_sorts_high_first() -> None:
    ordered = sorted(Priority, key=lambda p: p.rank, reverse=True)
    assert ordered == [Priority.HIGH, Priority.NORMAL, Priority.LOW]
    assert Priority("high") is Priority.HIGH
    with pytest.raises(ValueError):
        Priority("urgent")
