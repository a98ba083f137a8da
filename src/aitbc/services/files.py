"""Uploaded input files: stored whole in the database, owned by one client."""

from __future__ import annotations

import hashlib

from aitbc.errors import InvalidRequest, PayloadTooLarge
from aitbc.schemas import FileInfo
from aitbc.services.auth import require_client
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage.models import StoredFile

MAX_FILENAME_CHARS = 255


async def upload(
    runtime: Runtime, principal: Principal, filename: str, content_type: str, data: bytes
) -> FileInfo:
    """Store an upload for the calling client; its id can then be a job's ``input``."""
    client_id = require_client(principal)
    limit = runtime.settings.max_upload_bytes
    if len(data) > limit:
        raise PayloadTooLarge(
            f"file is {len(data)} bytes; the limit is {limit}", error_code="file_too_large"
        )
    if not data:
        raise InvalidRequest("file is empty", error_code="empty_file")
    stored = StoredFile(
        id=runtime.new_id("file"),
        client_id=client_id,
        filename=(filename or "upload")[:MAX_FILENAME_CHARS],
        content_type=(content_type or "application/octet-stream")[:255],
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
        created_at=runtime.clock(),
    )
    async with runtime.sessions.begin() as session:
        session.add(stored)
    return FileInfo(
        file_id=stored.id,
        filename=stored.filename,
        content_type=stored.content_type,
        size=stored.size,
        sha256=stored.sha256,
        created_at=stored.created_at,
    )
