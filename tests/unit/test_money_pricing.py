"""Integer µAIT money (``aitbc.domain.money``) and submission estimates (``pricing``)."""

from __future__ import annotations

import math
import statistics
from decimal import ROUND_HALF_UP, Decimal, localcontext

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aitbc.domain.money import (
    MAX_SUPPLY_MICRO,
    MICRO_PER_AIT,
    UNITS_PER_PRICE,
    price_for_units,
    to_ait,
    to_micro,
)
from aitbc.domain.pricing import (
    CHARS_PER_TOKEN,
    ModelSpeed,
    estimate_cost_micro,
    estimate_time_seconds,
    estimate_units,
)
from aitbc.errors import ValidationFailed

# --- constants --------------------------------------------------------------------------


def test_constants() -> None:
    assert MICRO_PER_AIT == 1_000_000
    assert UNITS_PER_PRICE == 1_000
    assert MAX_SUPPLY_MICRO == 10**15  # 10^9 AIT


# --- to_micro ---------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.05, "0.05", Decimal("0.05")])
def test_to_micro_point_zero_five_is_exact(amount: float | str | Decimal) -> None:
    # 0.05 has no exact binary form; going through Decimal(str(...)) keeps it exact.
    assert to_micro(amount) == 50_000


@pytest.mark.parametrize(
    ("amount", "micro"),
    [
        (0, 0),
        (1, 1_000_000),
        ("0", 0),
        ("0.000001", 1),
        (0.000001, 1),
        (1e-6, 1),
        (0.1, 100_000),
        (0.3, 300_000),
        ("1.5", 1_500_000),
        ("2.000000", 2_000_000),
        ("1.0000000000", 1_000_000),  # trailing zeros are not extra decimals
        ("1e-6", 1),
        ("1E+3", 1_000_000_000),
        (123456.789012, 123_456_789_012),
        (Decimal("999999999.999999"), MAX_SUPPLY_MICRO - 1),
        (10**9, MAX_SUPPLY_MICRO),
        ("1000000000.000000", MAX_SUPPLY_MICRO),
        ("-0", 0),
    ],
)
def test_to_micro_values(amount: float | int | str | Decimal, micro: int) -> None:
    result = to_micro(amount)
    assert result == micro
    assert type(result) is int


@pytest.mark.parametrize(
    "amount",
    ["0.0000001", 0.0000001, "1.1234567", Decimal("0.0000005"), "1e-7", 0.1 + 0.2],
)
def test_to_micro_rejects_more_than_six_decimals(amount: float | str | Decimal) -> None:
    with pytest.raises(ValidationFailed, match="6 decimals"):
        to_micro(amount)


@pytest.mark.parametrize("amount", [-1, "-0.000001", -0.05, Decimal("-5")])
def test_to_micro_rejects_negatives(amount: float | int | str | Decimal) -> None:
    with pytest.raises(ValidationFailed, match="non-negative"):
        to_micro(amount)


@pytest.mark.parametrize(
    "amount",
    [
        math.nan,
        math.inf,
        -math.inf,
        "NaN",
        "sNaN",
        "Infinity",
        "-inf",
        Decimal("NaN"),
        Decimal("Infinity"),
    ],
)
def test_to_micro_rejects_nan_and_infinity(amount: float | str | Decimal) -> None:
    with pytest.raises(ValidationFailed):
        to_micro(amount)


@pytest.mark.parametrize("amount", ["", "abc", "1,5", "0x10", "1 AIT", True, None])
def test_to_micro_rejects_non_numbers(amount: object) -> None:
    with pytest.raises(ValidationFailed):
        to_micro(amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [10**9 + 1, "1000000000.000001", 1e10, Decimal("1e30"), 10**20])
def test_to_micro_rejects_above_supply(amount: float | int | str | Decimal) -> None:
    with pytest.raises(ValidationFailed, match="supply"):
        to_micro(amount)


@pytest.mark.parametrize(
    "amount", ["1.0000000000000000000000000001", "1e-999999999", "5.00000000000000000000000000009"]
)
def test_to_micro_rejects_extra_decimals_beyond_context_precision(amount: str) -> None:
    with pytest.raises(ValidationFailed):
        to_micro(amount)


@pytest.mark.parametrize("amount", ["1e999999", "1E+999999999"])
def test_to_micro_rejects_huge_exponents(amount: str) -> None:
    with pytest.raises(ValidationFailed):
        to_micro(amount)


@given(st.integers(min_value=0, max_value=MAX_SUPPLY_MICRO))
@example(0)
@example(1)
@example(50_000)
@example(MAX_SUPPLY_MICRO)
@example(MAX_SUPPLY_MICRO - 1)
def test_to_ait_round_trips(micro: int) -> None:
    ait = to_ait(micro)
    assert isinstance(ait, float)
    assert to_micro(ait) == micro
    assert Decimal(str(ait)) == Decimal(micro) / MICRO_PER_AIT


@given(st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False))
def test_to_micro_accepts_every_six_decimal_amount(amount: Decimal) -> None:
    micro = to_micro(amount)
    assert Decimal(micro) == amount * MICRO_PER_AIT
    assert to_micro(str(amount)) == micro
    assert to_micro(to_ait(micro)) == micro


def test_to_ait_values() -> None:
    assert to_ait(50_000) == 0.05
    assert to_ait(0) == 0.0
    assert to_ait(1) == 0.000001
    assert to_ait(1_500_000) == 1.5


# --- price_for_units --------------------------------------------------------------------


