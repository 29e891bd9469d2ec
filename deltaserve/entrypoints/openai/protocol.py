"""OpenAI request/response models for completions, chat completions and the model list.

Requests ignore unknown fields, as OpenAI does. Ranges are checked here so that a bad value is
reported with its `param`; the engine's SamplingParams.validate() is the second line.
vLLM's extensions ignore_eos, min_tokens, top_k, stop_token_ids and include_stop_str_in_output
are accepted as top-level fields.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_serializer

from deltaserve.engine.sampling_params import MAX_LOGPROBS

UNION_FIELD_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of strings",
    "messages": "a list of messages whose content is a string or a list of content parts",
}
"""What union-typed request fields accept, for validation error messages."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False
    """Send a final chunk with `usage` (and empty `choices`)."""


class AdhocAdapter(_Request):
    """One member of an ad-hoc mix (deltaserve extension)."""

    name: str
    weight: float | None = None
    """Routing weight (used as given); omitted for every member: the uniform average."""


class JsonSchemaFormat(_Request):
    """response_format.json_schema: a named JSON schema the output must follow."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """OpenAI's response_format: free text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Request):
    """vLLM's structured_outputs: exactly one of json (a schema), regex, choice, grammar."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    """An EBNF (GBNF-style) grammar whose start rule is `root`."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SamplingFields(_Request):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    user: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    # vLLM extensions
    top_k: int | None = Field(None, ge=-1)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    """vLLM extension: logprob of every prompt token (+ this many alternatives per position)."""
    structured_outputs: StructuredOutputs | None = None
    """vLLM extension: constrain the output to a JSON schema, regex, choice or EBNF grammar."""
    response_format: ResponseFormat | None = None
    # deltaserve extension: α of a proxy adapter (`model` names a proxy adapter)
    proxy_alpha: float | None = Field(None, allow_inf_nan=False)
    """Proxy-tuning strength for this request; default: the adapter's `alpha`."""
    # deltaserve extension: an ad-hoc MHR/Polytropon mix of LoRAs (`model` = the base model)
    adapters: list[AdhocAdapter] | None = None
    heads: int | None = Field(None, ge=1)
    """Routing heads of the ad-hoc mix (default 1; the weights are repeated per head)."""
    routing: list[list[float]] | None = None
    """Per-head routing, heads × adapters (instead of per-adapter `weight`s)."""

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    """0 (with echo) scores the prompt without generating."""
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


class ChatMessage(_Request):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    """vLLM extension: end the rendered prompt with the assistant turn's header."""


# --- responses ---------------------------------------------------------------------------

MIN_LOGPROB = -9999.0


def _finite(v: float) -> float:
    # Masked tokens (structured outputs, min_tokens) have logprob -inf, which JSON cannot
    # carry (it would become null); report them as -9999.0, as vLLM does.
    return v if v >= MIN_LOGPROB else MIN_LOGPROB


Logprob = Annotated[float, PlainSerializer(_finite, return_type=float)]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache (OpenAI's field)."""


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[Logprob | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, Logprob] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    """vLLM's prompt_logprobs entry for one token id at one prompt position."""

    logprob: Logprob
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[str, PromptLogprob] | None]
"""Per prompt position (the first None): token id (as a string) → its logprob."""


class _WithPromptLogprobs(BaseModel):
    """vLLM's `prompt_logprobs`: present in the JSON only when asked for (OpenAI's typed
    clients reject unknown nulls)."""

    prompt_logprobs: PromptLogprobs | None = None

    @model_serializer(mode="wrap")
    def _omit_prompt_logprobs(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("prompt_logprobs") is None:
            data.pop("prompt_logprobs", None)
        return data


class CompletionChoice(_WithPromptLogprobs):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: Logprob
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(_WithPromptLogprobs):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    """A streamed message delta: absent fields are omitted, as OpenAI sends them."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionChunk(BaseModel):
    """Streamed completions reuse the response's object name, as OpenAI does."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "deltaserve"
    root: str | None = None
    parent: str | None = None
    kind: str | None = None
    """deltaserve extension: the adapter kind (lora, sparse_delta, proxy, mix); None = base."""
    max_model_len: int | None = None
    dtype: str | None = None
    """deltaserve extension, on the base's entry: the dtype the engine serves in."""
    quantization: str | None = None
    """deltaserve extension, on the base's entry: how the base's weights are held (none, int8,
    int4, gptq, awq)."""


class TokenizeRequest(_Request):
    """vLLM's POST /tokenize: a prompt, or chat messages rendered with the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
