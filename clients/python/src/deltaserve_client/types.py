"""Response objects: OpenAI's completion/chat shapes plus deltaserve's models and adapters.

Every object keeps fields the server adds later (`extra="allow"`), so a newer server never
breaks an older client; `model_dump()` gives the JSON back.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Adapter",
    "AdapterDeleted",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatDelta",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "Model",
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


class Completion(_Object):
    """The result of `completions.create` (and, with `stream=True`, each chunk)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChunk(Completion):
    """One streamed completions event: `choices[i].text` is the new text of choice `index`;
    with `stream_options={"include_usage": True}` the last chunk has `usage` and no choices."""


class ChatMessage(_Object):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(_Object):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletion(_Object):
    """The result of `chat.completions.create`."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatDelta(_Object):
    """What a streamed chunk adds to a message: the role first, then pieces of content."""

    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Object):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Object):
    """One streamed chat event."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


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
