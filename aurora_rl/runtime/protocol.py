"""The OpenAI-compatible wire format: request and response models, and error bodies.

Requests accept what the OpenAI API accepts for the parameters this server implements;
unknown fields are ignored (as clients add new ones over time), while known parameters the
server cannot honour (n > 1, logprobs, penalties, tools, ...) are refused with a 400 that
names them, rather than silently producing something else.

Extensions, both ignored by OpenAI clients: ``top_k`` on requests (as vLLM accepts it), and
a ``spec_decode`` object on responses (verify steps, accepted tokens, the draft versions
that served the request); each streamed chunk's ``system_fingerprint`` names the draft
version that produced it (``draft-v12``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered with an OpenAI-style body: ``{"error": {message, type, param, code}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             408: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error", 431: "invalid_request_error",
             429: "rate_limit_error", 500: "server_error", 503: "service_unavailable_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def validation_error(errors: list[dict]) -> APIError:
    """The first of pydantic's / FastAPI's validation errors as a 400 naming the parameter."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        position = f" at character {loc[0]}" if loc else ""
        return APIError(400, f"We could not parse the JSON body of your request ({reason}{position}); "
                             "send a JSON object with Content-Type: application/json.", code="json_invalid")  # fmt: skip
    param = loc[0] if loc else None
    if first.get("type") == "missing" and not loc:
        return APIError(400, "The request body is empty; send a JSON object with the request's parameters "
                             "(Content-Type: application/json).", code="missing_body")  # fmt: skip
    if first.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{'.'.join(loc)}'.", param, "missing_required_parameter")
    where = f"'{'.'.join(loc)}'" if loc else "request body"
    got = repr(first.get("input"))
    got = got if len(got) <= 200 else got[:200] + "..."  # a huge input is not echoed back whole
    return APIError(400, f"Invalid {where}: {first.get('msg')} (got {got}).", param, "invalid_value")


def check_text(text: str, param: str) -> str:
    """``text`` if it is valid Unicode; a 400 naming ``param`` if it holds a lone surrogate
    (JSON can carry ``"\\ud800"``, but no tokenizer can encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = ord(text[error.start])
        raise APIError(400, f"Invalid '{param}': character {error.start} is a lone surrogate (U+{bad:04X}), which is "
                            "not valid Unicode; send UTF-8 text (surrogates only in valid pairs).", param,
                       "invalid_value") from None  # fmt: skip
    return text


# Torch seeds a generator with any integer in [-2**63, 2**64): OpenAI sends int64 seeds.
SEED_RANGE = {"ge": -(2**63), "lt": 2**64}

# --- requests -------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Parameters both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, **SEED_RANGE)
    stream: bool | None = False  # null = the default, as OpenAI takes it (here and below)
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int | None = 1
    user: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None

    # Parameter -> the values that leave the output as the target makes it; anything
    # else asks for something this server does not implement (null: the default).
    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "n": (1, None), "presence_penalty": (0.0, None), "frequency_penalty": (0.0, None), "logit_bias": (None, {}),
    }  # fmt: skip

    def unsupported(self) -> APIError | None:
        """A 400 for the first parameter set to a value this server cannot honour, or None."""
        for name, neutral in self.NEUTRAL.items():
            value = getattr(self, name)
            if value not in neutral:
                return APIError(400, f"Unsupported parameter: '{name}' = {value!r} is not implemented by this server; "
                                     f"omit it (or send {neutral[0]!r}).", name, "unsupported_parameter")  # fmt: skip
        return None

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise APIError(400, f"Invalid 'stop': at most 4 stop sequences are allowed, got {len(stop)}.", "stop", "invalid_value")
        return [check_text(text, "stop") for text in stop]


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        **_Sampling.NEUTRAL, "echo": (False, None), "logprobs": (None,), "best_of": (None, 1), "suffix": (None, ""),
    }  # fmt: skip

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (a batch of prompts is refused)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"Invalid 'prompt': got a batch of {len(prompt)} prompts; this server takes one "
                                    "prompt per request (send them as separate, concurrent requests).", "prompt", "invalid_value")  # fmt: skip
            prompt = prompt[0]
        if not prompt:
            raise APIError(400, "Invalid 'prompt': the prompt is empty.", "prompt", "invalid_value")
        return check_text(prompt, "prompt") if isinstance(prompt, str) else prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict] | None = None
    response_format: dict | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        **_Sampling.NEUTRAL, "logprobs": (False, None), "top_logprobs": (None, 0), "tools": (None, []),
        "response_format": (None, {"type": "text"}),
    }  # fmt: skip

    def texts(self) -> list[tuple[str, str]]:
        """``[(role, text), ...]`` of the messages, each checked to be valid Unicode."""
        return [(m.role, check_text(m.text(), f"messages[{i}].content")) for i, m in enumerate(self.messages)]

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# --- responses ------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SpecDecodeStats(BaseModel):
    """Extension: how speculative decoding went for this request."""

    verify_steps: int
    proposed_tokens: int
    accepted_tokens: int
    accepted_length: float  # tokens emitted per verify step
    draft_versions: list[int]  # the draft versions that proposed, in order of first use


FinishReason = Literal["stop", "length"]


class _Choice(BaseModel):
    """The fields every choice carries; each kind adds its content (``text``, ``message`` or
    ``delta``). ``finish_reason`` is null on a streamed chunk until the last one."""

    index: int = 0
    logprobs: None = None
    finish_reason: FinishReason | None = None


class CompletionChoice(_Choice):
    text: str


class _Envelope(BaseModel):
    """The fields every completion object carries, in the order OpenAI writes them; each
    response type narrows ``object``, ``choices`` and ``usage``."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list
    usage: Usage | None = None
    spec_decode: SpecDecodeStats | None = None


class CompletionResponse(_Envelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    message: ChatMessageOut
    finish_reason: FinishReason


class ChatCompletionResponse(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Choice):
    delta: ChatDelta


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aurora_rl"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
