"""Uploaded-file statements in SQLAlchemy Core, run inside a service's unit of work
(``aitbc.storage.db.transaction`` / ``read``). They never commit.

A file is *live* until its ``expires_at`` (files stored before expiry existed have
none and live until deleted). Everything a client sees or uses, and its quota,
counts live files only; the sweeper deletes the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    Table,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
)

from aitbc.storage.models import Client, StoredFile

FILES = cast(Table, StoredFile.__table__)
CLIENTS = cast(Table, Client.__table__)
F = FILES.c
FileRecord = Row[Any]
# Every column but the content: what listings and metadata need.
_METADATA: Select[Any] = select(
    F.id, F.filename, F.content_type, F.size, F.sha256, F.created_at, F.expires_at
)


def live(now: datetime) -> ColumnElement[bool]:
    """SQL condition: the file has not expired at ``now``."""
    return or_(F.expires_at.is_(None), F.expires_at > now)


def _owned_live(client_id: str, now: datetime) -> ColumnElement[bool]:
    return (F.client_id == client_id) & live(now)


def insert_within_quota(
    connection: Connection, values: Mapping[str, Any], max_files: int, max_bytes: int
) -> bool:
    """Store a file unless its owner would then hold more than ``max_files`` live
    files or ``max_bytes`` of them; False (nothing stored) if it would.

    One ``INSERT ... SELECT ... WHERE <quota holds>``: on SQLite the statement holds
    the write lock from its first read, so two uploads cannot both fit in the last
    slot. PostgreSQL reads a snapshot per statement, so the owner's row is locked
    first (``FOR NO KEY UPDATE``, which still lets jobs reference the client), and
    uploads by one client take turns.
    """
    client_id = values["client_id"]
    connection.execute(
        select(CLIENTS.c.id).where(CLIENTS.c.id == client_id).with_for_update(key_share=True)
    )
    held = _owned_live(client_id, values["created_at"])
    files_held = select(func.count()).select_from(FILES).where(held).scalar_subquery()
    bytes_held = (
        select(func.coalesce(func.sum(F.size), 0)).select_from(FILES).where(held).scalar_subquery()
    )
    columns = [FILES.c[name] for name in values]
    row = select(*(literal(values[column.name], column.type) for column in columns)).where(
        files_held < max_files, bytes_held + values["size"] <= max_bytes
    )
    result = connection.execute(insert(FILES).from_select(columns, row))
    return result.rowcount == 1


def usage(connection: Connection, client_id: str, now: datetime) -> tuple[int, int]:
    """``(files, bytes)`` a client holds in live files."""
    files, size = connection.execute(
        select(func.count(), func.coalesce(func.sum(F.size), 0))
        .select_from(FILES)
        .where(_owned_live(client_id, now))
    ).one()
    return int(files), int(size)


def metadata(
    connection: Connection, client_id: str, file_id: str, now: datetime
) -> FileRecord | None:
    """A live file's metadata, if ``client_id`` owns it."""
    return connection.execute(_METADATA.where(F.id == file_id, _owned_live(client_id, now))).first()


def content(connection: Connection, client_id: str, file_id: str, now: datetime) -> bytes | None:
    """A live file's bytes, if ``client_id`` owns it."""
    data = connection.execute(
        select(F.data).where(F.id == file_id, _owned_live(client_id, now))
    ).scalar_one_or_none()
    return None if data is None else bytes(data)


def page(
    connection: Connection, client_id: str, now: datetime, limit: int, offset: int
) -> tuple[Sequence[FileRecord], int]:
    """One page of a client's live files, newest first, and how many there are."""
    owned = _owned_live(client_id, now)
    rows = connection.execute(
        _METADATA.where(owned)
        .order_by(F.created_at.desc(), F.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    total = connection.execute(select(func.count()).select_from(FILES).where(owned)).scalar_one()
    return rows, int(total)


def delete_owned(connection: Connection, client_id: str, file_id: str, now: datetime) -> bool:
    """Delete a live file ``client_id`` owns; False if there is none."""
    result = connection.execute(delete(FILES).where(F.id == file_id, _owned_live(client_id, now)))
    return result.rowcount == 1


def delete_expired(connection: Connection, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` files expired at ``now`` (oldest expiry first); how many."""
    batch = select(F.id).where(F.expires_at <= now).order_by(F.expires_at).limit(limit)
    result = connection.execute(delete(FILES).where(F.id.in_(batch)))
    return int(result.rowcount)
