"""AIT amounts: integers of micro-AIT inside, numbers with at most 6 decimals outside.

1 AIT = 1_000_000 µAIT. Arithmetic is integer only; conversion goes through
:class:`decimal.Decimal` so a JSON number like ``0.05`` becomes exactly 50_000 µAIT.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation

from aitbc.errors import ValidationFailed

MICRO_PER_AIT = 1_000_000
UNITS_PER_PRICE = 1_000  # a miner's price is AIT per 1,000 units (tokens)
MAX_SUPPLY_MICRO = 10**9 * MICRO_PER_AIT
_EXACT = Context(prec=MAX_PREC, Emin=MIN_EMIN, Emax=MAX_EMAX)


def to_micro(amount: Decimal | int | float | str) -> int:
    """Parse an AIT amount into µAIT; reject more than 6 decimals, negatives, NaN."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation as exc:
        raise ValidationFailed(f"not an amount: {amount!r}") from exc
    if not value.is_finite() or value < 0:
        raise ValidationFailed(f"amount must be a finite non-negative number: {amount!r}")
    if value > MAX_SUPPLY_MICRO // MICRO_PER_AIT:
        raise ValidationFailed(f"amount exceeds total supply: {amount!r}")
    # Exact scaling: the default 28-digit context would round extra decimals away.
    micro = value.scaleb(6, _EXACT)
    if micro != micro.to_integral_value():
        raise ValidationFailed(f"amount has more than 6 decimals: {amount!r}")
    return int(micro)


def to_ait(micro: int) -> float:
    """µAIT as a JSON-friendly number: the double nearest ``micro`` / 10^6, which is
    what a JSON parser reads from the amount written with 6 decimals."""
    # int / int is correctly rounded in CPython (no float intermediate for the
    # operands), so this equals float(Decimal(micro) / 10**6) at a fraction of the cost.
    return micro / MICRO_PER_AIT


def price_for_units(units: int, unit_price_micro: int) -> int:
    """``units`` × price per 1,000 units, in µAIT, rounded to nearest, halves up."""
    numerator = units * unit_price_micro
    return (2 * numerator + UNITS_PER_PRICE) // (2 * UNITS_PER_PRICE)
