"""``ollama``: a real Ollama server over its HTTP API.

Models are what ``GET /api/tags`` lists (optionally narrowed to one). Completion
jobs go to ``POST /api/generate`` and chat jobs to ``POST /api/chat``, both
streamed as newline-delimited JSON; the final object (``"done": true``) carries
Ollama's own token counts, ``prompt_eval_count`` and ``eval_count``, which meter
the job. Closing the stream stops the generation on the server.
"""

from __future__ import annotations

import contextlib
import json
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


class OllamaBackend(RemoteBackend):
    """Generations on an Ollama server."""

    name = "ollama"
    models_path = "/api/tags"

    def listed_models(self, document: Any) -> list[str]:
        """``{"models": [{"name": ...}, ...]}``."""
        return [str(entry["name"]) for entry in document["models"]]

    @staticmethod
    def model_name(name: str) -> str:
        """``llama3.2:latest`` is served as ``llama3.2``, the name jobs use (Ollama
        resolves a name without a tag to ``:latest``)."""
        return name.removesuffix(":latest")

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
            "model": request.model,
            "stream": True,
            "options": options,
            # Ollama silently cuts an over-long prompt otherwise: refuse instead.
            "truncate": False,
        }
        messages = request.chat_messages()
        if messages is not None:
            body["messages"] = messages
            return "/api/chat", body
        body["prompt"] = request.prompt
        # Plain continuation: no chat template around the prompt.
        body["raw"] = True
        return "/api/generate", body

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> Generation:
        """Stream one generation; Ollama's final counts meter it."""
        self.check_served(request)
        path, body = self._body(request)
        parts: list[str] = []
        chunks = 0
        final: dict[str, Any] | None = None
        try:
            async with contextlib.aclosing(self.stream_lines(path, body, control)) as lines:
                async for line in lines:
                    event = json.loads(line)
                    if event.get("error"):
                        raise BackendError(
                            f"ollama: {event['error']}", retryable=True, error_code="backend_error"
                        )
                    text = (
                        (event.get("message") or {}).get("content")
                        if request.mode != "completion"
                        else event.get("response")
                    )
                    if text:
                        parts.append(text)
                        control.on_text(text)
                        chunks += 1
                        control.on_token(chunks)
                    if event.get("done"):
                        final = event
                        break
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            raise self.failure(path, exc) from exc
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
