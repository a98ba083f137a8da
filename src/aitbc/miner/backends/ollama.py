"""``ollama``: a real Ollama server over its HTTP API.

Models are what ``GET /api/tags`` lists (optionally narrowed to one). Completion
jobs go to ``POST /api/generate`` and chat jobs to ``POST /api/chat``, both
streamed as newline-delimited JSON; the final object (``"done": true``) carries
Ollama's own token counts, ``prompt_eval_count`` and ``eval_count``, which meter
the job. Closing the stream stops the generation on the server.
"""

from __future__ import annotations

import json
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

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 300.0


class OllamaBackend:
    """Generations on an Ollama server."""

    name = "ollama"

    def __init__(self, base_url: str, *, model: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.only_model = model
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        )
        self._models: list[str] = []

    def models(self) -> list[str]:
        """The models the server has pulled (or the one chosen)."""
        return list(self._models)

    async def start(self) -> None:
        """Read ``/api/tags``; refuse to start when the chosen model is not there."""
        try:
            response = await self.http.get("/api/tags")
            response.raise_for_status()
            # "llama3.2:latest" is served as "llama3.2", the name jobs use.
            listed = [_plain_name(entry["name"]) for entry in response.json()["models"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"cannot list models at {self.base_url}/api/tags: {exc!r}",
                retryable=False,
                error_code="backend_unreachable",
            ) from exc
        if self.only_model is not None:
            self.only_model = _plain_name(self.only_model)
            if self.only_model not in listed:
                raise BackendError(
                    f"{self.base_url} has no model {self.only_model} (it has {listed})",
                    retryable=False,
                    error_code="model_not_served",
                )
            listed = [self.only_model]
        if not listed:
            raise BackendError(
                f"{self.base_url} has no models", retryable=False, error_code="no_models"
            )
        self._models = listed

    @staticmethod
    def _body(request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        options: dict[str, Any] = {
            "num_predict": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.stop:
            options["stop"] = list(request.stop)
        if request.seed is not None:
            options["seed"] = request.seed
        body: dict[str, Any] = {
            "model": request.model,  # Ollama resolves a name without a tag to ":latest"
            "stream": True,
            "options": options,
            # Ollama silently cuts an over-long prompt otherwise: refuse instead.
            "truncate": False,
        }
        if request.mode == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
            return "/api/chat", body
        body["prompt"] = request.prompt
        # Plain continuation: no chat template around the prompt.
        body["raw"] = True
        return "/api/generate", body

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Stream one generation; Ollama's final counts meter it."""
        if request.model not in self._models:
            raise BackendError(
                f"this miner does not serve {request.model}",
                retryable=True,
                error_code="model_not_served",
            )
        path, body = self._body(request)
        parts: list[str] = []
        chunks = 0
        final: dict[str, Any] | None = None
        try:
            async with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _http_error(response)
                async for line in response.aiter_lines():
                    if control.cancelled.is_set():
                        raise GenerationCancelled
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("error"):
                        raise BackendError(
                            f"ollama: {event['error']}", retryable=True, error_code="backend_error"
                        )
                    text = (
                        (event.get("message") or {}).get("content")
                        if request.mode == "chat"
                        else event.get("response")
                    )
                    if text:
                        parts.append(text)
                        chunks += 1
                        control.on_token(chunks)
                    if event.get("done"):
                        final = event
                        break
        except httpx.TransportError as exc:
            raise BackendError(
                f"{self.base_url}{path}: {exc!r}", retryable=True, error_code=BACKEND_UNREACHABLE
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(
                f"{self.base_url}{path}: {exc!r}", retryable=True, error_code="backend_error"
            ) from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise BackendError(
                f"{self.base_url}{path} sent a malformed stream: {exc!r}",
                retryable=True,
                error_code="backend_error",
            ) from exc
        if control.cancelled.is_set():
            raise GenerationCancelled
        if final is None:
            raise BackendError(
                "the stream ended before Ollama said it was done",
                retryable=True,
                error_code="backend_error",
            )
        return Generation(
            "".join(parts),
            int(final.get("prompt_eval_count") or 0),
            int(final.get("eval_count") or chunks),
            str(final.get("done_reason") or "stop"),
        )

    async def healthy(self) -> bool:
        """Whether the server answers its model list."""
        try:
            response = await self.http.get("/api/tags", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


def _plain_name(name: str) -> str:
    """A model name without Ollama's default ``:latest`` tag."""
    return name.removesuffix(":latest")


def _http_error(response: httpx.Response) -> BackendError:
    text = response.text[:500]
    if response.status_code == 404:
        # The model went away after start-up: another miner may still run the job.
        return BackendError(
            f"ollama no longer has the model: {text}", retryable=True, error_code="model_not_served"
        )
    if response.status_code < 500:
        code = "prompt_too_long" if "context" in text.lower() else "invalid_request"
        return BackendError(
            f"ollama refused the request ({response.status_code}): {text}",
            retryable=False,
            error_code=code,
        )
    return BackendError(
        f"ollama error {response.status_code}: {text}", retryable=True, error_code="backend_error"
    )
