"""Requests and their sequences (one per sample when n > 1), as the scheduler tracks them."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from deltaserve.engine.outputs import RequestMetrics, TokenLogprob
from deltaserve.engine.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """One sample being generated. Its KV lives in `block_table` (block ids, in order)."""

    seq_id: int
    request: Request
    index: int
    seed: int
    """Seed of this sample's random stream (derived from the request seed and index)."""
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[TokenLogprob] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    """Tokens whose K/V are in the cache."""
    block_hashes: list[bytes] = field(default_factory=list)
    """Content hash of each full block of token_ids() so far (prefix_cache.extend_hashes)."""
    num_registered_blocks: int = 0
    """Leading blocks of block_table already registered in the prefix cache."""
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # Incremental detokenization state (see detokenizer.py).
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    matcher: Any = None
    """The grammar matcher of a structured-output sample (see grammar.py), made lazily."""

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.request.prompt_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.output_token_ids)

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def adapter_key(self) -> str | None:
        return self.request.adapter_key

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    @property
    def scores_prompt(self) -> bool:
        """Whether this is the sample that computes its request's prompt logprobs (it needs
        every prompt position's logits: no prefix-cache hit for it)."""
        return (self.params.prompt_logprobs is not None and self.request.prompt_logprobs is None
                and self.index == 0)

    def token_ids(self) -> list[int]:
        return self.request.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """token_ids()[start:end] without building the whole list (decode reads one token)."""
        n_prompt = len(self.request.prompt_token_ids)
        if start >= n_prompt:
            return self.output_token_ids[start - n_prompt : end - n_prompt]
        return self.token_ids()[start:end]


@dataclass
class Request:
    """A client request: a prompt, its sampling parameters, its adapter and its n sequences."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    """Resolved generation cap (params.max_tokens or what fits in the context)."""
    adapter_key: str | None = None
    adapter_name: str | None = None
    seqs: list[Sequence] = field(default_factory=list)
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(time.monotonic()))
    tenant: str | None = None
    """Owner, for per-tenant fairness policies."""
    adapter_kind: str | None = None
    """Kind of the adapter (None: base rows), for per-kind prefix-cache metrics."""
    cache_root: bytes | None = None
    """Root of the block hashes (prefix_cache.root_key); None: this request is not cached."""
    num_cached_tokens: int = 0
    """Prompt tokens of its first sample found in the prefix cache (usage.cached_tokens)."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """One entry per prompt token (the first None), once computed (params.prompt_logprobs)."""
    partial_prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    """Scores of the prompt chunks computed so far (prompt_logprobs.py), until complete."""

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)
