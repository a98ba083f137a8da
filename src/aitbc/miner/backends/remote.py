"""What the backends that drive an inference server over HTTP share (``openai``,
``ollama``): the connection pool, the model list read at start and re-read as a
health check, the refusal of models the server does not serve, and the mapping of
HTTP failures to :class:`BackendError` reasons."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from aitbc.miner.backends.base import (
    BACKEND_UNREACHABLE,
    BackendError,
    GenerationCancelled,
    GenerationControl,
    GenerationRequest,
)

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 300.0
HEALTH_TIMEOUT_SECONDS = 5.0
# The template overhead declared for every model of a server: it tokenizes, the miner
# cannot, so this is a constant above the usual chat templates (SmolLM2's, with its
# default system prompt, adds 30 tokens; Llama 3's and Qwen 2.5's about as many). A
# server-side system prompt longer than that makes the coordinator refuse the count.
REMOTE_TEMPLATE_TOKENS = 64


class RemoteBackend:
    """An inference server at ``base_url``; subclasses say how it lists its models."""

    name = "remote"
    # The endpoint that lists the served models.
    models_path = "/"

    def __init__(
        self, base_url: str, *, model: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.only_model = self.model_name(model) if model else None
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers or {},
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
        )
        self._models: list[str] = []

    def listed_models(self, document: Any) -> list[str]:
        """The model names in the answer of ``models_path``."""
        raise NotImplementedError

    @staticmethod
    def model_name(name: str) -> str:
        """The name a listed model is served (and jobs name it) under."""
        return name

    def models(self) -> list[str]:
        """The models the server lists (or the one chosen)."""
        return list(self._models)

    def template_tokens(self) -> dict[str, int]:
        """:data:`REMOTE_TEMPLATE_TOKENS` for every served model."""
        return dict.fromkeys(self._models, REMOTE_TEMPLATE_TOKENS)

    async def start(self) -> None:
        """Read the model list; refuse to start when the chosen model is not served."""
        try:
            response = await self.http.get(self.models_path)
            response.raise_for_status()
            listed = [self.model_name(name) for name in self.listed_models(response.json())]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"cannot list models at {self.base_url}{self.models_path}: {exc!r}",
                retryable=False,
                error_code=BACKEND_UNREACHABLE,
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

    def check_served(self, request: GenerationRequest) -> None:
        """Refuse a job naming a model this miner does not serve (another miner may)."""
        if request.model not in self._models:
            raise BackendError(
                f"this miner does not serve {request.model}",
                retryable=True,
                error_code="model_not_served",
            )

    async def stream_lines(
        self, path: str, body: dict[str, Any], control: GenerationControl
    ) -> AsyncGenerator[str, None]:
        """The non-empty lines of the streamed answer to ``body``. An error answer is
        raised as :meth:`refusal`; a cancelled job raises GenerationCancelled at the
        next line, which closes the stream and so stops the server generating.
        (Use with ``contextlib.aclosing`` so an early exit closes it at once too.)"""
        async with self.http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise self.refusal(response)
            async for line in response.aiter_lines():
                if control.cancelled.is_set():
                    raise GenerationCancelled
                if line.strip():
                    yield line

    def failure(self, path: str, exc: Exception) -> BackendError:
        """A failed request or stream as a retryable BackendError with its reason."""
        if isinstance(exc, httpx.TransportError):
            code = BACKEND_UNREACHABLE
        elif isinstance(exc, httpx.HTTPError):
            code = "backend_error"
        else:
            return BackendError(
                f"{self.base_url}{path} sent a malformed stream: {exc!r}",
                retryable=True,
                error_code="backend_error",
            )
        return BackendError(f"{self.base_url}{path}: {exc!r}", retryable=True, error_code=code)

    def refusal(self, response: httpx.Response) -> BackendError:
        """A server's error answer: 404 the model is gone (retryable elsewhere), other
        4xx the request is wrong (final), 5xx the server failed (retryable)."""
        text = response.text[:500]
        status = response.status_code
        if status == 404:
            return BackendError(
                f"{self.name} server does not serve the model: {text}",
                retryable=True,
                error_code="model_not_served",
            )
        if status < 500:
            code = "prompt_too_long" if "context" in text.lower() else "invalid_request"
            return BackendError(
                f"{self.name} server refused the request ({status}): {text}",
                retryable=False,
                error_code=code,
            )
        return BackendError(
            f"{self.name} server error {status}: {text}",
            retryable=True,
            error_code="backend_error",
        )

    async def healthy(self) -> bool:
        """Whether the server answers its model list."""
        try:
            response = await self.http.get(self.models_path, timeout=HEALTH_TIMEOUT_SECONDS)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()
