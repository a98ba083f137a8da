"""Request schemas of the OpenAI-compatible gateway (DESIGN.md section 9), in OpenAI's
own shapes (the ``openai`` package's types are the ground truth).

What a network of miners cannot honour is refused with a 400 naming the parameter,
never silently ignored: every OpenAI parameter outside :data:`SUPPORTED` is accepted
only when it asks for nothing (null, or its default value), and anything else is
``unsupported_parameter``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aitbc.schemas import MAX_MAX_TOKENS

MAX_STOP_SEQUENCES = 16

# Parameters that, at these values, ask for nothing this gateway does not do.
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (False,),
    "echo": (False,),
    "best_of": (1,),
    "store": (False,),
    "parallel_tool_calls": (False, True),
    "tools": ([],),
    "tool_choice": ("none",),
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
    "metadata": ({},),
    "suffix": ("",),
    "service_tier": ("auto", "default"),
}


OPENAI_TYPE_BY_STATUS = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    429: "rate_limit_error",
}


def openai_error_body(
    status: int, message: str, code: str, param: str | None = None
) -> dict[str, Any]:
    """An error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:
    ``type`` from the status as OpenAI words it, ``code`` our ``error_code``."""
    kind = OPENAI_TYPE_BY_STATUS.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class UnsupportedParameter(ValueError):
    """A parameter this gateway cannot honour (its name in ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a final chunk with the usage."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _GatewayRequest(BaseModel):
    """The sampling parameters both endpoints share; unknown members are kept so
    :meth:`unsupported` can name them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not stop or len(stop) > 200 for stop in stops):
            raise ValueError("stop sequences are 1 to 200 characters")
        return value

    def stop_list(self) -> list[str] | None:
        """``stop`` as a list (None when none)."""
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop) or None

    def unsupported(self) -> UnsupportedParameter | None:
        """The first parameter asking for what the gateway cannot do, if any."""
        if self.n not in (None, 1):
            return UnsupportedParameter("n", "only n=1 is supported (one miner, one answer)")
        for name, value in (self.model_extra or {}).items():
            if value is None or value in NO_OP_VALUES.get(name, ()):
                continue
            return UnsupportedParameter(
                name, f"parameter {name!r} is not supported by this gateway"
            )
        return None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    """A text part of a message's ``content`` list."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_GatewayRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_MAX_TOKENS)

    @model_validator(mode="after")
    def _ends_with_the_user(self) -> ChatCompletionRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return self

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def job_messages(self) -> list[dict[str, str]]:
        """The messages as a job carries them (``params.mode = "messages"``)."""
        return [
            {
                "role": "system" if message.role == "developer" else message.role,
                "content": message.text(),
            }
            for message in self.messages
        ]


class CompletionRequest(_GatewayRequest):
    """``POST /v1/completions`` (plain continuation of ``prompt``)."""

    prompt: str | list[str]
    # OpenAI's default for this endpoint.
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_MAX_TOKENS)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) != 1:
            raise ValueError("exactly one prompt per request (send a list of one)")
        if not prompts[0]:
            raise ValueError("the prompt is empty")
        return value

    def prompt_text(self) -> str:
        """The one prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
