"""The exchange's arithmetic (domain.exchange) and the ``trade_fill`` transaction's
rules (domain.ledger): on random order streams every fill conserves AIT and the
quote asset exactly, fees are the rounded-down rate of each side, and no order ever
releases more than it locked."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitbc.domain.exchange import (
    FillSettlement,
    MarketSpec,
    fee_micro,
    fee_ppm,
    lock_released,
    parse_micro,
    settle,
)
from aitbc.domain.ledger import (
    TREASURY,
    Transaction,
    TxType,
    balance_deltas,
    check_transaction_rules,
    finish_transaction,
    transaction_body,
)
from aitbc.domain.orderbook import OrderBook, OrderRequest, OrderType, Side, TimeInForce
from aitbc.errors import ValidationFailed, VerificationFailed

SPEC = MarketSpec("AIT-USD", "AIT", "USD", 100, 10_000, 1_000, 2_000)


def test_a_market_needs_whole_quote_units_per_lot_and_tick() -> None:
    with pytest.raises(ValueError, match="whole quote micro-unit"):
        MarketSpec("AIT-USD", "AIT", "USD", 1, 1_000, 0, 0)
    with pytest.raises(ValueError, match="BASE-QUOTE"):
        MarketSpec("AITUSD", "AIT", "USD", 100, 10_000, 0, 0)
    assert SPEC.quote_per_lot_tick == 1


def test_prices_and_amounts_off_the_grid_are_refused() -> None:
    assert SPEC.ticks(parse_micro("2.5", "price")) == 25_000
    assert SPEC.lots(parse_micro("1.25", "amount")) == 125
    with pytest.raises(ValidationFailed) as off_tick:
        SPEC.ticks(parse_micro("2.00001", "price"))
    assert off_tick.value.error_code == "off_tick"
    with pytest.raises(ValidationFailed) as off_lot:
        SPEC.lots(parse_micro("0.001", "amount"))
    assert off_lot.value.error_code == "off_lot"
    for bad in ("0", "-1", "1e400", "nan", "0.0000001"):
        with pytest.raises(ValidationFailed):
            parse_micro(bad, "amount")
    assert fee_ppm("0.001") == 1_000
    with pytest.raises(ValueError):
        fee_ppm("0.0000001")


def test_a_fill_moves_both_legs_and_pays_each_sides_rate() -> None:
    from aitbc.domain.orderbook import Fill

    fill = Fill("maker", "alice", "taker", "bob", Side.BUY, 25_000, 400)  # 4 AIT at 2.5
    settled = settle(SPEC, fill)
    assert settled == FillSettlement(
        buyer="bob",
        seller="alice",
        buyer_order_id="taker",
        seller_order_id="maker",
        base_micro=4_000_000,
        quote_micro=10_000_000,
        buyer_fee_micro=8_000,  # taker 0.2 %
        seller_fee_micro=4_000,  # maker 0.1 %
    )
    assert settled.buyer_receives_micro == 3_992_000
    assert settled.seller_pays_micro == 4_004_000
    assert settled.fees_micro == 12_000


orders = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from([Side.BUY, Side.SELL]),
        st.sampled_from(["limit", "limit", "limit", "market"]),
        st.integers(min_value=90, max_value=110),
        st.integers(min_value=1, max_value=50),
        st.sampled_from(list(TimeInForce)),
    ),
    max_size=120,
)
rates = st.integers(min_value=0, max_value=20_000)


@settings(max_examples=150, deadline=None)
@given(orders, rates, rates)
def test_random_streams_conserve_every_asset_and_never_overdraw_a_lock(
    stream: list[tuple[str, Side, str, int, int, TimeInForce]], maker_ppm: int, taker_ppm: int
) -> None:
    spec = MarketSpec("AIT-USD", "AIT", "USD", 100, 10_000, maker_ppm, taker_ppm)
    book = OrderBook()
    ait: dict[str, int] = defaultdict(int)
    usd: dict[str, int] = defaultdict(int)
    locks: dict[str, int] = {}
    kinds: dict[str, tuple[Side, OrderType, int | None]] = {}
    for index, (owner, side, kind, price, lots, tif) in enumerate(stream):
        order_type = OrderType(kind)
        limit = price if order_type is OrderType.LIMIT else None
        tif = tif if order_type is OrderType.LIMIT else TimeInForce.IOC
        order_id = f"o{index}"
        if side is Side.SELL:
            lock = spec.sell_lock_micro(lots)
        elif limit is not None:
            lock = spec.notional_micro(lots, limit)
        else:
            lock = book.sweep_cost(owner, Side.BUY, lots)[1] * spec.quote_per_lot_tick
        locks[order_id] = lock
        kinds[order_id] = (side, order_type, limit)
        result = book.submit(OrderRequest(order_id, owner, side, order_type, lots, limit, tif))
        for fill in result.fills:
            settled = settle(spec, fill)
            assert settled.buyer_fee_micro == fee_micro(
                settled.base_micro, taker_ppm if fill.taker_side is Side.BUY else maker_ppm
            )
            for address, delta in balance_deltas(
                settled.seller, settled.buyer, settled.buyer_receives_micro, settled.fees_micro
            ).items():
                ait[address] += delta
            usd[settled.buyer] -= settled.quote_micro
            usd[settled.seller] += settled.quote_micro
            for party in (fill.maker_order_id, fill.taker_order_id):
                party_side, party_type, party_limit = kinds[party]
                locks[party] -= lock_released(
                    spec, party_side, party_type, party_limit, settled, fill.lots
                )
                assert locks[party] >= 0, "an order released more than it locked"
        if order_type is OrderType.MARKET and side is Side.BUY:
            assert locks[order_id] == 0, "a market buy locks exactly what it pays"
    assert sum(ait.values()) == 0
    assert sum(usd.values()) == 0
    assert ait[TREASURY] >= 0


def _fill_tx(**changes: object) -> Transaction:
    values: dict[str, object] = {
        "tx_type": TxType.TRADE_FILL,
        "sender": "client_" + "a" * 32,
        "recipient": "client_" + "b" * 32,
        "amount_micro": 3_992_000,
        "fee_micro": 12_000,
        "ref": "trd_1",
        "timestamp": 1_700_000_000,
        "extra": {"quote_amount": 10.0},
    }
    values.update(changes)
    return Transaction.parse(finish_transaction(transaction_body(**values)))  # type: ignore[arg-type]


def test_a_trade_fill_goes_between_two_users_and_carries_its_quote_leg() -> None:
    check_transaction_rules(_fill_tx())
    for changes, why in (
        ({"sender": "escrow"}, "user account"),
        ({"recipient": "treasury"}, "user account"),
        ({"recipient": "client_" + "a" * 32}, "differ"),
        ({"ref": None}, "trade id"),
        ({"extra": None}, "quote_amount"),
    ):
        with pytest.raises(VerificationFailed, match=why):
            check_transaction_rules(_fill_tx(**changes))
    with pytest.raises(VerificationFailed, match="quote_amount"):
        check_transaction_rules(
            Transaction.parse(
                finish_transaction(
                    transaction_body(
                        tx_type=TxType.MINT,
                        sender=None,
                        recipient="client_" + "a" * 32,
                        amount_micro=1,
                        fee_micro=0,
                        ref="m",
                        timestamp=1,
                        extra={"quote_amount": 1.0},
                    )
                )
            )
        )
    with pytest.raises(VerificationFailed) as bad_amount:
        _fill_tx(extra={"quote_amount": 0.0000001})
    assert bad_amount.value.error_code == "invalid_amount"
