"""Batched multi-LoRA math over index tensors.

Rows (packed tokens) that use the same adapter are grouped: `token_index[n, m]` lists, for each
of the step's n active adapters, the rows that use it (padded to m). Each adapter's A/B weights
are read once per step by one batched matmul, whatever the number of rows that use it — reading
them once per row (a per-row gather) would multiply the memory traffic by the rows per adapter.

`lora_reference` is the per-row plain-PyTorch oracle the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Which HF module names each fused projection of a decoder layer carries, in output order.
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
MODULE_GROUP = {name: g for g, names in GROUPS.items() for name in names}
TARGET_MODULES = frozenset(MODULE_GROUP)

# One adapter's weights: (layer, module) -> (A [r, d_in], B [d_out, r] with the scaling folded in).
LoRATensors = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _SubWeights:
    module: str
    col: int  # first column of this module's rank block in the shrink output
    out_offset: int  # first output column of the module inside the fused projection
    b: torch.Tensor  # [n, r, d_out] (zero rows for adapters that do not target it)


@dataclass
class _GroupWeights:
    a_t: torch.Tensor  # [n, d_in, S * r]: A of every targeted module, side by side
    rank: int
    subs: list[_SubWeights]


class LoRAStack:
    """The weights of an ordered set of n adapters stacked per (layer, fused group).

    Built once when the step's adapter set changes and reused while it stays the same. Ranks
    are zero-padded to the largest in the set, which leaves the result unchanged.
    """

    def __init__(
        self,
        adapters: list[LoRATensors],
        out_sizes: dict[str, int],
        num_layers: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.num_adapters = len(adapters)
        self.groups: dict[tuple[int, str], _GroupWeights] = {}
        for layer in range(num_layers):
            for group, modules in GROUPS.items():
                gw = _stack_group(adapters, layer, modules, out_sizes, device, dtype)
                if gw is not None:
                    self.groups[(layer, group)] = gw

    @property
    def nbytes(self) -> int:
        total = 0
        for gw in self.groups.values():
            total += gw.a_t.nbytes + sum(s.b.nbytes for s in gw.subs)
        return total


def _stack_group(adapters, layer, modules, out_sizes, device, dtype) -> _GroupWeights | None:
    present = [m for m in modules if any((layer, m) in a for a in adapters)]
    if not present:
        return None
    rank = max(a[(layer, m)][0].shape[0] for a in adapters for m in present if (layer, m) in a)
    n = len(adapters)
    d_in = next(a[(layer, m)][0].shape[1] for a in adapters for m in present if (layer, m) in a)
    a_t = torch.zeros(n, d_in, len(present) * rank, device=device, dtype=dtype)
    subs = []
    for s, module in enumerate(present):
        b = torch.zeros(n, rank, out_sizes[module], device=device, dtype=dtype)
        for i, ad in enumerate(adapters):
            if (layer, module) not in ad:
                continue
            a_w, b_w = ad[(layer, module)]  # [r, d_in], [d_out, r]
            r = a_w.shape[0]
            a_t[i, :, s * rank : s * rank + r] = a_w.t()
            b[i, :r, :] = b_w.t()
        offset = sum(out_sizes[m] for m in modules[: modules.index(module)])
        subs.append(_SubWeights(module, s * rank, offset, b))
    return _GroupWeights(a_t, rank, subs)


@dataclass
class LoRARows:
    """Which rows use which stacked adapter in this step."""

    token_index: torch.Tensor
    """[n, m] long: rows of adapter i (padding → row 0, zeroed by pad_mask)."""
    pad_mask: torch.Tensor
    """[n, m, 1] in the compute dtype: 1 for real rows, 0 for padding."""

    @classmethod
    def build(
        cls, row_slots: list[int], n: int, device: torch.device, dtype: torch.dtype
    ) -> LoRARows:
        """row_slots[t] = index into the stack of row t's adapter, or -1 (base / other kind)."""
        buckets: list[list[int]] = [[] for _ in range(n)]
        for t, s in enumerate(row_slots):
            if s >= 0:
                buckets[s].append(t)
        m = max((len(b) for b in buckets), default=0) or 1
        idx = torch.zeros(n, m, dtype=torch.long)
        mask = torch.zeros(n, m, 1)
        for i, b in enumerate(buckets):
            if b:
                idx[i, : len(b)] = torch.tensor(b)
                mask[i, : len(b)] = 1.0
        return cls(idx.to(device), mask.to(device=device, dtype=dtype))


def lora_grouped(
    x: torch.Tensor, y: torch.Tensor, gw: _GroupWeights, rows: LoRARows
) -> None:
    """y[t, module cols] += B_a (A_a x[t]) for every row t of each adapter a. In place.

    x: [T, d_in]; y: [T, d_out_total] (the fused projection's output).
    """
    n, m = rows.token_index.shape
    xg = x[rows.token_index]  # [n, m, d_in]
    h = torch.bmm(xg, gw.a_t) * rows.pad_mask  # [n, m, S*r]; padding rows zeroed
    flat = rows.token_index.view(-1)
    for sub in gw.subs:
        out = torch.bmm(h[:, :, sub.col : sub.col + gw.rank], sub.b)  # [n, m, d_out]
        d_out = out.shape[-1]
        y[:, sub.out_offset : sub.out_offset + d_out].index_add_(0, flat, out.view(n * m, d_out))


def lora_reference(
    x: torch.Tensor,
    y: torch.Tensor,
    row_adapters: list[LoRATensors | None],
    layer: int,
    modules: tuple[str, ...],
    out_sizes: dict[str, int],
) -> None:
    """The oracle: one row at a time, y[t] += B (A x[t]) for each module the row's adapter has."""
    for t, ad in enumerate(row_adapters):
        if ad is None:
            continue
        offset = 0
        for module in modules:
            size = out_sizes[module]
            if (layer, module) in ad:
                a_w, b_w = ad[(layer, module)]
                y[t, offset : offset + size] += b_w @ (a_w @ x[t])
            offset += size
