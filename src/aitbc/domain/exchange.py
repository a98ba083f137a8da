"""The exchange's arithmetic (DESIGN.md section 7): a market's tick and lot sizes, its
fees, what an order locks, and what one fill moves. Pure: integers only, no I/O.

Amounts inside are integers of micro-units (µAIT for the base asset, 10^-6 of the
quote asset, e.g. µUSD). A price is an integer number of ticks and an amount an
integer number of lots; a market is valid only when one lot at one tick is a whole
number of quote micro-units, so no fill ever rounds its quote leg.

Fees are taken in AIT, each side at its own rate (maker for the resting order, taker
for the incoming one), rounded down to the µAIT: rounding down is subadditive, so
the fees of an order's fills never add up to more than the fee on the whole order,
which is what a sell order locks up front. One fill (``trade_fill`` on chain):

- the seller parts with ``base + seller_fee`` AIT and receives ``quote``;
- the buyer receives ``base - buyer_fee`` AIT and pays ``quote``;
- ``treasury`` receives ``buyer_fee + seller_fee``.

So AIT and the quote asset are conserved exactly, fill by fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from aitbc.domain.orderbook import Fill, OrderType, Side
from aitbc.errors import ValidationFailed

MICRO_PER_UNIT = 1_000_000
PPM = 1_000_000  # fee rates are integer parts per million (0.001 = 1,000 ppm)
# The largest amount of either asset one order or balance may name (10^9 units),
# so every product below stays an exact integer well inside 64 bits.
MAX_AMOUNT_MICRO = 10**9 * MICRO_PER_UNIT


def parse_micro(value: Decimal | int | float | str, what: str) -> int:
    """A positive decimal amount (at most 6 decimals, at most 10^9) as micro-units;
    :class:`ValidationFailed` otherwise."""
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValidationFailed(f"{what} is not a number: {value!r}") from exc
    if not number.is_finite() or number <= 0:
        raise ValidationFailed(f"{what} must be a positive number, got {value!r}")
    micro = number.scaleb(6)
    if micro > MAX_AMOUNT_MICRO:
        raise ValidationFailed(f"{what} is more than 10^9: {value!r}")
    if micro != micro.to_integral_value():
        raise ValidationFailed(f"{what} has more than 6 decimals: {value!r}")
    return int(micro)


def fee_ppm(rate: Decimal | float | str) -> int:
    """A fee fraction (``0.001``) as integer parts per million; ValueError beyond
    whole ppm or outside [0, 1)."""
    parts = Decimal(str(rate)) * PPM
    if parts != parts.to_integral_value() or not 0 <= parts < PPM:
        raise ValueError(f"a fee is a fraction in [0, 1) in whole parts per million: {rate}")
    return int(parts)


def fee_micro(amount_micro: int, rate_ppm: int) -> int:
    """The fee on ``amount_micro`` at ``rate_ppm``, rounded down to the micro-unit."""
    return amount_micro * rate_ppm // PPM


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One market ``BASE-QUOTE``: its tick (quote micro-units per tick), lot (base
    micro-units per lot) and fee rates (ppm)."""

    name: str
    base: str
    quote: str
    tick_micro: int
    lot_micro: int
    maker_fee_ppm: int
    taker_fee_ppm: int

    def __post_init__(self) -> None:
        if self.tick_micro <= 0 or self.lot_micro <= 0:
            raise ValueError(f"{self.name}: tick and lot sizes are positive")
        if (self.tick_micro * self.lot_micro) % MICRO_PER_UNIT:
            raise ValueError(
                f"{self.name}: one lot at one tick must be a whole quote micro-unit "
                f"(tick {self.tick_micro} x lot {self.lot_micro} / 10^6)"
            )
        if self.name != f"{self.base}-{self.quote}":
            raise ValueError(f"a market is named BASE-QUOTE: {self.name}")

    @property
    def quote_per_lot_tick(self) -> int:
        """Quote micro-units of one lot at a price of one tick."""
        return self.tick_micro * self.lot_micro // MICRO_PER_UNIT

    def ticks(self, price_micro: int) -> int:
        """A price (quote micro-units per base unit) as ticks; 422 off the tick."""
        ticks, rest = divmod(price_micro, self.tick_micro)
        if rest or ticks <= 0:
            raise ValidationFailed(
                f"price {price_micro / MICRO_PER_UNIT} is not a multiple of the tick "
                f"{self.tick_micro / MICRO_PER_UNIT} of {self.name}",
                error_code="off_tick",
            )
        return ticks

    def lots(self, amount_micro: int) -> int:
        """An amount (base micro-units) as lots; 422 off the lot size."""
        lots, rest = divmod(amount_micro, self.lot_micro)
        if rest or lots <= 0:
            raise ValidationFailed(
                f"amount {amount_micro / MICRO_PER_UNIT} is not a multiple of the lot size "
                f"{self.lot_micro / MICRO_PER_UNIT} of {self.name}",
                error_code="off_lot",
            )
        return lots

    def notional_micro(self, lots: int, ticks: int) -> int:
        """Quote micro-units of ``lots`` at ``ticks``."""
        return lots * ticks * self.quote_per_lot_tick

    def sell_lock_micro(self, lots: int) -> int:
        """What a sell order of ``lots`` locks: the AIT and the highest fee it can pay
        (each of its fills may be maker or taker)."""
        base = lots * self.lot_micro
        return base + fee_micro(base, max(self.maker_fee_ppm, self.taker_fee_ppm))


