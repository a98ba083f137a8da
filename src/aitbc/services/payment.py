"""Money steps inside other use cases' transactions: a job's hold, its settlement or
refund, the receipt's anchor, a mint (DESIGN.md sections 3 and 6).

Each step takes the caller's ``Connection`` and never commits: the balance changes
and the ledger transactions that explain them are written in the same database
transaction as the change that causes them (the job's submission, completion or
end), so they are all committed or none is. A job's hold is paid out or refunded by
whichever conditional transition ends the job, and only one can: exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from aitbc.domain.canonical import sha256_hex
from aitbc.domain.ledger import (
    ESCROW,
    TxType,
    balance_deltas,
    encode_transaction,
    transaction_body,
)
from aitbc.domain.money import MAX_SUPPLY_MICRO
from aitbc.domain.payment import Settlement
from aitbc.errors import InsufficientFunds
from aitbc.storage import ledger_queries
from aitbc.storage.ledger_queries import NewTransaction


def new_transaction(
    tx_type: TxType,
    *,
    sender: str | None,
    recipient: str | None,
    amount_micro: int,
    timestamp: int,
    fee_micro: int = 0,
    ref: str | None = None,
    extra: Mapping[str, Any] | None = None,
    signature: Mapping[str, str] | None = None,
) -> NewTransaction:
    """A transaction ready to append: built, hashed and encoded once."""
    body = transaction_body(
        tx_type=tx_type,
        sender=sender,
        recipient=recipient,
        amount_micro=amount_micro,
        fee_micro=fee_micro,
        ref=ref,
        timestamp=timestamp,
        extra=extra,
    )
    document, encoded = encode_transaction(body, signature)
    nonce = document.get("nonce")
    return NewTransaction(
        id=document["id"],
        type=tx_type.value,
        sender=sender,
        recipient=recipient,
        amount_micro=amount_micro,
        fee_micro=fee_micro,
        ref=ref,
        timestamp=timestamp,
        document=encoded.decode("utf-8"),
        nonce=nonce if isinstance(nonce, int) else None,
    )


def document_of(tx: NewTransaction) -> dict[str, Any]:
    """A transaction's document as a JSON object (parsed back from its canonical text)."""
    document: dict[str, Any] = json.loads(tx.document)
    return document


def record(
    connection: Connection,
    transactions: Sequence[NewTransaction],
    held: Mapping[str, int] | None = None,
) -> None:
    """Apply ``transactions`` to the live balances, as the replay rule says
    (``domain.ledger.balance_deltas``: derived, so balances and the ledger cannot
    disagree), with ``held`` added to what addresses hold in escrow, and append them.
    :class:`InsufficientFunds` (the transaction must roll back) when a balance would
    go below zero."""
    changes: dict[str, tuple[int, int]] = {
        address: (0, delta) for address, delta in (held or {}).items()
    }
    for tx in transactions:
        for address, delta in balance_deltas(
            tx.sender, tx.recipient, tx.amount_micro, tx.fee_micro
        ).items():
            balance, in_escrow = changes.get(address, (0, 0))
            changes[address] = (balance + delta, in_escrow)
    ledger_queries.change_balances(connection, changes)
    ledger_queries.append_transactions(connection, transactions)


def mint(
    connection: Connection, address: str, amount_micro: int, timestamp: int, ref: str
) -> NewTransaction:
    """Create ``amount_micro`` for ``address`` (the supply grows by as much). ``ref``
    names the mint uniquely, so two equal mints in one second differ in id."""
    tx = new_transaction(
        TxType.MINT,
        sender=None,
        recipient=address,
        amount_micro=amount_micro,
        timestamp=timestamp,
        ref=ref,
    )
    record(connection, [tx])
    return tx


