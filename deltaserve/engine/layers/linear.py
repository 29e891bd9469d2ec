"""A (possibly fused) projection whose output gets per-row adapter deltas added.

Fusing q/k/v (and gate/up) into one matmul halves the kernel launches on the hot path; the
adapter math still addresses each HF module (q_proj, k_proj, ...) by its output slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaserve.engine.adapters.batch import AdapterBatch
from deltaserve.engine.quant.linear import QuantLinear


class AdapterLinear(torch.nn.Module):
    """y = x Wᵀ (+ b) for the fused sub-modules `names`, plus adapter deltas for the rows
    whose adapter targets them.

    weight: [sum(out_sizes), in_features]. Sub-module i owns output columns
    [offsets[i], offsets[i] + out_sizes[i]). A quantized base (engine/quant) sets `quant` and
    drops `weight`; the adapters still apply on top, in the serving dtype.
    """

    def __init__(
        self,
        layer_idx: int,
        group: str,
        in_features: int,
        names: list[str],
        out_sizes: list[int],
        bias: bool,
    ):
        super().__init__()
        self.layer_idx = layer_idx
        self.group = group
        self.names = names
        self.in_features = in_features
        self.out_sizes = out_sizes
        self.offsets = [sum(out_sizes[:i]) for i in range(len(out_sizes))]
        total = sum(out_sizes)
        self.quant: QuantLinear | None = None
        self.weight = torch.nn.Parameter(torch.empty(total, in_features), requires_grad=False)
        self.bias = (
            torch.nn.Parameter(torch.zeros(total), requires_grad=False) if bias else None
        )

    def forward(self, x: torch.Tensor, adapters: AdapterBatch | None) -> torch.Tensor:
        if self.quant is None:
            y = F.linear(x, self.weight, self.bias)  # [T, sum(out_sizes)]
        else:
            y = self.quant(x, self.bias)
        if adapters is not None:
            adapters.apply(self.layer_idx, self.group, x, y)
        return y
