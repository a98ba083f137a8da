"""Uploaded files: upload (a size-limited input a job names as its ``input``), list,
metadata and delete, each for the owning client only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, UploadFile

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.schemas import FileInfo, FileList
from aitbc.services import files

router = APIRouter(prefix="/v1/files", tags=["Files"])

# File ids are "file_" + 32 hex; anything longer or with NUL cannot exist.
FileId = Annotated[str, Path(max_length=64, pattern=r"^[^\x00]+$")]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


@router.post("", status_code=201, response_model=FileInfo)
async def upload_file(runtime: RuntimeDep, principal: PrincipalDep, file: UploadFile) -> FileInfo:
    """Upload one UTF-8 text file (multipart field ``file``); use its ``file_id`` as a
    job's input until ``expires_at``. 409 ``file_quota_exceeded`` when the caller
    already holds ``max_files_per_client`` files or ``max_file_bytes_per_client`` bytes."""
    data = await file.read(files.upload_limit(runtime.settings) + 1)
    return await files.upload(runtime, principal, file.filename, file.content_type, data)


@router.get("", response_model=FileList)
async def list_files(
    runtime: RuntimeDep, principal: PrincipalDep, limit: Limit = 20, offset: Offset = 0
) -> FileList:
    """The caller's files that have not expired, newest first."""
    return await files.list_files(runtime, principal, limit, offset)


@router.get("/{file_id}", response_model=FileInfo)
async def get_file(runtime: RuntimeDep, principal: PrincipalDep, file_id: FileId) -> FileInfo:
    """One of the caller's files (404 ``file_not_found`` for anyone else's, or once expired)."""
    return await files.get(runtime, principal, file_id)


@router.delete("/{file_id}", status_code=204, response_class=Response)
async def delete_file(runtime: RuntimeDep, principal: PrincipalDep, file_id: FileId) -> Response:
    """Delete one of the caller's files; jobs that used it keep their prompt."""
    await files.delete(runtime, principal, file_id)
    return Response(status_code=204)
