"""Property tests of paying for jobs on the pure ledger (issue 14).

A model of the coordinator's money paths, built only from the domain (the hold and
settlement arithmetic of ``domain.payment``, the transactions and replay rule of
``domain.ledger``), driven by random interleavings of submits, completions, cancels,
failures, timeouts, transfers and mints. Whatever happens: supply changes only by
mint, no balance is ever negative, escrow holds exactly the unfinished jobs' holds,
and a completed job's client pays exactly the receipt's price, which is exactly the
miner's share plus the treasury's fee.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from aitbc.domain.ledger import (
    ESCROW,
    TREASURY,
    LedgerState,
    Transaction,
    TxType,
    finish_transaction,
    transaction_body,
)
from aitbc.domain.money import price_for_units
from aitbc.domain.payment import fee_micro, job_hold_micro, settle
from aitbc.errors import ValidationFailed, VerificationFailed

CLIENTS = ("client_a", "client_b", "client_c")
MINERS = ("miner-1", "miner-2")
NOW = 1_770_000_000


def tx(
    tx_type: TxType,
    sender: str | None,
    recipient: str | None,
    amount: int,
    *,
    fee: int = 0,
    ref: str | None = None,
    extra: dict[str, object] | None = None,
) -> Transaction:
    body = transaction_body(
        tx_type=tx_type,
        sender=sender,
        recipient=recipient,
        amount_micro=amount,
        fee_micro=fee,
        ref=ref,
        timestamp=NOW,
        extra=extra,
    )
    return Transaction.parse(finish_transaction(body))


@dataclass
class Job:
    client: str
    prompt: str
    max_tokens: int
    max_price: int
    hold: int


class Books:
    """The ledger plus what the coordinator knows about unfinished jobs."""

    def __init__(self, fee_basis_points: int) -> None:
        self.state = LedgerState()
        self.fee_basis_points = fee_basis_points
        self.jobs: dict[str, Job] = {}
        self.nonce = 0
        self.minted = 0
        self.counter = 0

    def apply(self, transaction: Transaction) -> bool:
        """Apply one transaction; False (and nothing changed) when it is refused."""
        before = dict(self.state.balances), self.state.supply_micro
        try:
            self.state.apply(transaction)
        except VerificationFailed:
            assert (dict(self.state.balances), self.state.supply_micro) == before
            return False
        return True

    def mint(self, client: str, amount: int) -> None:
        self.counter += 1
        if self.apply(tx(TxType.MINT, None, client, amount, ref=f"mint_{self.counter}")):
            self.minted += amount

    def submit(self, client: str, prompt: str, max_tokens: int, max_price: int) -> None:
        hold = job_hold_micro(prompt, max_tokens, max_price)
        self.counter += 1
        job_id = f"job_{self.counter}"
        if hold == 0 or self.apply(tx(TxType.ESCROW_HOLD, client, ESCROW, hold, ref=job_id)):
            self.jobs[job_id] = Job(client, prompt, max_tokens, max_price, hold)
        else:
            assert self.state.balance(client) < hold  # refused only when short

    def complete(
        self, pick: int, miner: str, prompt_tokens: int, completion_tokens: int, price: int
    ) -> None:
        if not self.jobs:
            return
        job_id = sorted(self.jobs)[pick % len(self.jobs)]
        job = self.jobs.pop(job_id)
        # What a receipt may charge: the domain's bounds (the claim caps the price).
        prompt_tokens = min(prompt_tokens, len(job.prompt.encode()) + 256)
        completion_tokens = min(completion_tokens, job.max_tokens)
        unit_price = min(price, job.max_price)
        receipt_price = price_for_units(prompt_tokens + completion_tokens, unit_price)
        split = settle(job.hold, receipt_price, self.fee_basis_points)
        assert split.price_micro == receipt_price == split.miner_micro + split.fee_micro
        assert split.fee_micro == fee_micro(receipt_price, self.fee_basis_points)
        client_before = self.state.balance(job.client)
        miner_before = self.state.balance(miner)
        if split.price_micro:
            assert self.apply(
                tx(
                    TxType.ESCROW_RELEASE,
                    ESCROW,
                    miner,
                    split.miner_micro,
                    fee=split.fee_micro,
                    ref=job_id,
                )
            )
        if split.refund_micro:
            assert self.apply(
                tx(TxType.ESCROW_REFUND, ESCROW, job.client, split.refund_micro, ref=job_id)
            )
        # The client paid exactly the receipt's price out of its hold.
        assert job.hold - (self.state.balance(job.client) - client_before) == receipt_price
        assert self.state.balance(miner) - miner_before == split.miner_micro

    def end_unpaid(self, pick: int) -> None:
        """Cancel, failure, lapsed attempts or timeout: the whole hold comes back."""
        if not self.jobs:
            return
        job_id = sorted(self.jobs)[pick % len(self.jobs)]
        job = self.jobs.pop(job_id)
        before = self.state.balance(job.client)
        if job.hold:
            assert self.apply(tx(TxType.ESCROW_REFUND, ESCROW, job.client, job.hold, ref=job_id))
        assert self.state.balance(job.client) - before == job.hold

    def transfer(self, sender: str, recipient: str, amount: int) -> None:
        if sender == recipient:
            return
        self.nonce += 1
        before = self.state.balance(sender)
        accepted = self.apply(
            tx(TxType.TRANSFER, sender, recipient, amount, extra={"nonce": self.nonce})
        )
        assert accepted == (before >= amount)

    def check(self) -> None:
        balances = self.state.balances
        assert all(value > 0 for value in balances.values())
        assert self.state.supply_micro == self.minted == sum(balances.values())
        assert self.state.balance(ESCROW) == sum(job.hold for job in self.jobs.values())


prompts = st.text(max_size=40)
operation = st.one_of(
    st.tuples(st.just("mint"), st.sampled_from(CLIENTS), st.integers(1, 10**9)),
    st.tuples(
        st.just("submit"),
        st.sampled_from(CLIENTS),
        prompts,
        st.integers(1, 4096),
        st.integers(0, 5 * 10**6),
    ),
    st.tuples(
        st.just("complete"),
        st.integers(0, 100),
        st.sampled_from(MINERS),
        st.integers(0, 5000),
        st.integers(0, 5000),
        st.integers(0, 5 * 10**6),
    ),
    st.tuples(st.just("end"), st.integers(0, 100)),
    st.tuples(
        st.just("transfer"),
        st.sampled_from(CLIENTS + MINERS + (TREASURY,)),
        st.sampled_from(CLIENTS + MINERS),
        st.integers(1, 10**8),
    ),
)


@settings(max_examples=300, deadline=None)
@given(fee=st.integers(0, 10_000), operations=st.lists(operation, max_size=60))
def test_money_is_conserved_under_any_interleaving(
    fee: int, operations: list[tuple[object, ...]]
) -> None:
    books = Books(fee)
    for op in operations:
        name, *args = op
        getattr(books, "end_unpaid" if name == "end" else str(name))(*args)
        books.check()
    # Every unfinished job ends: escrow empties and the supply is unchanged.
    while books.jobs:
        books.end_unpaid(0)
    books.check()
    assert books.state.balance(ESCROW) == 0


@given(
    prompt=prompts,
    max_tokens=st.integers(1, 32_768),
    max_price=st.integers(0, 10**9),
    prompt_tokens=st.integers(0, 10**6),
    completion_tokens=st.integers(0, 32_768),
    unit_price=st.integers(0, 10**9),
)
def test_no_receipt_within_the_bounds_costs_more_than_its_hold(
    prompt: str,
    max_tokens: int,
    max_price: int,
    prompt_tokens: int,
    completion_tokens: int,
    unit_price: int,
) -> None:
    hold = job_hold_micro(prompt, max_tokens, max_price)
    units = min(prompt_tokens, len(prompt.encode()) + 256) + min(completion_tokens, max_tokens)
    price = price_for_units(units, min(unit_price, max_price))
    assert price <= hold
    split = settle(hold, price, 500)
    assert split.miner_micro + split.fee_micro + split.refund_micro == hold


def test_a_price_above_the_hold_is_refused() -> None:
    try:
        settle(10, 11, 500)
    except ValidationFailed as exc:
        assert exc.error_code == "price_exceeds_hold"
    else:  # pragma: no cover - the assertion is the test
        raise AssertionError("settle accepted a price above the hold")
