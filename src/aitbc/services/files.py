"""Uploaded input files: stored whole in the database, owned by one client, bounded.

A file is only ever used as a text-generation prompt (a job's ``input``), so an
upload is refused when it could never be one: larger than the prompt limit allows
(:func:`upload_limit`), more characters than ``max_prompt_chars``, or not UTF-8 text.
Each client holds at most ``max_files_per_client`` live files of at most
``max_file_bytes_per_client`` bytes together (409 ``file_quota_exceeded`` beyond);
a file expires ``file_ttl_seconds`` after its upload, is then neither listed nor
usable, and the sweeper deletes it. A job keeps its own copy of the prompt, so
deleting a file never changes a job.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import timedelta

from sqlalchemy import Connection

from aitbc.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, ValidationFailed
from aitbc.schemas import FileInfo, FileList
from aitbc.services.auth import require_client
from aitbc.services.runtime import Principal, Runtime
from aitbc.settings import Settings
from aitbc.storage import file_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.file_queries import FileRecord

MAX_FILENAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
DEFAULT_FILENAME = "upload"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# UTF-8 spends at most 4 bytes on a character: a usable prompt file is at most
# 4 x max_prompt_chars bytes.
MAX_UTF8_BYTES_PER_CHAR = 4
# Expired files one sweep deletes at most: a sweep is one transaction, and on SQLite
# it runs on the event loop, so a large backlog is worked off over several sweeps.
FILE_SWEEP_BATCH = 20
# type "/" subtype, each an RFC 9110 token, then parameters in printable ASCII.
_CONTENT_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+ *(;[ -~]*)?")
# Unicode categories no file name needs: control characters (NUL above all, which
# PostgreSQL cannot store) and lone surrogates (which UTF-8 cannot encode).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


def upload_limit(settings: Settings) -> int:
    """The largest upload accepted: ``max_upload_bytes``, but never more than a
    ``max_prompt_chars`` prompt can take in UTF-8 (a larger file is never usable)."""
    return min(settings.max_upload_bytes, MAX_UTF8_BYTES_PER_CHAR * settings.max_prompt_chars)


def clean_filename(filename: str | None) -> str:
    """The name to store; 422 ``invalid_filename`` for control characters, lone
    surrogates or more than ``MAX_FILENAME_CHARS`` characters."""
    if not filename:
        return DEFAULT_FILENAME
    if len(filename) > MAX_FILENAME_CHARS:
        raise ValidationFailed(
            f"the file name has {len(filename)} characters; at most {MAX_FILENAME_CHARS} "
            "are allowed",
            error_code="invalid_filename",
        )
    if any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in filename):
        raise ValidationFailed(
            "the file name holds control characters or invalid text",
            error_code="invalid_filename",
        )
    return filename


def clean_content_type(content_type: str | None) -> str:
    """The media type to store; 422 ``invalid_content_type`` unless it is
    ``type/subtype[; parameters]`` in printable ASCII, at most 255 characters."""
    if not content_type:
        return DEFAULT_CONTENT_TYPE
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE.fullmatch(content_type):
        raise ValidationFailed(
            "the file's content type must be type/subtype in printable ASCII "
            f"(at most {MAX_CONTENT_TYPE_CHARS} characters)",
            error_code="invalid_content_type",
        )
    return content_type


def prompt_text(data: bytes) -> str | None:
    """The file's text as a prompt, or None when it is not UTF-8 text without NUL."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