def _reference_price(units: int, unit_price_micro: int) -> int:
    """units × price per 1,000 units, to the nearest µAIT, halves up (Decimal arithmetic)."""
    exact = Decimal(units) * Decimal(unit_price_micro) / Decimal(UNITS_PER_PRICE)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize(
    ("units", "unit_price_micro", "expected"),
    [
        (0, 20_000, 0),
        (1000, 20_000, 20_000),
        (27, 20_000, 540),  # the demo: 27 tokens at 0.02 AIT / 1k = 0.00054 AIT
        (1, 500, 1),  # 0.5 µAIT rounds half up
        (1, 499, 0),
        (1, 1500, 2),  # 1.5 -> 2
        (1, 2500, 3),  # 2.5 -> 3 (not banker's rounding)
        (3, 500, 2),  # 1.5 -> 2
        (1, 1, 0),
        (999, 1, 1),
        (500, 1, 1),  # 0.5 -> 1
        (499, 1, 0),
        (1, 0, 0),
    ],
)
def test_price_for_units_examples(units: int, unit_price_micro: int, expected: int) -> None:
    assert price_for_units(units, unit_price_micro) == expected
    assert price_for_units(units, unit_price_micro) == _reference_price(units, unit_price_micro)


@given(
    units=st.integers(min_value=0, max_value=10**9),
    unit_price_micro=st.integers(min_value=0, max_value=MAX_SUPPLY_MICRO),
)
@example(units=1, unit_price_micro=500)
@example(units=3, unit_price_micro=500)
@example(units=10**9, unit_price_micro=MAX_SUPPLY_MICRO)
def test_price_for_units_matches_decimal_half_up(units: int, unit_price_micro: int) -> None:
    result = price_for_units(units, unit_price_micro)
    assert type(result) is int
    # The exact product can exceed 28 digits: give the reference enough precision.
    with localcontext() as context:
        context.prec = 60
        assert result == _reference_price(units, unit_price_micro)


@given(
    units=st.integers(min_value=0, max_value=10**6),
    unit_price_micro=st.integers(min_value=0, max_value=10**9),
)
def test_price_for_units_is_monotonic_and_close(units: int, unit_price_micro: int) -> None:
    price = price_for_units(units, unit_price_micro)
    assert price <= price_for_units(units + 1, unit_price_micro)
    assert price <= price_for_units(units, unit_price_micro + 1)
    # never more than half a µAIT away from the exact amount
    assert abs(price * UNITS_PER_PRICE - units * unit_price_micro) * 2 <= UNITS_PER_PRICE


# --- estimates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "expected"),
    [
        ("", 256, 256),
        ("a", 10, 11),
        ("abcd", 10, 11),
        ("abcde", 10, 12),
        ("x" * 400, 0, 100),
        ("x" * 401, 1, 102),
    ],
)
def test_estimate_units(prompt: str, max_tokens: int, expected: int) -> None:
    assert CHARS_PER_TOKEN == 4
    assert estimate_units(prompt, max_tokens) == expected


def test_estimate_units_counts_characters_not_bytes() -> None:
    assert estimate_units("ééééé", 0) == 2  # 5 characters, 10 UTF-8 bytes


def test_estimate_cost_none_without_miners() -> None:
    assert estimate_cost_micro(1000, []) is None
    assert estimate_cost_micro(1000, ()) is None


def test_estimate_cost_single_miner() -> None:
    assert estimate_cost_micro(1000, [20_000]) == 20_000
    assert estimate_cost_micro(27, [20_000]) == 540


def test_estimate_cost_uses_median_low() -> None:
    # odd count: the middle price
    assert estimate_cost_micro(1000, [30_000, 10_000, 20_000]) == 20_000
    # even count: the lower middle price, never an average that nobody posted
    assert estimate_cost_micro(1000, [10_000, 40_000]) == 10_000
    assert estimate_cost_micro(1000, [40_000, 10_000, 30_000, 20_000]) == 20_000
    # a free miner counts too
    assert estimate_cost_micro(1000, [0, 0, 50_000]) == 0


def test_estimate_cost_rounds_like_a_receipt() -> None:
    assert estimate_cost_micro(1, [500, 500, 500]) == 1
    assert estimate_cost_micro(3, [500]) == 2


@given(
    units=st.integers(min_value=0, max_value=10**7),
    prices=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=20),
)
def test_estimate_cost_property(units: int, prices: list[int]) -> None:
    expected = price_for_units(units, statistics.median_low(prices))
    assert estimate_cost_micro(units, prices) == expected
    assert estimate_cost_micro(units, list(reversed(prices))) == expected


def test_model_speed_tokens_per_second() -> None:
    assert ModelSpeed(200, 2.0, 0.0).tokens_per_second == 100.0
    assert ModelSpeed(0, 2.0, 0.0).tokens_per_second is None
    assert ModelSpeed(10, 0.0, 0.0).tokens_per_second is None
    assert ModelSpeed(-1, 1.0, 0.0).tokens_per_second is None


def test_estimate_time_none_without_history() -> None:
    assert estimate_time_seconds(256, None) is None
    assert estimate_time_seconds(256, ModelSpeed(0, 0.0, 3.0)) is None


def test_estimate_time_adds_wait_and_generation() -> None:
    speed = ModelSpeed(completion_tokens=1000, run_seconds=10.0, median_wait_seconds=1.5)
    assert estimate_time_seconds(256, speed) == 4.06  # 1.5 + 256 / 100
    assert estimate_time_seconds(0, speed) == 1.5


def test_estimate_time_rounds_to_milliseconds() -> None:
    speed = ModelSpeed(completion_tokens=3, run_seconds=1.0, median_wait_seconds=0.0)
    assert estimate_time_seconds(1, speed) == 0.333
    assert estimate_time_seconds(2, speed) == 0.667