def _escrow(
    tx_type: TxType,
    sender: str,
    recipient: str,
    amount_micro: int,
    job_id: str,
    timestamp: int,
    fee_micro: int = 0,
) -> NewTransaction:
    """An escrow transaction of a job (its ``ref`` is the job id)."""
    return new_transaction(
        tx_type,
        sender=sender,
        recipient=recipient,
        amount_micro=amount_micro,
        fee_micro=fee_micro,
        ref=job_id,
        timestamp=timestamp,
    )


def hold_in_escrow(
    connection: Connection, client_id: str, ref: str, hold_micro: int, timestamp: int
) -> None:
    """Move a hold from a client into escrow (``ref``: the job or marketplace trade it
    is for); :class:`InsufficientFunds` (the transaction must roll back) when the
    client's balance is short. The client's ``held`` counts it until it is paid out
    or refunded."""
    if hold_micro > MAX_SUPPLY_MICRO:  # no balance can cover it (nor a transaction say it)
        raise InsufficientFunds(
            "the job may cost more than the whole AIT supply", error_code="insufficient_funds"
        )
    if hold_micro:
        hold = _escrow(TxType.ESCROW_HOLD, client_id, ESCROW, hold_micro, ref, timestamp)
        record(connection, [hold], held={client_id: hold_micro})


def refund_from_escrow(
    connection: Connection, client_id: str, ref: str, hold_micro: int | None, timestamp: int
) -> None:
    """Give a hold back to its client: a job's whole hold (cancel, failure, timeout),
    or what a marketplace trade's jobs did not use (its expiry)."""
    if hold_micro:
        refund = _escrow(TxType.ESCROW_REFUND, ESCROW, client_id, hold_micro, ref, timestamp)
        record(connection, [refund], held={client_id: -hold_micro})


def receipt_anchor(receipt_id: str, signed_receipt: bytes, timestamp: int) -> NewTransaction:
    """The ``receipt`` transaction anchoring a signed receipt (its canonical bytes)."""
    return new_transaction(
        TxType.RECEIPT,
        sender=None,
        recipient=None,
        amount_micro=0,
        ref=sha256_hex(signed_receipt),
        extra={"receipt_id": receipt_id},
        timestamp=timestamp,
    )


def settle_job(
    connection: Connection,
    *,
    client_id: str,
    miner_id: str,
    job_id: str,
    hold_micro: int | None,
    settlement: Settlement | None,
    anchor: NewTransaction,
    timestamp: int,
) -> None:
    """Record a completed job: its receipt's anchor and, when it held funds, the
    price out of escrow (the miner's share to the miner, the fee to ``treasury``)
    and the rest of the hold back to the client."""
    transactions = [anchor]
    if not hold_micro or settlement is None:
        record(connection, transactions)
        return
    if settlement.price_micro:
        transactions.append(
            _escrow(
                TxType.ESCROW_RELEASE,
                ESCROW,
                miner_id,
                settlement.miner_micro,
                job_id,
                timestamp,
                fee_micro=settlement.fee_micro,
            )
        )
    if settlement.refund_micro:
        transactions.append(
            _escrow(
                TxType.ESCROW_REFUND,
                ESCROW,
                client_id,
                settlement.refund_micro,
                job_id,
                timestamp,
            )
        )
    record(connection, transactions, held={client_id: -hold_micro})


def settle_trade_job(
    connection: Connection,
    *,
    client_id: str,
    miner_id: str,
    trade_id: str,
    settlement: Settlement,
    anchor: NewTransaction,
    timestamp: int,
) -> None:
    """Record a completed job of a trade: its receipt's anchor and its price out of
    the trade's escrow (``escrow_release``, ``ref`` = the trade id: the miner's share
    to the miner, the fee to ``treasury``). What the job held beyond its price stays
    the trade's, in escrow, for its next jobs or its refund."""
    transactions = [anchor]
    if settlement.price_micro:
        transactions.append(
            _escrow(
                TxType.ESCROW_RELEASE,
                ESCROW,
                miner_id,
                settlement.miner_micro,
                trade_id,
                timestamp,
                fee_micro=settlement.fee_micro,
            )
        )
    record(connection, transactions, held={client_id: -settlement.price_micro})
