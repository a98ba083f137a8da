"""How many tokens a miner may charge for a job: the bounds a receipt's usage must obey.

A miner meters its own tokens, so the coordinator bounds what it reports by what
the text can hold, before signing a receipt that a client pays for:

- completion tokens: at most the job's ``max_tokens``, and at most the result's UTF-8
  bytes plus its stop sequences' bytes plus ``COMPLETION_SPECIAL_ALLOWANCE_TOKENS``
  (no token decodes to less than a byte, except end-of-text and special tokens, and
  stop sequences the engine generated and then cut from the text);
- prompt tokens: at most the prompt's UTF-8 bytes plus the allowance for the chat
  template of the miner that claimed the job, which it declared (bounded) before it
  claimed (``MinerTerms.prompt_allowance``), so a 2-byte prompt cannot be billed as
  hundreds of tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aitbc.errors import ValidationFailed

COMPLETION_SPECIAL_ALLOWANCE_TOKENS = 16


def prompt_token_bound(prompt: str, allowance: int) -> int:
    """Most prompt tokens a miner may charge for ``prompt``."""
    return len(prompt.encode("utf-8")) + allowance


def completion_token_bound(result: str, params: Mapping[str, Any]) -> int:
    """Most completion tokens a miner may charge for ``result``."""
    stops = params.get("stop") or ()
    stop_bytes = sum(len(str(stop).encode("utf-8")) for stop in stops)
    return len(result.encode("utf-8")) + stop_bytes + COMPLETION_SPECIAL_ALLOWANCE_TOKENS


def check_usage(
    *,
    prompt: str,
    result: str,
    params: Mapping[str, Any],
    prompt_tokens: int,
    completion_tokens: int,
    prompt_allowance: int,
) -> None:
    """Raise :class:`ValidationFailed` (with a specific code) if the reported usage is
    more than the job's text can hold."""
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, int) and completion_tokens > max_tokens:
        raise ValidationFailed(
            f"usage.completion_tokens {completion_tokens} exceeds the job's "
            f"max_tokens {max_tokens}",
            error_code="usage_exceeds_max_tokens",
        )
    completion_bound = completion_token_bound(result, params)
    if completion_tokens > completion_bound:
        raise ValidationFailed(
            f"usage.completion_tokens {completion_tokens} is more than the result can "
            f"hold ({completion_bound}: its UTF-8 bytes plus stop sequences and "
            "end-of-text tokens)",
            error_code="usage_exceeds_result",
        )
    prompt_bound = prompt_token_bound(prompt, prompt_allowance)
    if prompt_tokens > prompt_bound:
        raise ValidationFailed(
            f"usage.prompt_tokens {prompt_tokens} is more than the prompt can hold "
            f"({prompt_bound}: its UTF-8 bytes plus {prompt_allowance} for the chat "
            "template the miner declared in template_tokens)",
            error_code="usage_exceeds_prompt",
        )
