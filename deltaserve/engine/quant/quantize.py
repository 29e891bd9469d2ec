"""Load-time weight-only quantisation of a full-precision projection weight [out, in]."""

from __future__ import annotations

import torch

from deltaserve.engine.quant.formats import QuantWeight, pack_int4

INT4_GROUP = 128


def quantize_int8(w: torch.Tensor, dtype: torch.dtype) -> QuantWeight:
    """Symmetric per-output-channel int8: q = round(w / s), s = max|w[n]| / 127."""
    w = w.float()
    s = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    s = s.to(dtype).float()  # quantise against the scale as stored, so dequantise is exact
    q = torch.round(w / s).clamp_(-127, 127).to(torch.int8)  # [out, in]
    return QuantWeight(8, q, s.to(dtype), None, w.shape[1])


def int4_group_size(in_features: int) -> int:
    """128, or the in-features when smaller; it must divide the in-features."""
    group = min(INT4_GROUP, in_features)
    if in_features % group:
        raise ValueError(
            f"int4 needs in-features divisible by {group} (groups of {group}), got {in_features}"
        )
    return group


def quantize_int4(w: torch.Tensor, dtype: torch.dtype) -> QuantWeight:
    """Asymmetric group-wise int4 over contiguous groups of input columns:
    s = (max - min) / 15, z = round(-min / s), q = clamp(round(w / s) + z, 0, 15)."""
    out, in_features = w.shape
    group = int4_group_size(in_features)
    wg = w.float().view(out, in_features // group, group)  # [out, G, group]
    lo = wg.amin(dim=-1).clamp(max=0)  # the range always holds 0, so zero points fit 0..15
    hi = wg.amax(dim=-1).clamp(min=0)
    s = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny).to(dtype).float()  # [out, G]
    z = torch.round(-lo / s).clamp_(0, 15)
    q = (torch.round(wg / s.unsqueeze(-1)) + z.unsqueeze(-1)).clamp_(0, 15)
    return QuantWeight(
        4, pack_int4(q.view(out, in_features)), s.to(dtype), z.to(torch.int16), group
    )
