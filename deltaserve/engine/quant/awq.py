"""AWQ checkpoints (GEMM version) as AutoAWQ / transformers save them, repacked into the
engine's int4 format.

Per quantized projection (out x in, group size gs, G = in / gs), all packed along out-features,
eight 4-bit values per int32 in AWQ's interleaved order: nibble i (bits [4i, 4i+4)) of column c
holds output column 8c + AWQ_ORDER[i].
- `qweight` int32 [in, out / 8]: q[n, k] at row k.
- `qzeros` int32 [G, out / 8]: zero points z (not offset, unlike GPTQ v1).
- `scales` float16 [G, out].
    W[n, k] = (q[n, k] - z[k // gs, n]) * scales[k // gs, n]
"""

from __future__ import annotations

import torch

from deltaserve.engine.quant.formats import QuantWeight, pack_int4, unpack_int32_cols

SUFFIXES = ("qweight", "qzeros", "scales")
REQUIRED = SUFFIXES
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
# natural column j of a pack of 8 sits in nibble _REVERSE[j] (the inverse permutation)
_REVERSE = [AWQ_ORDER.index(j) for j in range(8)]


def check_config(qc: dict) -> None:
    bits = qc.get("bits", qc.get("w_bit"))
    version = str(qc.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm":
        raise ValueError(
            f"AWQ {bits}-bit version {version!r} is not supported (4-bit GEMM checkpoints only)"
        )
    if not qc.get("zero_point", True):
        raise ValueError("AWQ without zero points (zero_point: false) is not supported")


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] in AWQ order -> int16 [R, 8C] in natural column order."""
    nibbles = unpack_int32_cols(packed, 4).view(packed.shape[0], -1, 8)  # [R, C, nibble]
    return nibbles[:, :, _REVERSE].reshape(packed.shape[0], -1)


def to_engine(t: dict[str, torch.Tensor], qc: dict, dtype: torch.dtype) -> QuantWeight:
    q = unpack_awq(t["qweight"]).t()  # [out, in]
    z = unpack_awq(t["qzeros"]).t().contiguous()  # [out, G]
    gs = qc.get("group_size", qc.get("q_group_size", 128))
    gs = q.shape[1] if gs in (None, -1) else gs
    scales = t["scales"].t().to(dtype).contiguous()  # [out, G]
    return QuantWeight(4, pack_int4(q), scales, z, gs)
