"""Prompt logprobs: the model's distribution at every prompt position, for scoring prompts.

A request that asks (`params.prompt_logprobs`) is scored by its first sample (index 0), which
computes its prompt from position 0 (the scheduler gives it no prefix-cache hit), in one
prefill or in chunks (chunked prefill): each step's `logits_index` is widened with the packed
rows of that step's prompt positions (position j predicts prompt token j+1), so one forward
serves both sampling and scoring, and the chunks' scores add up on the request until the last
one completes them. Steps without such rows run exactly as before. Proxy rows are scored on
the combined (proxy-tuned) distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deltaserve.engine.outputs import TokenLogprob
from deltaserve.engine.request import Request
from deltaserve.engine.scheduler import ScheduledSeq

# (item, base logits [P-1, V] at its prompt positions) → combined logits (proxy rows)
Combine = Callable[[ScheduledSeq, torch.Tensor], torch.Tensor]


@dataclass
class PromptPlan:
    """Which rows of a step are scored and where their logits sit after the sampled rows."""

    items: list[ScheduledSeq]
    spans: list[tuple[int, int]]
    """(start, length) of each item's prompt logits within the extra logits rows."""
    index: torch.Tensor
    """[M] packed token rows (each item's scored positions) appended to the logits index."""


def plan(items: list[ScheduledSeq], device: torch.device) -> PromptPlan | None:
    """The rows of this step to score (items in packed order, as build_inputs packs them):
    a chunk [s, s + n) of a P-token prompt scores positions s .. min(s + n, P - 1) - 1."""
    chosen, spans, index = [], [], []
    base = 0
    for it in items:
        seq = it.seq
        start, n_prompt = seq.num_computed_tokens, len(seq.prompt_token_ids)
        if seq.scores_prompt and start < n_prompt:
            n = max(0, min(start + it.num_new_tokens, n_prompt - 1) - start)
            chosen.append(it)
            spans.append((len(index), n))
            index.extend(range(base, base + n))
        base += it.num_new_tokens
    if not chosen:
        return None
    return PromptPlan(chosen, spans, torch.tensor(index, dtype=torch.long, device=device))


def score(p: PromptPlan, logits: torch.Tensor,
          combine: Combine | None) -> list[tuple[Request, list[TokenLogprob | None]]]:
    """logits: [M, V] at p.index. Adds each item's chunk scores to its request; returns the
    requests whose prompt is now fully scored, with their per-prompt-token logprobs."""
    results = []
    for it, (start, n) in zip(p.items, p.spans, strict=True):
        req = it.seq.request
        if it.seq.num_computed_tokens == 0:  # first chunk (again, after a preemption)
            req.partial_prompt_logprobs = []
        if n:
            lg = logits[start:start + n]
            if combine is not None:
                lg = combine(it, lg)
            first = it.seq.num_computed_tokens + 1
            targets = req.prompt_token_ids[first:first + n]
            req.partial_prompt_logprobs += _token_logprobs(lg, targets, req.params.prompt_logprobs or 0)
        if it.seq.num_computed_tokens + it.num_new_tokens >= len(req.prompt_token_ids):
            results.append((req, [None, *req.partial_prompt_logprobs]))
            req.partial_prompt_logprobs = []
    return results


def _token_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprob]:
    """logits: [n, V]; targets: the n tokens that followed; k top alternatives per position."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [n, V]
    tgt = torch.tensor(targets, dtype=torch.long, device=logp.device)
    chosen = logp.gather(1, tgt.unsqueeze(1))  # [n, 1]
    rank = (logp > chosen).sum(dim=1) + 1  # [n]
    top_lp, top_ids = logp.topk(k, dim=-1) if k else (None, None)
    chosen_l, rank_l = chosen.squeeze(1).tolist(), rank.tolist()  # one host sync per request
    tops = list(zip(top_ids.tolist(), top_lp.tolist(), strict=True)) if k else None
    return [
        TokenLogprob(t, chosen_l[j], list(zip(*tops[j], strict=True)) if k else [], rank_l[j])
        for j, t in enumerate(targets)
    ]
