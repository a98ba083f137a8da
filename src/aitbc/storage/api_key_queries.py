"""API key statements (SQLAlchemy Core over a sync ``Connection``).

A key's owner is its role and ``owner_id`` together: the client or miner id, or
NULL for admin keys (all admin keys belong to the one operator). Helpers never
commit: the calling service owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)

from aitbc.storage.models import ApiKey

KEYS = cast(Table, ApiKey.__table__)
C = KEYS.c

_BY_HASH = select(KEYS).where(C.key_hash == bindparam("key_hash"))


def _owned_by(role: str, owner_id: str | None) -> ColumnElement[bool]:
    owner = C.owner_id.is_(None) if owner_id is None else C.owner_id == owner_id
    return (C.role == role) & owner


def by_hash(connection: Connection, key_hash: str) -> Row[Any] | None:
    """The key with this hash, if any."""
    return connection.execute(_BY_HASH, {"key_hash": key_hash}).first()


def insert_key(
    connection: Connection, *, key_hash: str, role: str, owner_id: str | None, now: datetime
) -> None:
    """Store a new active key."""
    connection.execute(
        insert(KEYS).values(
            key_hash=key_hash,
            key_id=key_hash[:16],
            role=role,
            owner_id=owner_id,
            created_at=now,
            revoked_at=None,
        )
    )


def keys_of(connection: Connection, role: str, owner_id: str | None) -> Sequence[Row[Any]]:
    """Every key of one owner, revoked ones too, oldest first."""
    statement = select(KEYS).where(_owned_by(role, owner_id)).order_by(C.created_at, C.key_id)
    return connection.execute(statement).all()


def lock_active(connection: Connection, role: str, owner_id: str | None) -> list[str]:
    """The hashes of one owner's active keys, locked until the transaction ends, so
    two requests revoking or creating that owner's keys run one after the other
    (PostgreSQL; SQLite has one writer anyway)."""
    statement = (
        select(C.key_hash)
        .where(_owned_by(role, owner_id), C.revoked_at.is_(None))
        .with_for_update()
    )
    return list(connection.execute(statement).scalars())


def key_page(
    connection: Connection,
    *,
    owner_id: str | None,
    role: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Row[Any]], int]:
    """Keys matching the filters (all keys without any), oldest first, and how many match."""
    conditions: list[ColumnElement[bool]] = []
    if owner_id is not None:
        conditions.append(C.owner_id == owner_id)
    if role is not None:
        conditions.append(C.role == role)
    rows = connection.execute(
        select(KEYS).where(*conditions).order_by(C.created_at, C.key_id).limit(limit).offset(offset)
    ).all()
    total = connection.execute(select(func.count()).select_from(KEYS).where(*conditions))
    return rows, int(total.scalar_one())


def by_key_id(connection: Connection, key_id: str) -> Row[Any] | None:
    """The key named ``key_id`` (the first 16 hex digits of its hash)."""
    return connection.execute(
        select(KEYS).where(C.key_id == key_id).order_by(C.created_at).limit(1)
    ).first()


def revoke(connection: Connection, key_hash: str, now: datetime) -> bool:
    """Revoke one active key as of ``now``; False if it already was revoked."""
    result = connection.execute(
        update(KEYS)
        .where(C.key_hash == key_hash, C.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(C.key_hash)
    )
    return result.first() is not None


def revoke_admin_keys_except(connection: Connection, key_hash: str, now: datetime) -> list[str]:
    """Revoke every active admin key but ``key_hash``; the hashes revoked."""
    statement = (
        update(KEYS)
        .where(C.role == "admin", C.revoked_at.is_(None), C.key_hash != key_hash)
        .values(revoked_at=now)
        .returning(C.key_hash)
    )
    return list(connection.execute(statement).scalars())
