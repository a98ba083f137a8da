"""Estimates shown to a client at submission: cost and time, from observed data.

How:
- **Units**: prompt tokens (estimated at one token per ``CHARS_PER_TOKEN`` characters,
  the usual figure for English with BPE tokenizers) plus ``max_tokens`` (the most the
  job can produce). This is an upper-ish estimate: generation may stop earlier.
- **Cost**: units × the median posted price of the online miners that can run the job
  (the median is what a job is likely to pay when several miners compete).
  ``None`` when no such miner is online: there is no honest figure to give.
- **Time**: ``max_tokens`` divided by the observed completion speed (completion tokens
  per second of run time) of recent completed jobs for that model, plus the observed
  median wait from submission to claim. ``None`` when the model has no history yet.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from aitbc.domain.money import price_for_units

CHARS_PER_TOKEN = 4


def estimate_units(prompt: str, max_tokens: int) -> int:
    """Tokens a job is expected to be metered for: prompt estimate + max_tokens."""
    return math.ceil(len(prompt) / CHARS_PER_TOKEN) + max_tokens


def estimate_cost_micro(units: int, unit_prices_micro: Sequence[int]) -> int | None:
    """Cost in µAIT at the median of the eligible miners' prices, or None if none."""
    if not unit_prices_micro:
        return None
    median_price = int(statistics.median_low(unit_prices_micro))
    return price_for_units(units, median_price)


@dataclass(frozen=True, slots=True)
class ModelSpeed:
    """Observed throughput of a model: completion tokens over run seconds, and queue wait."""

    completion_tokens: int
    run_seconds: float
    median_wait_seconds: float

    @property
    def tokens_per_second(self) -> float | None:
        """Completion tokens per second of running, or None without data."""
        if self.completion_tokens <= 0 or self.run_seconds <= 0:
            return None
        return self.completion_tokens / self.run_seconds


def estimate_time_seconds(max_tokens: int, speed: ModelSpeed | None) -> float | None:
    """Expected seconds from submission to result, or None without history."""
    if speed is None or speed.tokens_per_second is None:
        return None
    return round(speed.median_wait_seconds + max_tokens / speed.tokens_per_second, 3)
