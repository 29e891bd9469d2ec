"""Mixtral's sparse mixture-of-experts feed-forward (`block_sparse_moe`), as transformers'
MixtralSparseMoeBlock computes it: a softmax router (float32) over E experts, the top-k
probabilities renormalised to sum to 1, each expert a SiLU-gated MLP w2(silu(w1 x) * w3 x).

Module names mirror the checkpoint's (block_sparse_moe.gate, block_sparse_moe.experts.E.w1/w2/w3).
Adapters do not reach the experts (engine/adapters/lora.py refuses expert LoRA by name).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaserve.engine.config import ModelConfig


def _linear(d_in: int, d_out: int) -> torch.nn.Linear:
    lin = torch.nn.Linear(d_in, d_out, bias=False)
    lin.weight.requires_grad_(False)
    return lin


class Expert(torch.nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.w1, self.w3, self.w2 = _linear(hidden, inter), _linear(hidden, inter), _linear(inter, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(torch.nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.gate = _linear(cfg.hidden_size, cfg.num_experts)
        self.experts = torch.nn.ModuleList(
            Expert(cfg.hidden_size, cfg.intermediate_size) for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden]."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)  # [T, E]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [T, k]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        # Group the (token, slot) pairs by expert: one sort and one host read of the counts
        # per layer, then each expert runs once over its own tokens.
        flat = chosen.flatten()  # [T * k]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        tokens, w = order // self.top_k, weights.flatten()[order]
        out = torch.zeros_like(x)
        start = 0
        for expert, n in zip(self.experts, counts, strict=True):
            if n:
                rows = tokens[start : start + n]
                y = expert(x.index_select(0, rows)) * w[start : start + n, None]
                out.index_add_(0, rows, y.to(out.dtype))
            start += n
        return out
