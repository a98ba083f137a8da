"""The chain: the genesis block, and the sealer that puts pending ledger transactions
into signed, hash-chained blocks (DESIGN.md section 3).

A block is sealed in one database transaction: the block row, its transactions'
block and position, and the sealed balances it ends with are committed together or
not at all, so a sealer killed mid-block leaves no half block. With several
coordinators on one PostgreSQL database an advisory lock lets one seal at a time
(the others skip that beat); on SQLite the writers are serialised already and a
second block at the same height would collide on its primary key.

The sealer replays each transaction over the balances of the previous block, as a
verifier will, before it signs: a transaction that would break the replay rule is
never sealed (that would be a bug elsewhere; sealing stops and says so loudly).
"""

from __future__ import annotations

import asyncio
import json
import logging

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from aitbc.domain.canonical import canonical_bytes
from aitbc.domain.ledger import (
    GENESIS_PREV_HASH,
    MAX_BLOCK_TRANSACTIONS,
    TREASURY,
    LedgerState,
    Transaction,
    block_hash,
    block_header,
    sign_block,
    tx_root,
)
from aitbc.domain.signing import SigningKey
from aitbc.domain.timestamps import unix_seconds
from aitbc.services.events import block_event, publish
from aitbc.services.runtime import Runtime, SealedState
from aitbc.storage import event_queries, ledger_queries
from aitbc.storage.db import transaction
from aitbc.storage.ledger_queries import StoredBlock

log = logging.getLogger(__name__)


def _signed_block(
    signer: SigningKey,
    *,
    height: int,
    prev_hash: str,
    timestamp: int,
    tx_ids: list[str],
    state: LedgerState,
) -> StoredBlock:
    header = block_header(
        height=height,
        prev_hash=prev_hash,
        timestamp=timestamp,
        tx_root=tx_root(tx_ids),
        state_root=state.state_root(),
        tx_count=len(tx_ids),
        sealer=signer.key_id,
    )
    return StoredBlock(
        height=height,
        hash=block_hash(header),
        timestamp=timestamp,
        tx_count=len(tx_ids),
        header=canonical_bytes(header).decode("utf-8"),
        signature=json.dumps(sign_block(header, signer), separators=(",", ":")),
    )


def _seal(
    connection: Connection,
    signer: SigningKey,
    now: int,
    cached: SealedState | None,
    seal_empty: bool,
) -> tuple[StoredBlock, SealedState] | None:
    """Seal the next block (genesis first) in the caller's transaction, or None when
    another sealer holds the lock or nothing is pending."""
    if not ledger_queries.try_sealer_lock(connection):
        return None
    last = ledger_queries.last_block(connection)
    if last is None:
        genesis_state = LedgerState()
        genesis = _signed_block(
            signer,
            height=0,
            prev_hash=GENESIS_PREV_HASH,
            timestamp=now,
            tx_ids=[],
            state=genesis_state,
        )
        ledger_queries.insert_block(connection, genesis)
        event_queries.append(connection, [block_event(genesis, now)])
        return genesis, SealedState(genesis.hash, genesis_state)
    pending = ledger_queries.pending_transactions(connection, MAX_BLOCK_TRANSACTIONS)
    if not pending and not seal_empty:
        return None
    if cached is not None and cached.block_hash == last.hash:
        state = cached.state.copy()
    else:
        state = LedgerState(ledger_queries.chain_balances(connection))
    touched: set[str] = set()
    latest = max(now, last.timestamp)
    for stored in pending:
        tx = Transaction.parse(json.loads(stored.document))
        state.apply(tx)  # raises VerificationFailed: never seal a broken replay
        for address in (tx.sender, tx.recipient):
            if address is not None:
                touched.add(address)
        if tx.fee_micro:
            touched.add(TREASURY)
        latest = max(latest, tx.timestamp)
    block = _signed_block(
        signer,
        height=last.height + 1,
        prev_hash=last.hash,
        timestamp=latest,
        tx_ids=[stored.id for stored in pending],
        state=state,
    )
    ledger_queries.insert_block(connection, block)
    ledger_queries.mark_sealed(connection, block.height, [stored.seq for stored in pending])
    ledger_queries.write_chain_balances(
        connection, {address: state.balance(address) for address in touched}
    )
    event_queries.append(connection, [block_event(block, now)])
    return block, SealedState(block.hash, state)


async def seal_once(runtime: Runtime) -> StoredBlock | None:
    """Seal one block if transactions are pending (or empty blocks are configured);
    the genesis block first of all. None when there was nothing to do."""
    signer = runtime.signing_key()
    now = unix_seconds(runtime.clock())
    try:
        result = await transaction(
            runtime.engine,
            _seal,
            signer,
            now,
            runtime.sealed_state,
            runtime.settings.seal_empty_blocks,
        )
    except IntegrityError:
        # Another coordinator sealed this height first (SQLite has no advisory lock).
        runtime.sealed_state = None
        return None
    if result is None:
        return None
    block, runtime.sealed_state = result
    runtime.metrics.blocks.inc()
    publish(runtime, ())
    log.info(
        "block %d sealed: %d transactions",
        block.height,
        block.tx_count,
        extra={"height": block.height, "block_hash": block.hash, "transactions": block.tx_count},
    )
    return block


async def ensure_genesis(runtime: Runtime) -> None:
    """Create the genesis block unless the chain has one (at start-up)."""

    def has_genesis(connection: Connection) -> bool:
        return ledger_queries.last_block(connection) is not None

    if await transaction(runtime.engine, has_genesis):
        return
    block = await seal_once(runtime)
    if block is not None and block.height == 0:
        log.info("genesis block %s", block.hash)


async def run_forever(runtime: Runtime) -> None:
    """Seal every ``block_interval_seconds`` until cancelled; errors are logged and
    retried on the next beat (a database hiccup must not stop the chain)."""
    interval = runtime.settings.block_interval_seconds
    while True:
        # The first beat one interval after start-up (genesis is sealed at start-up).
        await asyncio.sleep(interval)
        try:
            while True:
                block = await seal_once(runtime)
                if block is None or block.tx_count < MAX_BLOCK_TRANSACTIONS:
                    break  # a full block means more is pending: seal again at once
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sealing failed; retrying in %.1f s", interval)
            runtime.sealed_state = None
