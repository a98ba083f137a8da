"""The OpenAI-compatible gateway: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` in OpenAI's shapes (DESIGN.md section 9). Errors on these routes
come in OpenAI's shape too (``api.errors``)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from aitbc.api.deps import PrincipalDep, RuntimeDep
from aitbc.api.responses import JSONDocument
from aitbc.openai_schemas import ChatCompletionRequest, CompletionRequest
from aitbc.services import gateway

router = APIRouter(tags=["OpenAI-compatible"])

JOB_HEADER = "X-AITBC-Job-Id"
RECEIPT_HEADER = "X-AITBC-Receipt-Id"


@router.get("/v1/models")
async def list_models(runtime: RuntimeDep, principal: PrincipalDep) -> JSONDocument:
    """Models served by miners online now, each with its lowest price (AIT per 1,000
    tokens) and how many miners serve it."""
    return JSONDocument(await gateway.list_models(runtime, principal))


async def _answer(
    runtime: RuntimeDep, principal: PrincipalDep, body: ChatCompletionRequest | CompletionRequest
) -> Response:
    call = await gateway.start(runtime, principal, body)
    headers = {JOB_HEADER: call.job_id}
    if body.stream:
        return StreamingResponse(
            await gateway.stream(runtime, principal, call),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    document, receipt_id = await gateway.finish(runtime, principal, call)
    return JSONDocument(document, headers={**headers, RECEIPT_HEADER: receipt_id})


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    runtime: RuntimeDep, principal: PrincipalDep, body: ChatCompletionRequest
) -> Response:
    """A chat completion, run as a paid job (streamed with ``"stream": true``)."""
    return await _answer(runtime, principal, body)


@router.post("/v1/completions", response_model=None)
async def completions(
    runtime: RuntimeDep, principal: PrincipalDep, body: CompletionRequest
) -> Response:
    """A text completion (the prompt continued), run as a paid job."""
    return await _answer(runtime, principal, body)
