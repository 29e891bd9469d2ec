"""Independent writers of the GPTQ and AWQ tensor layouts, for the quantization oracles.

Written from the formats' documented packing loops (AutoGPTQ's QuantLinear.pack, AutoAWQ's
WQLinear_GEMM.from_linear), not from the engine's readers: integer weights in, packed int32 out.
"""

from __future__ import annotations

import torch

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _to_int32(acc: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 -> the int32 with the same bits."""
    acc = acc & 0xFFFFFFFF
    return torch.where(acc >= 1 << 31, acc - (1 << 32), acc).to(torch.int32)


def pack_rows(vals: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] ints -> int32 [R / p, C]: word r holds rows r*p + i at bits*i (GPTQ qweight)."""
    p = 32 // bits
    acc = torch.zeros(vals.shape[0] // p, vals.shape[1], dtype=torch.int64)
    for i in range(p):
        acc |= (vals[i::p].to(torch.int64) & ((1 << bits) - 1)) << (bits * i)
    return _to_int32(acc)


def pack_cols(vals: torch.Tensor, bits: int, order: list[int] | None = None) -> torch.Tensor:
    """[R, C] ints -> int32 [R, C / p]: nibble i of word c holds column c*p + order[i]."""
    p = 32 // bits
    order = order or list(range(p))
    acc = torch.zeros(vals.shape[0], vals.shape[1] // p, dtype=torch.int64)
    for i in range(p):
        acc |= (vals[:, order[i]::p].to(torch.int64) & ((1 << bits) - 1)) << (bits * i)
    return _to_int32(acc)


def gptq_tensors(q, z, scales, g_idx, bits: int, v1: bool = True) -> dict[str, torch.Tensor]:
    """q [out, in], z [G, out] integer zero points, scales [G, out], g_idx [in] -> GPTQ tensors."""
    return {
        "qweight": pack_rows(q.t().contiguous(), bits),
        "qzeros": pack_cols(z - 1 if v1 else z, bits),
        "scales": scales.to(torch.float16),
        "g_idx": g_idx.to(torch.int32),
    }


def awq_tensors(q, z, scales) -> dict[str, torch.Tensor]:
    """q [out, in], z [G, out], scales [G, out] -> AWQ GEMM tensors."""
    return {
        "qweight": pack_cols(q.t().contiguous(), 4, AWQ_ORDER),
        "qzeros": pack_cols(z, 4, AWQ_ORDER),
        "scales": scales.to(torch.float16),
    }


def plain_dequant(q, z, scales, g_idx) -> torch.Tensor:
    """W[n, k] = (q[n, k] - z[g(k), n]) * s[g(k), n], element by element over groups."""
    w = torch.empty(q.shape, dtype=torch.float32)
    s = scales.to(torch.float16).float()  # as the checkpoint stores it
    for k in range(q.shape[1]):
        g = int(g_idx[k])
        w[:, k] = (q[:, k].float() - z[g].float()) * s[g]
    return w


def quantize_known(w: torch.Tensor, bits: int, gs: int, g_idx: torch.Tensor, sym: bool):
    """Min/max quantisation of a real weight [out, in] into (q, z [G, out], scales [G, out])
    with the column groups given by g_idx, as a GPTQ/AWQ export would hold it."""
    maxq = (1 << bits) - 1
    groups = int(g_idx.max()) + 1
    z = torch.empty(groups, w.shape[0], dtype=torch.int64)
    s = torch.empty(groups, w.shape[0])
    for g in range(groups):
        cols = w[:, g_idx == g]
        lo, hi = cols.amin(1).clamp(max=0), cols.amax(1).clamp(min=0)
        if sym:
            hi = torch.maximum(hi, -lo)
            lo = -hi
        s[g] = ((hi - lo) / maxq).clamp_min(1e-8).half().float()
        z[g] = (maxq + 1) // 2 if sym else torch.round(-lo / s[g]).clamp(0, maxq).long()
    q = (torch.round(w / s[g_idx].t()) + z[g_idx].t()).clamp(0, maxq).long()
    return q, z, s
