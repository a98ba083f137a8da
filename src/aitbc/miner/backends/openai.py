"""``openai``: any OpenAI-compatible server (vLLM, llama.cpp server, TGI, LM Studio).

Models are what ``GET /v1/models`` lists (optionally narrowed to one with
``--model``). Chat jobs go to ``/v1/chat/completions``, completion jobs to
``/v1/completions``, both streamed (server-sent events) so progress follows the
tokens and a cancelled job's stream is closed at once. Usage is asked for with
``stream_options.include_usage``; a server that does not send it (llama-cpp-python's
server, for one) is metered by its streamed chunks, one token each, and the prompt
is then charged as zero tokens, never more than the server reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import httpx

from aitbc.miner.backends.base import (
    BackendError,
    Generation,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
)
from aitbc.miner.backends.remote import RemoteBackend

log = logging.getLogger(__name__)


class OpenAIBackend(RemoteBackend):
    """Generations on an OpenAI-compatible HTTP server."""

    name = "openai"
    models_path = "/v1/models"

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(base_url, model=model, headers=headers)

    def listed_models(self, document: Any) -> list[str]:
        """``{"data": [{"id": ...}, ...]}``."""
        return [str(entry["id"]) for entry in document["data"]]

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        messages = request.chat_messages()
        if messages is not None:
            body["messages"] = messages
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        return "/v1/completions", body

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Stream one generation, counting chunks for progress."""
        self.check_served(request)
        path, body = self._body(request)
        parts: list[str] = []
        chunks = 0
        usage: dict[str, Any] | None = None
        finish_reason: str | None = None
        try:
            async with contextlib.aclosing(self.stream_lines(path, body, control)) as lines:
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or ():
                        text = (
                            (choice.get("delta") or {}).get("content")
                            if request.mode != "completion"
                            else choice.get("text")
                        )
                        if text:
                            parts.append(text)
                            control.on_text(text)
                            chunks += 1
                            control.on_token(chunks)
                        if choice.get("finish_reason"):
                            finish_reason = str(choice["finish_reason"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            # A stream broken before any text: the server may say why when asked again.
            broken = isinstance(exc, httpx.TransportError) and not isinstance(
                exc, httpx.ConnectError
            )
            if broken and not parts:
                await self._explain(path, body)
            raise self.failure(path, exc) from exc
        if control.cancelled.is_set():
            raise GenerationCancelled
        if finish_reason is None:
            # Some servers (llama-cpp-python's) fail a streamed request after answering
            # 200, leaving an empty stream: ask again unstreamed to learn why.
            if not parts:
                await self._explain(path, body)
            raise BackendError(
                f"{self.base_url}{path}: the stream ended before the generation finished",
                retryable=True,
                error_code="backend_error",
            )
        if usage is None:
            log.debug("%s sent no usage; metering %d streamed chunks", self.base_url, chunks)
            prompt_tokens, completion_tokens = 0, chunks
        else:
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        return Generation("".join(parts), prompt_tokens, completion_tokens, finish_reason)

    async def _explain(self, path: str, body: dict[str, Any]) -> None:
        """Raise the server's own error for ``body``, sent unstreamed for one token."""
        probe = {**body, "stream": False, "max_tokens": 1}
        probe.pop("stream_options", None)
        # Twice: the broken stream may have left a dead connection in the pool.
        for _attempt in range(2):
            try:
                response = await self.http.post(path, json=probe)
            except httpx.HTTPError:
                continue
            if response.status_code >= 400:
                raise self.refusal(response)
            return
