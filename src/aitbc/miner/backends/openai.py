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

import json
import logging
from typing import Any

import httpx

from aitbc.miner.backends.base import (
    BACKEND_UNREACHABLE,
    BackendError,
    Generation,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
)

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 300.0


class OpenAIBackend:
    """Generations on an OpenAI-compatible HTTP server."""

    name = "openai"

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.only_model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        )
        self._models: list[str] = []

    def models(self) -> list[str]:
        """The models the server lists (or the one chosen)."""
        return list(self._models)

    async def start(self) -> None:
        """Read ``/v1/models``; refuse to start when the chosen model is not served."""
        try:
            response = await self.http.get("/v1/models")
            response.raise_for_status()
            listed = [entry["id"] for entry in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"cannot list models at {self.base_url}/v1/models: {exc!r}",
                retryable=False,
                error_code="backend_unreachable",
            ) from exc
        if self.only_model is not None:
            if self.only_model not in listed:
                raise BackendError(
                    f"{self.base_url} does not serve {self.only_model} (it serves {listed})",
                    retryable=False,
                    error_code="model_not_served",
                )
            listed = [self.only_model]
        if not listed:
            raise BackendError(
                f"{self.base_url} serves no models", retryable=False, error_code="no_models"
            )
        self._models = listed

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
        if request.mode == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        return "/v1/completions", body

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Stream one generation, counting chunks for progress."""
        if request.model not in self._models:
            raise BackendError(
                f"this miner does not serve {request.model}",
                retryable=True,
                error_code="model_not_served",
            )
        path, body = self._body(request)
        parts: list[str] = []
        chunks = 0
        usage: dict[str, Any] | None = None
        finish_reason: str | None = None
        try:
            async with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _http_error(response)
                async for line in response.aiter_lines():
                    if control.cancelled.is_set():
                        raise GenerationCancelled
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
                            if request.mode == "chat"
                            else choice.get("text")
                        )
                        if text:
                            parts.append(text)
                            chunks += 1
                            control.on_token(chunks)
                        if choice.get("finish_reason"):
                            finish_reason = str(choice["finish_reason"])
        except httpx.TransportError as exc:
            if not parts and not isinstance(exc, httpx.ConnectError):
                await self._explain(path, body)
            raise BackendError(
                f"{self.base_url}{path}: {exc!r}", retryable=True, error_code=BACKEND_UNREACHABLE
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(
                f"{self.base_url}{path}: {exc!r}", retryable=True, error_code="backend_error"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"{self.base_url}{path} sent a malformed stream: {exc!r}",
                retryable=True,
                error_code="backend_error",
            ) from exc
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
                raise _http_error(response)
            return

    async def healthy(self) -> bool:
        """Whether the server answers its model list."""
        try:
            response = await self.http.get("/v1/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


def _http_error(response: httpx.Response) -> BackendError:
    """A server's refusal as a BackendError: 4xx final (the request is wrong), 5xx not."""
    text = response.text[:500]
    if response.status_code == 404:
        return BackendError(
            f"the server does not serve the model: {text}",
            retryable=True,
            error_code="model_not_served",
        )
    if response.status_code < 500:
        code = "prompt_too_long" if "context" in text.lower() else "invalid_request"
        return BackendError(
            f"server refused the request ({response.status_code}): {text}",
            retryable=False,
            error_code=code,
        )
    return BackendError(
        f"server error {response.status_code}: {text}", retryable=True, error_code="backend_error"
    )
