"""The OpenAI-compatible gateway (DESIGN.md section 9): ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions`` on top of ordinary paid jobs.

Each request is a job of the calling client, held and paid like any other; its
answer comes from the job's result and its billing from the job's signed receipt,
never from what a stream happened to carry. A request first waits, up to
``gateway_queue_seconds``, for a miner to take its job; a job nobody took by then is
cancelled (its hold refunded) and the request answered 503 with ``Retry-After``, so
a client is never left hanging on a model nobody serves at its price. A stream whose
reader goes away cancels its job (refunded as any cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from aitbc.domain.jobs import JobStatus, is_terminal
from aitbc.domain.money import to_ait
from aitbc.domain.timestamps import unix_seconds
from aitbc.errors import AITBCError, Conflict, InvalidRequest, NotFound, ServiceUnavailable
from aitbc.openai_schemas import ChatCompletionRequest, CompletionRequest, openai_error_body
from aitbc.schemas import JobParams, JobRequest
from aitbc.services import jobs as job_service
from aitbc.services import streams
from aitbc.services._job_steps import load_visible_job
from aitbc.services.auth import require_client
from aitbc.services.runtime import Principal, Runtime
from aitbc.storage import receipt_queries
from aitbc.storage.db import read

# Failures of the job that are the request's fault (a 400, not a 503).
CLIENT_ERROR_CODES = frozenset({"prompt_too_long", "invalid_request"})
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Call:
    """A gateway request turned into a job: what both endpoints' answers need."""

    kind: str  # "chat" or "completion"
    job_id: str
    model: str
    created: int
    max_tokens: int
    include_usage: bool

    @property
    def response_id(self) -> str:
        """OpenAI's ``id``: the job's id under the endpoint's prefix."""
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.job_id


async def list_models(runtime: Runtime, principal: Principal) -> dict[str, Any]:
    """The models that miners online now serve, each with its lowest posted price
    (AIT per 1,000 tokens) and how many online miners serve it."""
    del principal  # any key may list them
    market = await runtime.estimates.get(
        runtime.sessions, runtime.clock(), runtime.settings.miner_offline_after_seconds
    )
    prices: dict[str, list[int]] = {}
    for hardware, price in market.miners:
        for model in hardware.models:
            prices.setdefault(model, []).append(price)
    created = unix_seconds(runtime.clock())
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "aitbc",
                "price": to_ait(min(prices[model])),
                "miners": len(prices[model]),
            }
            for model in sorted(prices)
        ],
    }


def _job_request(request: ChatCompletionRequest | CompletionRequest) -> JobRequest:
    unsupported = request.unsupported()
    if unsupported is not None:
        raise InvalidRequest(
            str(unsupported), error_code="unsupported_parameter", param=unsupported.param
        )
    if isinstance(request, ChatCompletionRequest):
        prompt = json.dumps(request.job_messages(), ensure_ascii=False, separators=(",", ":"))
        limit, mode = request.token_limit(), "messages"
    else:
        prompt, limit, mode = request.prompt_text(), request.max_tokens, "completion"
    params = {
        "mode": mode,
        "max_tokens": limit,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": request.stop_list(),
        "seed": request.seed,
    }
    return JobRequest(
        prompt=prompt,
        model=request.model,
        params=JobParams(**{name: value for name, value in params.items() if value is not None}),
    )


