"""Batched sampling: greedy, temperature, top-p, top-k, per-row seeds, top-k logprobs.

Randomness is counter-based: the noise for (row seed, generation step, token id) is a hash, so
a seeded request draws the same tokens whatever else is in the batch, without a per-row
generator or a per-row host sync. Sampling is the Gumbel-max trick over the filtered logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_MASK32 = 0xFFFFFFFF


@dataclass
class SamplingTensors:
    """Per-row sampling parameters for one step, B rows, built on the host once per step."""

    temperature: torch.Tensor  # [B] float32; 0 = greedy
    top_p: torch.Tensor  # [B] float32
    top_k: torch.Tensor  # [B] long; vocab size when disabled
    seeds: torch.Tensor  # [B] long, 32-bit
    steps: torch.Tensor  # [B] long: tokens generated so far (the counter)
    banned_rows: torch.Tensor  # [K] long  } (row, token) pairs forced to -inf (min_tokens)
    banned_tokens: torch.Tensor  # [K] long }
    all_greedy: bool
    need_filter: bool  # some row uses top-p or top-k
    max_logprobs: int  # largest `logprobs` asked for; -1 = none


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] long
    logprobs: torch.Tensor | None  # [B] chosen token's logprob
    top_ids: torch.Tensor | None  # [B, k]
    top_logprobs: torch.Tensor | None  # [B, k]
    prompt_logprobs: list[tuple[Any, list]] | None = None
    """(request, its per-prompt-token logprobs) for requests scored this step."""


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding values < 2**32."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """U(0,1) noise [B, V'] for token ids [B, V'] (or [V]) of rows with seeds/steps [B]."""
    h = _hash32(seeds.unsqueeze(1) * 0x9E3779B1 + steps.unsqueeze(1))
    h = _hash32(h ^ (token_ids * 0x85EBCA6B))
    return (h.to(torch.float64) + 0.5) / 4294967296.0


def sample(logits: torch.Tensor, t: SamplingTensors) -> SamplerOutput:
    """logits: [B, V] float32 (already masked for banned tokens by the caller or here)."""
    if t.banned_rows.numel():
        logits = logits.index_put(
            (t.banned_rows, t.banned_tokens), torch.full((), float("-inf"), device=logits.device)
        )
    greedy_ids = logits.argmax(dim=-1)
    if t.all_greedy:
        token_ids = greedy_ids
    else:
        token_ids = torch.where(t.temperature == 0, greedy_ids, _random_sample(logits, t))
    if t.max_logprobs < 0:
        return SamplerOutput(token_ids, None, None, None)
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, token_ids.unsqueeze(1)).squeeze(1)
    top_lp, top_ids = (None, None)
    if t.max_logprobs > 0:
        top_lp, top_ids = logp.topk(t.max_logprobs, dim=-1)
    return SamplerOutput(token_ids, chosen, top_ids, top_lp)


def _random_sample(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    temp = torch.where(t.temperature > 0, t.temperature, torch.ones_like(t.temperature))
    scaled = logits / temp.unsqueeze(1)
    vocab = logits.shape[1]
    if t.need_filter:
        sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        cum_before = probs.cumsum(dim=-1) - probs
        ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
        drop = (cum_before >= t.top_p.unsqueeze(1)) | (ranks >= t.top_k.unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        noise = uniform_noise(t.seeds, t.steps, sorted_ids)
        gumbel = -torch.log(-torch.log(noise)).to(sorted_logits.dtype)
        pick = (sorted_logits + gumbel).argmax(dim=-1, keepdim=True)
        return sorted_ids.gather(1, pick).squeeze(1)
    ids = torch.arange(vocab, device=logits.device)
    noise = uniform_noise(t.seeds, t.steps, ids)
    gumbel = -torch.log(-torch.log(noise)).to(scaled.dtype)
    return (scaled + gumbel).argmax(dim=-1)
