"""The OpenAI request bodies the service takes, what each field may hold, and the error it answers with.

A field a server quietly ignores changes the answer without telling the client (n=3 answered with one
choice, a presence penalty never applied), so nothing sent is ignored. The fields the service honours are
declared with their bounds. OpenAI's fields it does not implement (log probabilities, penalties, tools, ...)
are declared too, and taken only at the value that asks for nothing: any other value is a 400 naming the
field. Any other field is refused as OpenAI refuses it, as an unrecognized argument. `user` is metadata
(OpenAI's abuse monitoring): taken, and not used.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI's completions default, and this service's for chat too
DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    """An error answered with `status` and OpenAI's error body; `param` names the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}

    def body(self) -> dict:
        kind = {400: "invalid_request_error", 404: "not_found_error", 408: "timeout_error",
                429: "rate_limit_error"}.get(self.status, "server_error")  # fmt: skip
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk, before [DONE], with no choices and the request's token counts


class _GenerationRequest(_Strict):
    """The fields both endpoints take."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=128)  # choices: each its own request to the engine
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # an extension, as vLLM's
    seed: int | None = None  # choice i samples with seed + i, so that n choices differ
    stop: list[str] | None = None  # one string is taken as a list of one
    stream: bool = False
    stream_options: StreamOptions | None = None
    timeout: float | None = Field(None, gt=0.0)  # seconds; an extension: the request ends with an error past it
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    # OpenAI's fields this service does not implement, and the values of each that ask for nothing
    NOT_IMPLEMENTED: ClassVar[dict[str, tuple]] = {
        "presence_penalty": (0.0,), "frequency_penalty": (0.0,), "logit_bias": (None, {}),
    }  # fmt: skip

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value):
        return [value] if isinstance(value, str) else value

    def max_new_tokens(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def check(self) -> None:
        """Refuse what the field types cannot: a field set to something this service does not implement, or
        fields that contradict each other."""
        for name, nothing in self.NOT_IMPLEMENTED.items():
            value = getattr(self, name)
            if value not in nothing:
                raise ApiError(400, f"{name}: not supported by this server (got {value!r})", name)
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options: only allowed when stream is true", "stream_options")


def _token_ids(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(type(t) is int for t in value)


class CompletionRequest(_GenerationRequest):
    prompt: list[str | list[int]]  # a batch of prompts, each text or token ids; one prompt is a batch of one
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    NOT_IMPLEMENTED: ClassVar[dict[str, tuple]] = {
        **_GenerationRequest.NOT_IMPLEMENTED, "echo": (False,), "suffix": (None, ""), "logprobs": (None,),
    }  # fmt: skip

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_a_batch(cls, value):
        """OpenAI's four forms: text, token ids, or a list of either. Checked here rather than as a union of
        types, whose error would name one of its members instead of saying what a prompt may be."""
        if isinstance(value, str) or _token_ids(value):
            return [value]
        if isinstance(value, list) and value and all(isinstance(p, str) or _token_ids(p) for p in value):
            return value
        raise ValueError("a prompt is a string or a list of token ids, and a batch a non-empty list of either")

    def check(self) -> None:
        super().check()
        if self.best_of not in (None, self.n):  # best_of = n is plain sampling of n choices
            raise ApiError(400, f"best_of: only equal to n ({self.n}) is supported (got {self.best_of})", "best_of")


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value):
        """OpenAI's content parts ([{"type": "text", "text": ...}, ...]) as one text, joined by newlines as
        vLLM joins them; any other part (an image, audio) is refused."""
        if not isinstance(value, list):
            return value
        texts = []
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"part {i} is {kind!r}: this server takes text parts only")
            texts.append(part["text"])
        return "\n".join(texts)

    def for_template(self) -> dict:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system"
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ChatRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens in chat
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None  # a string or an object; any but "none" is refused

    NOT_IMPLEMENTED: ClassVar[dict[str, tuple]] = {
        **_GenerationRequest.NOT_IMPLEMENTED, "logprobs": (None, False), "top_logprobs": (None, 0),
        "response_format": (None, {"type": "text"}), "tools": (None, []), "tool_choice": (None, "none"),
    }  # fmt: skip

    def max_new_tokens(self) -> int:
        return self.max_completion_tokens or super().max_new_tokens()

    def check(self) -> None:
        super().check()
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ApiError(400, f"max_completion_tokens: {self.max_completion_tokens} contradicts max_tokens "
                           f"{self.max_tokens}; send one of them", "max_completion_tokens")  # fmt: skip
