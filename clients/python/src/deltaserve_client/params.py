"""The keyword arguments of `completions.create` and `chat.completions.create`, typed.

They mirror OpenAI's parameters, plus vLLM's extensions and deltaserve's own. Anything not
listed here is still sent as given (or put it in `extra_body`), so a newer server's fields work
with an older client. `None` means "not given": the field is left out of the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Required, TypedDict

import httpx

__all__ = [
    "AdhocAdapter",
    "ChatParams",
    "CompletionParams",
    "RequestOptions",
    "SamplingParams",
    "StreamOptions",
]


class RequestOptions(TypedDict, total=False):
    """Per-call client options (never sent to the server)."""

    max_retries: int
    """Retries for this call only (0: none); default: the client's `max_retries`."""
    timeout: float | httpx.Timeout | None
    """Seconds (or an httpx.Timeout) for this call; default: the client's `timeout`."""
    extra_headers: Mapping[str, str]
    """Headers added to this request."""
    extra_body: Mapping[str, Any]
    """Fields merged into the JSON body as given (for fields this client does not know)."""


OPTION_KEYS = frozenset(RequestOptions.__annotations__)


class AdhocAdapter(TypedDict, total=False):
    """One member of an ad-hoc mix: a LoRA adapter's name and its routing weight."""

    name: Required[str]
    weight: float
    """Used as given; leave it out for every member to get the uniform average."""


class StreamOptions(TypedDict, total=False):
    include_usage: bool
    """Send a last chunk with `usage` (and no choices)."""


class SamplingParams(RequestOptions, total=False):
    """Fields shared by completions and chat completions."""

    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: str | Sequence[str]
    seed: int
    user: str
    presence_penalty: float
    frequency_penalty: float
    logit_bias: Mapping[str, float]
    stream_options: StreamOptions
    # vLLM's extensions
    top_k: int
    """Sample from the k most likely tokens (-1 or 0: all)."""
    min_tokens: int
    """Generate at least this many tokens before EOS or a stop string may end the text."""
    ignore_eos: bool
    """Keep generating past EOS (until max_tokens or a stop string)."""
    stop_token_ids: Sequence[int]
    include_stop_str_in_output: bool
    structured_outputs: Mapping[str, Any]
    """vLLM's constrained decoding: one of `{"json": schema}`, `{"regex": ...}`,
    `{"choice": [...]}`, `{"grammar": ...}`."""
    response_format: Mapping[str, Any]
    """OpenAI's `{"type": "json_schema", "json_schema": {...}}` or `{"type": "json_object"}`."""
    # deltaserve's extensions
    proxy_alpha: float
    """Strength of a proxy adapter for this request (`model` names a proxy adapter)."""
    adapters: Sequence[AdhocAdapter]
    """An ad-hoc mix of registered LoRA adapters (`model` names the base model)."""
    heads: int
    """Routing heads of the ad-hoc mix (default 1)."""
    routing: Sequence[Sequence[float]]
    """Per-head routing weights, heads × adapters (instead of per-adapter `weight`s)."""


class CompletionParams(SamplingParams, total=False):
    """`completions.create` keyword arguments."""

    echo: bool
    logprobs: int
    """Return the log-probabilities of this many most likely tokens per position."""
    suffix: str
    best_of: int
    prompt_logprobs: int
    """vLLM's extension: log-probabilities of the prompt's tokens."""


class ChatParams(SamplingParams, total=False):
    """`chat.completions.create` keyword arguments."""

    max_completion_tokens: int
    logprobs: bool
    top_logprobs: int
    add_generation_prompt: bool
    """vLLM's extension: end the prompt with the assistant turn's header (default true)."""
    prompt_logprobs: int
