"""What a job holds in escrow and how a completed job's price is split (DESIGN.md 6).

Pure arithmetic in integer µAIT, no I/O. At submit the client's hold is the most the
job can cost: its prompt-token bound (the prompt's UTF-8 bytes plus the largest chat
template allowance a miner may declare) plus ``max_tokens``, at the client's
``max_price``, rounded as receipts round. A receipt's units never exceed that bound
and its unit price never exceeds ``max_price`` (``domain.usage``, the claim), and
rounding is monotone, so its ``price`` never exceeds the hold. At completion the
price goes out of escrow (the miner's share to the miner, the fee to ``treasury``)
and the rest of the hold back to the client.
"""

from __future__ import annotations

from dataclasses import dataclass

from aitbc.domain.jobs import MAX_TEMPLATE_TOKENS
from aitbc.domain.money import price_for_units
from aitbc.domain.usage import prompt_token_bound
from aitbc.errors import ValidationFailed

BASIS_POINTS = 10_000
# The default share of each job's price that goes to ``treasury`` (5 %).
DEFAULT_FEE_BASIS_POINTS = 500


def job_hold_micro(prompt: str, max_tokens: int, max_price_micro: int) -> int:
    """The most a job can cost, in µAIT: what submit moves into escrow."""
    units = prompt_token_bound(prompt, MAX_TEMPLATE_TOKENS) + max_tokens
    return price_for_units(units, max_price_micro)


def fee_micro(price_micro: int, fee_basis_points: int) -> int:
    """The treasury's fee on a price: ``fee_basis_points`` / 10,000 of it, rounded to
    the nearest µAIT, halves up (as prices are)."""
    if not 0 <= fee_basis_points <= BASIS_POINTS:
        raise ValueError(f"fee of {fee_basis_points} basis points is not within 0..10000")
    return (2 * price_micro * fee_basis_points + BASIS_POINTS) // (2 * BASIS_POINTS)


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a completed job's hold is paid out: ``miner + fee`` is the receipt's price
    and ``miner + fee + refund`` the whole hold."""

    miner_micro: int
    fee_micro: int
    refund_micro: int

    @property
    def price_micro(self) -> int:
        """What the client paid: the receipt's price."""
        return self.miner_micro + self.fee_micro


def settle(hold_micro: int, price_micro: int, fee_basis_points: int) -> Settlement:
    """Split a hold for a receipt's price; ``price_exceeds_hold`` if the price is more
    than was held (the bounds make that impossible; the check keeps it so)."""
    if price_micro < 0 or hold_micro < 0:
        raise ValueError("amounts are never negative")
    if price_micro > hold_micro:
        raise ValidationFailed(
            f"the receipt's price ({price_micro} µAIT) exceeds what the client holds "
            f"for the job ({hold_micro} µAIT)",
            error_code="price_exceeds_hold",
        )
    fee = fee_micro(price_micro, fee_basis_points)
    return Settlement(
        miner_micro=price_micro - fee, fee_micro=fee, refund_micro=hold_micro - price_micro
    )
