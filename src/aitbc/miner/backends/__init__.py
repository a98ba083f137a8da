"""Inference backends behind one interface (``base.Backend``), chosen by name."""

from __future__ import annotations

from pathlib import Path

from aitbc.miner.backends.base import Backend, BackendError

BACKENDS = ("llamacpp", "transformers", "openai", "ollama")


def create_backend(
    name: str,
    *,
    model: str | None,
    model_path: Path | None = None,
    concurrency: int = 1,
    url: str | None = None,
    api_key: str | None = None,
    threads_per_job: int | None = None,
) -> Backend:
    """The backend ``name`` serving ``model`` (its default model, or every model its
    server lists, when None)."""
    from aitbc.miner.backends.bundled import DEFAULT_MODEL_NAME

    if name == "llamacpp":
        from aitbc.miner.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            model_name=model or DEFAULT_MODEL_NAME,
            model_path=model_path,
            concurrency=concurrency,
            threads_per_job=threads_per_job,
        )
    if name == "transformers":
        from aitbc.miner.backends.transformers import TransformersBackend

        # Every job the daemon runs at once joins one batch.
        return TransformersBackend(
            model_name=model or DEFAULT_MODEL_NAME, model_path=model_path, max_batch=concurrency
        )
    if name == "openai":
        from aitbc.miner.backends.openai import OpenAIBackend

        if not url:
            raise BackendError(
                "--backend openai needs --backend-url (e.g. http://127.0.0.1:8000)",
                retryable=False,
                error_code="backend_url_missing",
            )
        return OpenAIBackend(url, model=model, api_key=api_key)
    if name == "ollama":
        from aitbc.miner.backends.ollama import OllamaBackend

        return OllamaBackend(url or "http://127.0.0.1:11434", model=model)
    raise BackendError(
        f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}",
        retryable=False,
        error_code="unknown_backend",
    )
