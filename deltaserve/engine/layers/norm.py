"""RMSNorm computed in float32, as HF Llama does."""

from __future__ import annotations

import torch

from deltaserve.engine.ops import norm_cpu


class RMSNorm(torch.nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if norm_cpu.supports(x, self.weight):  # one pass instead of eight ops (ops/norm_cpu.py)
            return norm_cpu.rms_norm(x, self.weight, self.eps)
        return self.reference(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch form, and the CPU kernel's oracle."""
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class OffsetRMSNorm(torch.nn.Module):
    """Gemma's RMSNorm: the weight w is stored as an offset, the scale is (1 + w), applied in
    float32 before rounding to the model dtype (Llama rounds first). PyTorch only: the CPU
    kernel rounds where Llama does."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)


def make_norm(cfg, hidden: int) -> torch.nn.Module:
    """The family's norm over `hidden` features (cfg: ModelConfig)."""
    cls = OffsetRMSNorm if cfg.norm_plus_one else RMSNorm
    return cls(hidden, cfg.rms_norm_eps)
