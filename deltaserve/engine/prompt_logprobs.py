"""Prompt logprobs: the model's distribution at every prompt position, for scoring prompts.

A row is scored when its request asks (`params.prompt_logprobs`), has no scores yet, and this
step computes its whole prompt from position 0 (its first prefill; one sample per request is
enough, the n samples share the prompt). The forward's `logits_index` is widened with that
row's packed positions 0..P-2 (position j predicts prompt token j+1), so one forward serves
both sampling and scoring; steps without such rows run exactly as before. Proxy rows are
scored on the combined (proxy-tuned) distribution.
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
    """[M] packed token rows (all items' positions 0..P-2) appended to the logits index."""


def plan(items: list[ScheduledSeq], device: torch.device) -> PromptPlan | None:
    """The rows of this step to score (items in packed order, as build_inputs packs them)."""
    chosen, spans, index = [], [], []
    seen: set[int] = set()
    base = 0
    for it in items:
        seq = it.seq
        req = seq.request
        if (seq.params.prompt_logprobs is not None and req.prompt_logprobs is None
                and seq.num_computed_tokens == 0 and id(req) not in seen):
            seen.add(id(req))
            n = len(req.prompt_token_ids) - 1
            chosen.append(it)
            spans.append((len(index), n))
            index.extend(range(base, base + n))
        base += it.num_new_tokens
    if not chosen:
        return None
    return PromptPlan(chosen, spans, torch.tensor(index, dtype=torch.long, device=device))


def score(p: PromptPlan, logits: torch.Tensor,
          combine: Combine | None) -> list[tuple[Request, list[TokenLogprob | None]]]:
    """logits: [M, V] at p.index; returns each scored request's per-prompt-token logprobs."""
    results = []
    for it, (start, n) in zip(p.items, p.spans, strict=True):
        req = it.seq.request
        if n == 0:
            results.append((req, [None]))
            continue
        lg = logits[start:start + n]
        if combine is not None:
            lg = combine(it, lg)
        results.append((req, [None, *_token_logprobs(lg, req.prompt_token_ids[1:],
                                                     req.params.prompt_logprobs or 0)]))
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
