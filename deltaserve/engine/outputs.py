"""What the engine hands back for each request after each step (cumulative, like vLLM)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """Log-probability of one generated token and the top alternatives at that position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    """(token_id, logprob) of the most likely tokens, best first (len = requested logprobs)."""
    rank: int | None = None
    """1-based rank of token_id in its distribution (set for prompt logprobs)."""


@dataclass
class CompletionOutput:
    """One sample of a request, cumulative since the request started."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None
    """'stop' (EOS, stop token or stop string), 'length', 'abort', or None while running."""
    stop_reason: str | int | None = None
    """The stop string or stop token id that ended it, if any."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.monotonic seconds) for latency metrics."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    """The state of a request after an engine step."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    adapter: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Per prompt token (the first None) when params.prompt_logprobs was set."""
    num_cached_tokens: int = 0
    """Prompt tokens whose K/V came from the prefix cache (OpenAI's usage.cached_tokens)."""
