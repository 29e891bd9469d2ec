"""Per-request sampling parameters (OpenAI + vLLM extensions), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Upper bound on top-k logprobs a request may ask for (OpenAI allows 20 for chat, 5 for completions).
MAX_LOGPROBS = 20
OUTPUT_KINDS = ("cumulative", "final_only")


@dataclass
class SamplingParams:
    """How one request samples. `temperature == 0` means greedy.

    Every field mirrors the OpenAI / vLLM request field of the same name.
    """

    n: int = 1
    """Number of independent samples (completions) for the prompt."""
    max_tokens: int | None = 16
    """Maximum generated tokens per sample; None = whatever fits in the context."""
    min_tokens: int = 0
    """EOS and stop token ids are suppressed until this many tokens were generated."""
    temperature: float = 1.0
    """Softmax temperature; 0 selects greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = -1
    """Keep only the k most likely tokens; -1 or 0 disables."""
    seed: int | None = None
    """Per-request seed: the same seed gives the same tokens whatever else is in the batch."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends when one appears in the text; it is not part of the output."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end generation (in addition to EOS unless ignore_eos)."""
    ignore_eos: bool = False
    """Keep generating past EOS."""
    logprobs: int | None = None
    """If set, return the chosen token's logprob plus this many top alternatives per token."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the output text."""
    proxy_alpha: float | None = None
    """deltaserve extension: α of a proxy adapter for this request (None: the adapter's)."""
    prompt_logprobs: int | None = None
    """If set, also return each prompt token's logprob (the first is None) and this many top
    alternatives per position (vLLM's `prompt_logprobs`; OpenAI's `echo` + `logprobs`)."""
    grammar: Any = None
    """A compiled grammar (engine.grammar.Grammar) every sample must follow; None: free text."""
    output_kind: str = "cumulative"
    """cumulative: an output after every step (streaming); final_only: only the finished one
    (vLLM's RequestOutputKind.FINAL_ONLY) — no per-token work for whoever does not stream."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == 0:
            self.top_k = -1
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for any out-of-range field."""
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            # 0 scores a prompt without generating (only useful with prompt logprobs)
            if self.max_tokens != 0 or self.prompt_logprobs is None:
                raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        if not (self.temperature >= 0.0) or self.temperature != self.temperature:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (disabled) or positive, got {self.top_k}")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        if self.prompt_logprobs is not None and not (0 <= self.prompt_logprobs <= MAX_LOGPROBS):
            raise ValueError(
                f"prompt_logprobs must be between 0 and {MAX_LOGPROBS}, got {self.prompt_logprobs}"
            )
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, got {self.output_kind!r}")
        if self.proxy_alpha is not None and (
            self.proxy_alpha != self.proxy_alpha or abs(self.proxy_alpha) == float("inf")
        ):
            raise ValueError(f"proxy_alpha must be a finite number, got {self.proxy_alpha}")
        if self.seed is not None and not (-(2**63) <= self.seed < 2**64):
            raise ValueError("seed is out of range")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