async def start(
    runtime: Runtime, principal: Principal, request: ChatCompletionRequest | CompletionRequest
) -> Call:
    """Submit the request's job and wait until a miner takes it (see the module
    docstring): 404 ``model_not_found`` when no online miner serves the model, 402
    when the client cannot cover it, 503 ``no_miner_available`` when none took it."""
    require_client(principal)
    job_request = _job_request(request)
    market = await runtime.estimates.get(
        runtime.sessions, runtime.clock(), runtime.settings.miner_offline_after_seconds
    )
    if not any(request.model in hardware.models for hardware, _price in market.miners):
        raise NotFound(
            f"no miner online serves model {request.model!r} (GET /v1/models lists them)",
            error_code="model_not_found",
            param="model",
        )
    job = await job_service.submit(runtime, principal, job_request)
    call = Call(
        kind="chat" if isinstance(request, ChatCompletionRequest) else "completion",
        job_id=job["job_id"],
        model=request.model,
        created=unix_seconds(runtime.clock()),
        max_tokens=job_request.params.max_tokens,
        include_usage=request.include_usage,
    )
    taken = await _wait(runtime, principal, call.job_id, runtime.settings.gateway_queue_seconds)
    if taken is JobStatus.PENDING:
        await cancel(runtime, principal, call.job_id)
        raise ServiceUnavailable(
            f"no miner took the job within {runtime.settings.gateway_queue_seconds:g} s "
            f"(model {request.model!r}); it was cancelled and its hold refunded",
            error_code="no_miner_available",
            retry_after_seconds=RETRY_AFTER_SECONDS,
        )
    return call


def _status(connection: Connection, principal: Principal, job_id: str) -> JobStatus:
    return JobStatus(load_visible_job(connection, principal, job_id).status)


async def _wait(
    runtime: Runtime, principal: Principal, job_id: str, queue_seconds: float | None
) -> JobStatus:
    """The job's status once it is no longer pending, or after ``queue_seconds``; with
    None, once it is terminal."""
    deadline = None if queue_seconds is None else time.monotonic() + queue_seconds
    with runtime.streams.watch(job_id) as watch:
        while True:
            seen = watch.version
            status = await read(runtime.engine, _status, principal, job_id)
            if is_terminal(status) or (
                queue_seconds is not None and status is not JobStatus.PENDING
            ):
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            await watch.wait_past(seen)


async def cancel(runtime: Runtime, principal: Principal, job_id: str) -> None:
    """Cancel the job unless it ended already (refunded as any cancel)."""
    with contextlib.suppress(Conflict):
        await job_service.cancel(runtime, principal, job_id)


