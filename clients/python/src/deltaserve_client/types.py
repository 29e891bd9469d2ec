"""Response objects: OpenAI's completion/chat shapes plus deltaserve's models and adapters.

Every object keeps fields the server adds later (`extra="allow"`), so a newer server never
breaks an older client; `model_dump()` gives the JSON back.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Adapter",
    "AdapterDeleted",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatDelta",
    "ChatLogprobs",
    "ChatTokenLogprob",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "Model",
    "TopLogprob",
    "Usage",
]


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Usage(_Object):
    """Token counts of one request (all choices together)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(_Object):
    """Legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Object):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    """`stop` (EOS or a stop string), `length` (max_tokens); None while streaming."""


class _Generated(_Object):
    """What every completion, chat completion and chunk has."""

    id: str
    created: int
    model: str
    """The `model` of the request: the base model's id or an adapter's name."""
    usage: Usage | None = None
    """Token counts (in a stream: only on the last chunk, with `include_usage`)."""
    system_fingerprint: str | None = None


class Completion(_Generated):
    """The result of `completions.create`."""

    object: str = "text_completion"
    choices: list[CompletionChoice]


class CompletionChunk(Completion):
    """One streamed completions event: `choices[i].text` is the new text of choice `index`;
    with `stream_options={"include_usage": True}` the last chunk has `usage` and no choices."""


class TopLogprob(_Object):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    """One generated token's log-probability and the most likely alternatives."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Object):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class ChatMessage(_Object):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(_Object):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(_Generated):
    """The result of `chat.completions.create`."""

    object: str = "chat.completion"
    choices: list[ChatChoice]


class ChatDelta(_Object):
    """What a streamed chunk adds to a message: the role first, then pieces of content."""

    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Object):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Generated):
    """One streamed chat event: `choices[i].delta` adds to choice `index`; with
    `stream_options={"include_usage": True}` the last chunk has `usage` and no choices."""

    object: str = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class Model(_Object):
    """An entry of `/v1/models`: the base model (`parent` and `kind` None) or an adapter."""

    id: str
    object: str = "model"
    created: int = 0
    owned_by: str | None = None
    root: str | None = None
    parent: str | None = None
    """The base model's id, for an adapter."""
    kind: str | None = None
    """The adapter kind (`lora`, `sparse_delta`, `proxy`, `mix`); None for the base model."""
    max_model_len: int | None = None


class Adapter(_Object):
    """A registered adapter, as `/v1/adapters` shows it."""

    id: str
    """Its name: what `model=` takes."""
    object: str = "adapter"
    kind: str
    parent: str | None = None
    base_model: str | None = None
    owner: str
    """`shared` for adapters every tenant may use, else the owning tenant."""
    sha256: str
    """Content hash of the adapter's files."""
    bytes: int
    rank: int | None = None
    target_modules: list[str] = Field(default_factory=list)
    created: int = 0
    source: str | None = None
    """How it was registered: `upload`, `path` or `adapter-dir`."""


class AdapterDeleted(_Object):
    id: str
    object: str = "adapter"
    deleted: bool
