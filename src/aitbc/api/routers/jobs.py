"""Client job endpoints: submit, read, list, history, cancel, download."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from aitbc.api.deps import JobId, PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.api.routers.receipts import receipt_response
from aitbc.domain.jobs import JobStatus
from aitbc.schemas import Job, JobList, JobRequest, Receipt
from aitbc.services import jobs, receipts, streams

router = APIRouter(prefix="/v1/jobs", tags=["Jobs"])

Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


@router.post("", status_code=201, response_model=Job)
async def submit_job(
    runtime: RuntimeDep, principal: PrincipalDep, body: JobRequest
) -> JSONDocument:
    """Queue a job; the answer carries its cost and time estimates."""
    return JSONDocument(await jobs.submit(runtime, principal, body), status_code=201)


@router.get("", response_model=JobList)
async def list_jobs(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    limit: Limit = 20,
    offset: Offset = 0,
) -> JSONDocument:
    """The caller's jobs, newest first."""
    return JSONDocument(
        await jobs.list_jobs(runtime, principal, status=status, limit=limit, offset=offset)
    )


@router.get("/history", response_model=JobList)
async def job_history(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    start: Annotated[dt.date, Query(alias="from")],
    end: Annotated[dt.date, Query(alias="to")],
    limit: Limit = 20,
    offset: Offset = 0,
) -> JSONDocument:
    """Jobs created between two UTC dates (YYYY-MM-DD), both inclusive."""
    return JSONDocument(await jobs.history(runtime, principal, start, end, limit, offset))


@router.get("/{job_id}", response_model=Job)
async def get_job(runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId) -> JSONDocument:
    """One job."""
    return JSONDocument(await jobs.get(runtime, principal, job_id))


@router.get(
    "/{job_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_job(
    runtime: RuntimeDep,
    principal: PrincipalDep,
    job_id: JobId,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """The job's output as it is generated, as Server-Sent Events (``token`` events,
    then ``end`` with its status, usage and receipt id), until the job ends; resumed
    after the event named by ``Last-Event-ID``."""
    events = await streams.open_stream(runtime, principal, job_id, last_event_id)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/receipt", response_model=Receipt, tags=["Receipts"])
async def get_job_receipt(runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId) -> Response:
    """The signed receipt of a completed job (404 ``receipt_not_found`` before then)."""
    return receipt_response(await receipts.for_job(runtime, principal, job_id))


@router.delete("/{job_id}", response_model=Job)
async def delete_job(runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId) -> JSONDocument:
    """Cancel a job (409 once it is completed, failed or cancelled)."""
    return JSONDocument(await jobs.cancel(runtime, principal, job_id))


@router.post("/{job_id}/cancel", response_model=Job)
async def cancel_job(runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId) -> JSONDocument:
    """Cancel a job (409 once it is completed, failed or cancelled)."""
    return JSONDocument(await jobs.cancel(runtime, principal, job_id))


@router.get(
    "/{job_id}/download",
    responses={200: {"content": {"application/json": {}, "text/plain": {}}}},
)
async def download_result(runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId) -> Response:
    """The result as a file, in the job's ``output_config.format`` (json or text)."""
    job = await jobs.download(runtime, principal, job_id)
    if job["output_config"]["format"] == "text":
        return PlainTextResponse(
            job["result"] or "",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.txt"'},
        )
    body = {key: job[key] for key in ("job_id", "model", "result", "usage", "completed_at")}
    return JSONDocument(
        body, headers={"Content-Disposition": f'attachment; filename="{job_id}.json"'}
    )