def _finish_reason(completion_tokens: int | None, max_tokens: int) -> str:
    return "length" if (completion_tokens or 0) >= max_tokens else "stop"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished job: its text, usage and receipt."""

    status: JobStatus
    result: str
    prompt_tokens: int
    completion_tokens: int
    receipt_id: str | None
    price: float | None
    error: str | None
    error_code: str | None


def _outcome(connection: Connection, principal: Principal, job_id: str) -> Outcome:
    row = load_visible_job(connection, principal, job_id)
    receipt = receipt_queries.receipt_for_job(connection, job_id)
    document = json.loads(receipt.document) if receipt is not None else {}
    return Outcome(
        status=JobStatus(row.status),
        result=row.result or "",
        prompt_tokens=int(row.prompt_tokens or 0),
        completion_tokens=int(row.completion_tokens or 0),
        receipt_id=document.get("receipt_id"),
        price=document.get("price"),
        error=row.error,
        error_code=row.error_code,
    )


def _failure(outcome: Outcome) -> AITBCError:
    """The error a job that did not complete answers with."""
    detail = f"the job {outcome.status.value}: {outcome.error or 'no reason given'}"
    if outcome.error_code in CLIENT_ERROR_CODES or (outcome.error or "").split(":")[0] in (
        CLIENT_ERROR_CODES
    ):
        return InvalidRequest(detail, error_code=outcome.error_code or "invalid_request")
    if outcome.status is JobStatus.CANCELLED:
        return Conflict(detail, error_code="job_cancelled")
    return ServiceUnavailable(
        detail, error_code="job_failed", retry_after_seconds=RETRY_AFTER_SECONDS
    )


def _usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        # What the receipt charged (AIT), and the receipt: billing is the receipt's.
        "cost": outcome.price,
        "receipt_id": outcome.receipt_id,
    }


async def finish(runtime: Runtime, principal: Principal, call: Call) -> tuple[dict[str, Any], str]:
    """Wait for the job to end; OpenAI's response object and the receipt id. A job
    that failed or was cancelled raises the matching error."""
    try:
        await _wait(runtime, principal, call.job_id, None)
    except asyncio.CancelledError:
        cancel_later(runtime, principal, call.job_id)
        raise
    outcome = await read(runtime.engine, _outcome, principal, call.job_id)
    if outcome.status is not JobStatus.COMPLETED or outcome.receipt_id is None:
        raise _failure(outcome)
    reason = _finish_reason(outcome.completion_tokens, call.max_tokens)
    if call.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": outcome.result, "refusal": None},
            "logprobs": None,
            "finish_reason": reason,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": outcome.result, "logprobs": None, "finish_reason": reason}
        kind = "text_completion"
    body = {
        "id": call.response_id,
        "object": kind,
        "created": call.created,
        "model": call.model,
        "choices": [choice],
        "usage": _usage(outcome),
    }
    return body, outcome.receipt_id


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


async def stream(runtime: Runtime, principal: Principal, call: Call) -> AsyncIterator[bytes]:
    """The job's output as OpenAI's streamed chunks (``data: [DONE]`` last); an error
    after the stream began comes as a chunk in OpenAI's error shape. Ending early
    (the reader went away) cancels the job."""
    events = await streams.job_events(runtime, principal, call.job_id)

    def chunk(delta: str | None, reason: str | None = None, first: bool = False) -> bytes:
        if call.kind == "chat":
            content: dict[str, Any] = {}
            if first:
                content["role"] = "assistant"
            if delta is not None:
                content["content"] = delta
            choice: dict[str, Any] = {
                "index": 0,
                "delta": content,
                "logprobs": None,
                "finish_reason": reason,
            }
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
            kind = "text_completion"
        return _sse(
            {
                "id": call.response_id,
                "object": kind,
                "created": call.created,
                "model": call.model,
                "choices": [choice],
            }
        )

    async def generate() -> AsyncIterator[bytes]:
        ended = False
        sent_text = False
        try:
            if call.kind == "chat":
                yield chunk("", first=True)
            async for event in events:
                if event.name == "token" and event.data is not None:
                    sent_text = True
                    yield chunk(str(event.data["text"]))
                elif event.name == "reset" and sent_text:
                    ended = True
                    await cancel(runtime, principal, call.job_id)
                    yield _error_chunk(
                        503,
                        "the job's miner was lost mid-answer and another started again: "
                        "the job was cancelled and refunded; send the request again",
                        "stream_restarted",
                    )
                    break
                elif event.name == "end":
                    ended = True
                    outcome = await read(runtime.engine, _outcome, principal, call.job_id)
                    if outcome.status is not JobStatus.COMPLETED:
                        failure = _failure(outcome)
                        yield _error_chunk(503, failure.detail, failure.error_code)
                        break
                    yield chunk(None, _finish_reason(outcome.completion_tokens, call.max_tokens))
                    if call.include_usage:
                        yield _sse(
                            {
                                "id": call.response_id,
                                "object": (
                                    "chat.completion.chunk"
                                    if call.kind == "chat"
                                    else "text_completion"
                                ),
                                "created": call.created,
                                "model": call.model,
                                "choices": [],
                                "usage": _usage(outcome),
                            }
                        )
                    break
            yield _sse("[DONE]")
        finally:
            if not ended:
                # The reader went away (or the stream broke): stop paying for it.
                cancel_later(runtime, principal, call.job_id)

    return generate()


def _error_chunk(status: int, message: str, code: str) -> bytes:
    return _sse(openai_error_body(status, message, code))


def cancel_later(runtime: Runtime, principal: Principal, job_id: str) -> None:
    """Cancel the job from a task of its own: the request's task is being cancelled
    (its reader went away) and can await nothing more."""
    task = asyncio.create_task(cancel(runtime, principal, job_id))
    runtime.background_tasks.add(task)
    task.add_done_callback(runtime.background_tasks.discard)
