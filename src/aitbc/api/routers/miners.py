"""Miner endpoints: registration, heartbeats, and the miner side of the job lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from aitbc.api.deps import JobId, OptionalPrincipalDep, PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.api.routers.receipts import receipt_response
from aitbc.errors import PermissionDenied
from aitbc.schemas import (
    MINER_ID_PATTERN,
    ClaimRequest,
    FailureReport,
    Heartbeat,
    HeartbeatAck,
    Job,
    JobResult,
    MinerCredentials,
    MinerRegistration,
    ProgressAck,
    ProgressReport,
    Receipt,
)
from aitbc.services import completion, miners, work

router = APIRouter(tags=["Miners"])


@router.post(
    "/v1/miners/register",
    status_code=201,
    response_model=MinerCredentials,
    responses={204: {"description": "registration updated (sent with the miner's own key)"}},
)
async def register_miner(
    runtime: RuntimeDep,
    principal: OptionalPrincipalDep,
    body: MinerRegistration,
) -> MinerCredentials | Response:
    """Register a miner; the API key in the answer is shown only this once.

    Sent again with the miner's own key, it updates capabilities, hardware and price.
    """
    if not runtime.settings.open_miner_registration and (
        principal is None or principal.role == "client"
    ):
        raise PermissionDenied(
            "miner self-registration is turned off", error_code="registration_closed"
        )
    credentials = await miners.register(runtime, principal, body)
    if credentials is None:
        return Response(status_code=204)
    return credentials


@router.post("/v1/miners/{address}/heartbeat", response_model=HeartbeatAck)
async def heartbeat(
    runtime: RuntimeDep, principal: PrincipalDep, address: str, body: Heartbeat | None = None
) -> HeartbeatAck:
    """Liveness, load and running jobs; renews leases; lists jobs the miner must stop."""
    return await miners.heartbeat(runtime, principal, address, body or Heartbeat())


@router.get("/v1/jobs/available", response_model=Job | None)
async def available_job(
    request: Request,
    runtime: RuntimeDep,
    principal: PrincipalDep,
    miner_id: Annotated[str, Query(pattern=MINER_ID_PATTERN)],
    wait: Annotated[float, Query(ge=0, le=300, description="long-poll seconds")] = 0,
    claim: Annotated[
        bool, Query(description="claim the job too: it comes back running, under its lease")
    ] = False,
) -> Response:
    """The next job this miner can run (priority, then age), or null after ``wait`` s;
    with ``claim=true`` already claimed by it (one round trip instead of two)."""
    step = work.take_next if claim else work.next_for_miner
    # Under load a job is usually ready: answer straight away, without the
    # bookkeeping a long poll needs.
    ready = await step(runtime, principal, miner_id, 0)
    if ready is not None or wait <= 0:
        return JSONDocument(ready)
    poll = asyncio.ensure_future(step(runtime, principal, miner_id, wait))
    # A miner that hangs up mid-poll must not be handed a job nobody will read:
    # cancelling the poll withdraws it from the dispatcher (and releases any offer).
    hung_up = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({poll, hung_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hung_up.cancel()
    if not poll.done():
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        return Response(status_code=499)
    return JSONDocument(poll.result())


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/v1/jobs/{job_id}/claim", response_model=Job)
async def claim_job(
    runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId, body: ClaimRequest
) -> JSONDocument:
    """Take a pending job with a lease; 409 if another miner got it first."""
    return JSONDocument(await work.claim(runtime, principal, job_id, body.miner_id))


@router.post("/v1/jobs/{job_id}/progress", response_model=ProgressAck)
async def report_progress(
    runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId, body: ProgressReport
) -> ProgressAck:
    """Progress 0-100; renews the lease; ``should_stop`` once the job was cancelled."""
    return await work.report_progress(runtime, principal, job_id, body)


@router.post("/v1/jobs/{job_id}/fail", response_model=Job)
async def report_failure(
    runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId, body: FailureReport
) -> JSONDocument:
    """Give up on a job; retryable failures put it back in the queue while attempts remain."""
    return JSONDocument(await work.report_failure(runtime, principal, job_id, body))


@router.post("/v1/jobs/{job_id}/complete", response_model=Receipt)
async def complete_job(
    runtime: RuntimeDep, principal: PrincipalDep, job_id: JobId, body: JobResult
) -> Response:
    """Deliver the result of a job this miner holds; the answer is its signed receipt.

    The same result sent again returns the same receipt. A miner that registered a
    public key must sign ``{job_id, provider, result_hash, units, unit_type}``.
    """
    return receipt_response(await completion.complete(runtime, principal, job_id, body))