@dataclass(frozen=True, slots=True)
class FillSettlement:
    """What one fill moves, in micro-units."""

    buyer: str
    seller: str
    buyer_order_id: str
    seller_order_id: str
    base_micro: int
    quote_micro: int
    buyer_fee_micro: int
    seller_fee_micro: int

    @property
    def buyer_receives_micro(self) -> int:
        """AIT the buyer gains: the fill less its fee (the transaction's ``amount``)."""
        return self.base_micro - self.buyer_fee_micro

    @property
    def fees_micro(self) -> int:
        """Both sides' fees (the transaction's ``fee``), to ``treasury``."""
        return self.buyer_fee_micro + self.seller_fee_micro

    @property
    def seller_pays_micro(self) -> int:
        """AIT the seller parts with: the fill plus its own fee."""
        return self.base_micro + self.seller_fee_micro


def settle(spec: MarketSpec, fill: Fill) -> FillSettlement:
    """The money of one fill: the taker pays the taker rate, the maker the maker rate."""
    base = fill.lots * spec.lot_micro
    maker_fee = fee_micro(base, spec.maker_fee_ppm)
    taker_fee = fee_micro(base, spec.taker_fee_ppm)
    taker_buys = fill.taker_side is Side.BUY
    return FillSettlement(
        buyer=fill.taker_owner if taker_buys else fill.maker_owner,
        seller=fill.maker_owner if taker_buys else fill.taker_owner,
        buyer_order_id=fill.taker_order_id if taker_buys else fill.maker_order_id,
        seller_order_id=fill.maker_order_id if taker_buys else fill.taker_order_id,
        base_micro=base,
        quote_micro=spec.notional_micro(fill.lots, fill.price_ticks),
        buyer_fee_micro=taker_fee if taker_buys else maker_fee,
        seller_fee_micro=maker_fee if taker_buys else taker_fee,
    )


def lock_released(
    spec: MarketSpec,
    side: Side,
    order_type: OrderType,
    limit_ticks: int | None,
    settlement: FillSettlement,
    lots: int,
) -> int:
    """How much of an order's lock one of its fills uses up: a seller's AIT and fee;
    a limit buyer's quote at its own limit (it may have paid less: the rest is
    unlocked); a market buyer's quote as paid (it locked exactly its sweep)."""
    if side is Side.SELL:
        return settlement.seller_pays_micro
    if order_type is OrderType.LIMIT and limit_ticks is not None:
        return spec.notional_micro(lots, limit_ticks)
    return settlement.quote_micro
