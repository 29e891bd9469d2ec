"""The quantized base product y = x Wᵀ (+ b) of a (possibly fused) projection.

Weight-only: the reference dequantises every part into the serving dtype each step and runs one
matmul; adapters are added afterwards by AdapterLinear, in the serving dtype, as for any base.
Where it pays, int8 per-channel weights use PyTorch's CPU weight-only int8 matmul instead,
checked against the reference in tests/unit/engine/test_quant_linear.py. It pays only for a few
bfloat16 rows: measured on a Zen 4 CPU (AVX-512-BF16) for W's [4096, 768] projection it is 2.6x
faster than the bf16 GEMM at 1 row, even at 8 rows and 0.4x at 64 (the kernel reads the weight
once but computes far below the GEMM's rate, so it wins only while the product is memory-bound);
for float32 activations it is 5-30x slower than dequantise + GEMM at every size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaserve.engine.quant.formats import QuantWeight

_HAS_INT8_MM = hasattr(torch, "_weight_int8pack_mm")
INT8_MM_MAX_ROWS = 8
"""Token rows up to which the int8 kernel beats dequantise + bf16 GEMM (see above)."""


class QuantLinear(torch.nn.Module):
    """Quantized weight of a fused projection: `parts` stacked along out-features, in order
    (one part when every shard shares a layout)."""

    def __init__(self, method: str, parts: list[QuantWeight]):
        super().__init__()
        self.method = method
        self.parts = torch.nn.ModuleList(parts)
        self.out_features = sum(p.out_features for p in parts)
        self.in_features = parts[0].in_features

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """[out, in] in `dtype`: the parts dequantised and concatenated."""
        ws = [p.dequantize(dtype) for p in self.parts]
        return ws[0] if len(ws) == 1 else torch.cat(ws)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [T, in] -> [T, out] in x's dtype."""
        if self._int8_fast(x):
            p = self.parts[0]
            y = torch._weight_int8pack_mm(x.contiguous(), p.qweight, p.scales.view(-1))
            return y if bias is None else y + bias
        return self.forward_reference(x, bias)

    def forward_reference(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype), bias)

    def _int8_fast(self, x: torch.Tensor) -> bool:
        if (not _HAS_INT8_MM or len(self.parts) != 1 or x.device.type != "cpu"
                or x.dtype != torch.bfloat16 or x.shape[0] > INT8_MM_MAX_ROWS):
            return False
        p = self.parts[0]
        return (p.bits == 8 and p.zeros is None and p.g_idx is None
                and p.group_size == p.in_features and p.scales.dtype == x.dtype)
