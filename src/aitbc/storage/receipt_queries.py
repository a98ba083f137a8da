"""Receipt and signing-key statements (SQLAlchemy Core over a sync ``Connection``).

Helpers never commit: the calling service owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, insert, select, update

from aitbc.storage.models import Receipt, SigningKeyRecord

RECEIPTS = cast(Table, Receipt.__table__)
KEYS = cast(Table, SigningKeyRecord.__table__)
R = RECEIPTS.c
K = KEYS.c

_INSERT_RECEIPT = insert(RECEIPTS)


def insert_receipt(
    connection: Connection,
    *,
    receipt_id: str,
    job_id: str,
    client_id: str,
    provider: str,
    completed_at: int,
    key_id: str,
    document: str,
) -> None:
    """Store a signed receipt (its canonical JSON text)."""
    connection.execute(
        _INSERT_RECEIPT,
        {
            "id": receipt_id,
            "job_id": job_id,
            "client_id": client_id,
            "provider": provider,
            "completed_at": completed_at,
            "key_id": key_id,
            "document": document,
        },
    )


def receipt_by_id(connection: Connection, receipt_id: str) -> Row[Any] | None:
    """One receipt by its id."""
    return connection.execute(select(RECEIPTS).where(R.id == receipt_id)).first()


def receipt_for_job(connection: Connection, job_id: str) -> Row[Any] | None:
    """The receipt of a job, if it completed."""
    return connection.execute(select(RECEIPTS).where(R.job_id == job_id)).first()


def receipt_page(
    connection: Connection,
    *,
    client_id: str | None,
    provider: str | None,
    limit: int,
    offset: int,
) -> Sequence[str]:
    """Receipt documents matching the filters given, newest first."""
    statement = select(R.document)
    if client_id is not None:
        statement = statement.where(R.client_id == client_id)
    if provider is not None:
        statement = statement.where(R.provider == provider)
    statement = statement.order_by(R.seq.desc()).limit(limit).offset(offset)
    return list(connection.execute(statement).scalars())


def keys_of(connection: Connection, owner: str | None = None) -> Sequence[Row[Any]]:
    """Published keys, oldest first: all, or one owner's."""
    statement = select(KEYS).order_by(K.valid_from, K.key_id)
    if owner is not None:
        statement = statement.where(K.owner == owner)
    return connection.execute(statement).all()


def keys_of_owners(connection: Connection, owners: Sequence[str]) -> Sequence[Row[Any]]:
    """The published keys of several owners, oldest first."""
    statement = (
        select(KEYS).where(K.owner.in_(sorted(set(owners)))).order_by(K.valid_from, K.key_id)
    )
    return connection.execute(statement).all()


def key_by_id(connection: Connection, key_id: str) -> Row[Any] | None:
    """One published key."""
    return connection.execute(select(KEYS).where(K.key_id == key_id)).first()


def insert_key(
    connection: Connection, *, key_id: str, owner: str, public_key: str, valid_from: datetime
) -> None:
    """Publish a key as its owner's current key from ``valid_from``."""
    connection.execute(
        insert(KEYS).values(
            key_id=key_id,
            owner=owner,
            public_key=public_key,
            status="current",
            valid_from=valid_from,
            valid_until=None,
        )
    )


def retire_keys(connection: Connection, owner: str, until: datetime) -> list[str]:
    """Retire ``owner``'s current keys as of ``until``; their ids."""
    statement = (
        update(KEYS)
        .where(K.owner == owner, K.status == "current")
        .values(status="retired", valid_until=until)
        .returning(K.key_id)
    )
    return list(connection.execute(statement).scalars())


def retire_key(connection: Connection, key_id: str, until: datetime) -> bool:
    """Retire one current key as of ``until``; False if it was not current."""
    result = connection.execute(
        update(KEYS)
        .where(K.key_id == key_id, K.status == "current")
        .values(status="retired", valid_until=until)
        .returning(K.key_id)
    )
    return result.first() is not None
