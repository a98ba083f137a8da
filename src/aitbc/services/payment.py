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
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from aitbc.domain.canonical import sha256_hex
from aitbc.domain.ledger import (
    ESCROW,
    TREASURY,
    TxType,
    encode_transaction,
    transaction_body,
)
from aitbc.domain.payment import Settlement
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
    ledger_queries.change_balances(connection, {address: (amount_micro, 0)})
    ledger_queries.append_transactions(connection, [tx])
    return tx


def hold_for_job(
    connection: Connection, client_id: str, job_id: str, hold_micro: int, timestamp: int
) -> None:
    """Move a job's hold from its client into escrow; :class:`InsufficientFunds` (the
    transaction must roll back) when the client's balance is short."""
    if hold_micro == 0:
        return
    ledger_queries.change_balances(
        connection, {client_id: (-hold_micro, hold_micro), ESCROW: (hold_micro, 0)}
    )
    ledger_queries.append_transactions(
        connection,
        [
            new_transaction(
                TxType.ESCROW_HOLD,
                sender=client_id,
                recipient=ESCROW,
                amount_micro=hold_micro,
                ref=job_id,
                timestamp=timestamp,
            )
        ],
    )


def refund_job(
    connection: Connection, client_id: str, job_id: str, hold_micro: int | None, timestamp: int
) -> None:
    """Give a job's whole hold back to its client (cancel, failure, timeout)."""
    if not hold_micro:
        return
    ledger_queries.change_balances(
        connection, {client_id: (hold_micro, -hold_micro), ESCROW: (-hold_micro, 0)}
    )
    ledger_queries.append_transactions(
        connection,
        [
            new_transaction(
                TxType.ESCROW_REFUND,
                sender=ESCROW,
                recipient=client_id,
                amount_micro=hold_micro,
                ref=job_id,
                timestamp=timestamp,
            )
        ],
    )


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
    if hold_micro and settlement is not None:
        ledger_queries.change_balances(
            connection,
            _merge(
                (client_id, settlement.refund_micro, -hold_micro),
                (miner_id, settlement.miner_micro, 0),
                (TREASURY, settlement.fee_micro, 0),
                (ESCROW, -hold_micro, 0),
            ),
        )
        if settlement.price_micro:
            transactions.append(
                new_transaction(
                    TxType.ESCROW_RELEASE,
                    sender=ESCROW,
                    recipient=miner_id,
                    amount_micro=settlement.miner_micro,
                    fee_micro=settlement.fee_micro,
                    ref=job_id,
                    timestamp=timestamp,
                )
            )
        if settlement.refund_micro:
            transactions.append(
                new_transaction(
                    TxType.ESCROW_REFUND,
                    sender=ESCROW,
                    recipient=client_id,
                    amount_micro=settlement.refund_micro,
                    ref=job_id,
                    timestamp=timestamp,
                )
            )
    ledger_queries.append_transactions(connection, transactions)


def _merge(*changes: tuple[str, int, int]) -> dict[str, tuple[int, int]]:
    """Balance and held deltas by address, adding up an address named twice (a
    client paying a job it ran as its own miner cannot happen, but the sum is right)."""
    merged: dict[str, tuple[int, int]] = {}
    for address, delta, held in changes:
        old_delta, old_held = merged.get(address, (0, 0))
        merged[address] = (old_delta + delta, old_held + held)
    return merged
