"""GPTQ checkpoints as AutoGPTQ / optimum / GPTQModel save them, repacked into the engine's format.

Per quantized projection (out x in, group size gs, G = ceil(in / gs), p = 32 / bits values per
int32, bits 4 or 8):
- `qweight` int32 [in / p, out]: packed along in-features; bits [bits*i, bits*(i+1)) of
  qweight[r, n] hold q[n, r*p + i].
- `qzeros` int32 [G, out / p]: packed along out-features the same way. Checkpoint format
  "gptq" (v1, the default) stores z - 1; "gptq_v2" stores z. Symmetric checkpoints store the
  midpoint (2^(bits-1)) like any other zero point.
- `scales` float16 [G, out]; `g_idx` int32 [in]: group of every input column (act-order /
  desc_act permutes it; otherwise it is k // gs).
    W[n, k] = scales[g_idx[k], n] * (q[n, k] - z[g_idx[k], n])
"""

from __future__ import annotations

import torch

from deltaserve.engine.quant.formats import (
    QuantWeight,
    pack_int4,
    unpack_int32_cols,
    unpack_int32_rows,
)

SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
REQUIRED = ("qweight", "qzeros", "scales")


def check_config(qc: dict) -> None:
    if qc.get("bits") not in (4, 8):
        raise ValueError(f"GPTQ with {qc.get('bits')} bits is not supported (4 or 8)")
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2") or qc.get("is_marlin_format"):
        raise ValueError(f"GPTQ checkpoint format {fmt!r} is not supported (gptq, gptq_v2)")


def to_engine(t: dict[str, torch.Tensor], qc: dict, dtype: torch.dtype) -> QuantWeight:
    """One projection's GPTQ tensors -> QuantWeight (q, z, s as int16/int16/dtype)."""
    bits = qc["bits"]
    q = unpack_int32_rows(t["qweight"], bits).t()  # [out, in]
    z = unpack_int32_cols(t["qzeros"], bits).t()  # [out, G] (G may be padded to p)
    out, in_features = q.shape
    if qc.get("checkpoint_format", "gptq") == "gptq":
        z = z + 1
    gs = qc.get("group_size", -1)
    gs = in_features if gs in (None, -1) else gs
    scales = t["scales"].t().to(dtype).contiguous()  # [out, G]
    z = z[:out, : scales.shape[1]].contiguous()
    g_idx = t.get("g_idx")
    natural = torch.arange(in_features, dtype=torch.int32) // gs
    if g_idx is not None and torch.equal(g_idx.to(torch.int32), natural):
        g_idx = None  # plain contiguous groups: the faster broadcast dequantise applies
    elif g_idx is not None:
        g_idx = g_idx.to(torch.int32)
    if bits == 8:  # stored shifted by -128 (int8); q - z is unchanged
        return QuantWeight(8, (q - 128).to(torch.int8), scales, z - 128, gs, g_idx)
    return QuantWeight(4, pack_int4(q), scales, z, gs, g_idx)