async def upload(
    runtime: Runtime,
    principal: Principal,
    filename: str | None,
    content_type: str | None,
    data: bytes,
) -> FileInfo:
    """Store an upload for the calling client; its id can then be a job's ``input``."""
    client_id = require_client(principal)
    settings = runtime.settings
    name = clean_filename(filename)
    media_type = clean_content_type(content_type)
    limit = upload_limit(settings)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"file is {len(data)} bytes; the limit is {limit}", error_code="file_too_large"
        )
    if not data:
        raise InvalidRequest("file is empty", error_code="empty_file")
    text = prompt_text(data)
    if text is None:
        raise InvalidRequest(
            "file is not UTF-8 text; files are used as text-generation prompts",
            error_code="file_not_text",
        )
    if len(text) > settings.max_prompt_chars:
        raise PayloadTooLarge(
            f"file has {len(text)} characters; a prompt may have at most "
            f"{settings.max_prompt_chars}",
            error_code="file_too_large",
        )
    now = runtime.clock()
    values = {
        "id": runtime.new_id("file"),
        "client_id": client_id,
        "filename": name,
        "content_type": media_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "created_at": now,
        "expires_at": now + timedelta(seconds=settings.file_ttl_seconds),
    }
    max_files = settings.max_files_per_client
    max_bytes = settings.max_file_bytes_per_client

    def work(connection: Connection) -> tuple[int, int] | None:
        """None once stored; what the client holds when the file does not fit."""
        if file_queries.insert_within_quota(connection, values, max_files, max_bytes):
            return None
        return file_queries.usage(connection, client_id, now)

    held = await transaction(runtime.engine, work)
    if held is not None:
        raise _over_quota(held, len(data), max_files, max_bytes)
    return FileInfo(
        file_id=values["id"],
        filename=name,
        content_type=media_type,
        size=len(data),
        sha256=values["sha256"],
        created_at=now,
        expires_at=values["expires_at"],
    )


def _over_quota(held: tuple[int, int], size: int, max_files: int, max_bytes: int) -> Conflict:
    files, used = held
    if files >= max_files:
        why = f"you hold {files} files; the limit is {max_files}"
    else:
        why = f"you hold {used} bytes in files and this one has {size}; the limit is {max_bytes}"
    return Conflict(
        f"file quota exceeded: {why}. Delete files (DELETE /v1/files/{{file_id}}) "
        "or wait for them to expire",
        error_code="file_quota_exceeded",
    )


def _info(row: FileRecord) -> FileInfo:
    return FileInfo(
        file_id=row.id,
        filename=row.filename,
        content_type=row.content_type,
        size=row.size,
        sha256=row.sha256,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


def _not_found(file_id: str) -> NotFound:
    # Someone else's file is reported as missing: ids are not an oracle.
    return NotFound(f"file {file_id} not found", error_code="file_not_found")


async def get(runtime: Runtime, principal: Principal, file_id: str) -> FileInfo:
    """A live file's metadata, for its owner; 404 ``file_not_found`` otherwise."""
    client_id = require_client(principal)
    row = await read(runtime.engine, file_queries.metadata, client_id, file_id, runtime.clock())
    if row is None:
        raise _not_found(file_id)
    return _info(row)


async def list_files(runtime: Runtime, principal: Principal, limit: int, offset: int) -> FileList:
    """The caller's live files, newest first, in the list envelope."""
    client_id = require_client(principal)
    rows, total = await read(
        runtime.engine, file_queries.page, client_id, runtime.clock(), limit, offset
    )
    return FileList(
        files=[_info(row) for row in rows], total=total, has_more=offset + len(rows) < total
    )


async def delete(runtime: Runtime, principal: Principal, file_id: str) -> None:
    """Delete one of the caller's files (jobs keep their prompts); 404 if none."""
    client_id = require_client(principal)
    now = runtime.clock()
    if not await transaction(runtime.engine, file_queries.delete_owned, client_id, file_id, now):
        raise _not_found(file_id)


async def prompt_of(runtime: Runtime, client_id: str, file_id: str) -> str:
    """The text of a client's live file, as a job's prompt: 404 ``file_not_found``
    (also once it expired), 400 ``file_not_text`` when it is not UTF-8 text."""
    data = await read(runtime.engine, file_queries.content, client_id, file_id, runtime.clock())
    if data is None:
        raise _not_found(file_id)
    text = prompt_text(data)
    if text is None:
        raise InvalidRequest(
            f"file {file_id} is not UTF-8 text; text-generation jobs need a text prompt",
            error_code="file_not_text",
        )
    return text


async def delete_expired(runtime: Runtime) -> int:
    """Delete up to ``FILE_SWEEP_BATCH`` expired files; how many (the sweeper's step)."""
    now = runtime.clock()
    return await transaction(runtime.engine, file_queries.delete_expired, now, FILE_SWEEP_BATCH)
