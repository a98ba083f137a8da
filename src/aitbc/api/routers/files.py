"""File upload: a size-limited input that a job can name as its ``input``."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.schemas import FileInfo
from aitbc.services import files

router = APIRouter(prefix="/v1/files", tags=["Files"])


@router.post("", status_code=201, response_model=FileInfo)
async def upload_file(runtime: RuntimeDep, principal: PrincipalDep, file: UploadFile) -> FileInfo:
    """Upload one file (multipart field ``file``); use its ``file_id`` as a job's input."""
    data = await file.read(runtime.settings.max_upload_bytes + 1)
    return await files.upload(
        runtime, principal, file.filename or "upload", file.content_type or "", data
    )
