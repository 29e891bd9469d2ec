"""The engine's own packed weight format and its plain-PyTorch dequantise reference.

One `QuantWeight` holds a [out, in] projection weight (or several shards stacked along out):

- bits 8: `qweight` int8 [out, in]. Load-time int8 is symmetric per output channel (`zeros` None,
  one group spanning the in-features); 8-bit GPTQ keeps its groups and zero points, stored
  shifted by -128 on both so the difference q - z is unchanged.
- bits 4: `qweight` uint8 [out, in/2], two unsigned 4-bit values per byte: column 2j in the low
  nibble, column 2j+1 in the high nibble. `zeros` int16 [out, G] (int16 rather than a nibble:
  GPTQ's v1 zero points can reach 16).

`scales` [out, G] are in the serving dtype. Input column k belongs to group `g_idx[k]` when
`g_idx` (int32 [in], GPTQ act-order) is set, else to group k // group_size.

    W[n, k] = (q[n, k] - z[n, g(k)]) * s[n, g(k)]        (z = 0 when zeros is None)
"""

from __future__ import annotations

import torch


class QuantWeight(torch.nn.Module):
    """Packed weight of one (or several stacked) projections; tensors are buffers so the
    model's buffer bytes measure its real size."""

    def __init__(
        self,
        bits: int,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor | None,
        group_size: int,
        g_idx: torch.Tensor | None = None,
    ):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"only 4- and 8-bit weights are supported, got {bits}")
        self.bits = bits
        self.group_size = group_size
        self.out_features = qweight.shape[0]
        self.in_features = qweight.shape[1] * (2 if bits == 4 else 1)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("g_idx", g_idx)

    def values(self) -> torch.Tensor:
        """The integer weight q: int16 [out, in]."""
        if self.bits == 8:
            return self.qweight.to(torch.int16)
        return unpack_int4(self.qweight)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """Reference dequantisation: [out, in] in `dtype`."""
        q = self.values()
        if self.g_idx is None and self.in_features % self.group_size == 0:
            # contiguous groups: broadcast [out, G, 1] over [out, G, group_size]
            out, groups = self.out_features, self.in_features // self.group_size
            q = q.view(out, groups, self.group_size)
            if self.zeros is not None:
                q = q - self.zeros.unsqueeze(-1)
            return (q.to(dtype) * self.scales.to(dtype).unsqueeze(-1)).view(out, -1)
        g = self.group_index().long()  # [in]
        if self.zeros is not None:
            q = q - self.zeros[:, g]
        return q.to(dtype) * self.scales.to(dtype)[:, g]

    def group_index(self) -> torch.Tensor:
        """Group of every input column: [in]."""
        if self.g_idx is not None:
            return self.g_idx
        return torch.arange(self.in_features, device=self.qweight.device) // self.group_size

    def layout(self) -> tuple:
        """Two weights with equal layouts stack along out-features into one."""
        g = None if self.g_idx is None else tuple(self.g_idx.tolist())
        return (self.bits, self.group_size, self.in_features, self.zeros is None, g)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] integers in 0..15 (in even) -> uint8 [out, in/2], low nibble = even column."""
    if q.shape[1] % 2:
        raise ValueError(f"int4 packing needs an even number of in-features, got {q.shape[1]}")
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in/2] -> int16 [out, in] in 0..15."""
    low = (packed & 0x0F).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    return torch.stack([low, high], dim=-1).view(packed.shape[0], -1)


def stack(parts: list[QuantWeight]) -> list[QuantWeight]:
    """Stack consecutive shards of equal layout along out-features (q/k/v, gate/up); shards
    that differ (e.g. GPTQ act-order shards, each with its own g_idx) stay separate, in order."""
    runs: list[list[QuantWeight]] = []
    for p in parts:
        if runs and runs[-1][0].layout() == p.layout():
            runs[-1].append(p)
        else:
            runs.append([p])
    out = []
    for run in runs:
        if len(run) == 1:
            out.append(run[0])
            continue
        first = run[0]
        zeros = None if first.zeros is None else torch.cat([p.zeros for p in run])
        out.append(QuantWeight(
            first.bits, torch.cat([p.qweight for p in run]), torch.cat([p.scales for p in run]),
            zeros, first.group_size, first.g_idx,
        ))
    return out


def unpack_int32_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C] holding 32/bits values per int32 along rows -> int16 [R * 32/bits, C]:
    output row r * 32/bits + i is bits [bits*i, bits*(i+1)) of packed row r (GPTQ's qweight)."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)  # [per]
    vals = (packed.unsqueeze(1) >> shifts.view(1, per, 1)) & ((1 << bits) - 1)  # [R, per, C]
    return vals.reshape(-1, packed.shape[1]).to(torch.int16)


def unpack_int32_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C] holding 32/bits values per int32 along columns -> int16 [R, C * 32/bits]:
    output column c * 32/bits + i is bits [bits*i, bits*(i+1)) of packed column c."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)  # [per]
    vals = (packed.unsqueeze(2) >> shifts.view(1, 1, per)) & ((1 << bits) - 1)  # [R, C, per]
    return vals.reshape(packed.shape[0], -1).to(torch.int16)
