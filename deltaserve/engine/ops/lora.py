"""Batched multi-LoRA math over index tensors.

Rows (packed tokens) that use the same adapter are grouped: `token_index[n, m]` lists, for each
of the step's n active adapters, the rows that use it (padded to m). Each adapter's A/B weights
are read once per step by one batched matmul, whatever the number of rows that use it — reading
them once per row (a per-row gather) would multiply the memory traffic by the rows per adapter.

`lora_reference` is the per-row plain-PyTorch oracle the tests compare against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

# Which HF module names each fused projection of a decoder layer carries, in output order.
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
MODULE_GROUP = {name: g for g, names in GROUPS.items() for name in names}
# Checkpoints that store a group fused (Phi-3) name it so; adapters on it (PEFT's names for
# Phi-3) are split on load into these parts, in output order.
FUSED_MODULES: dict[str, tuple[str, ...]] = {"qkv_proj": GROUPS["qkv"],
                                             "gate_up_proj": GROUPS["gate_up"]}
TARGET_MODULES = frozenset(MODULE_GROUP) | frozenset(FUSED_MODULES)

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
    a: torch.Tensor  # [n, S * r, d_in]: A of every targeted module, stacked along the rank
    rank: int
    subs: list[_SubWeights]
    covers_all: bool  # every module of the fused group is targeted by some adapter
    kernel: object | None = field(default=None, compare=False, repr=False)
    """The same weights prepared for the CPU kernel (ops/dispatch.py fills it on first use)."""


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

    def extended(self, other: LoRAStack) -> LoRAStack | None:
        """This stack with `other`'s adapters appended (one copy per group, no per-adapter
        work for the adapters already stacked), or None when their layouts differ (a module
        targeted by only one side), in which case the caller rebuilds."""
        if self.groups.keys() != other.groups.keys():
            return None
        merged: dict[tuple[int, str], _GroupWeights] = {}
        for key, mine in self.groups.items():
            theirs = other.groups[key]
            if [s.module for s in mine.subs] != [s.module for s in theirs.subs]:
                return None
            merged[key] = _concat_groups(mine, theirs)
        out = LoRAStack.__new__(LoRAStack)
        out.num_adapters = self.num_adapters + other.num_adapters
        out.groups = merged
        return out

    @property
    def nbytes(self) -> int:
        total = 0
        for gw in self.groups.values():
            total += gw.a.nbytes + sum(s.b.nbytes for s in gw.subs)
        return total


def _concat_groups(a: _GroupWeights, b: _GroupWeights) -> _GroupWeights:
    """Stack two groups' adapters, zero-padding both to the larger rank."""
    rank = max(a.rank, b.rank)
    n_sub = len(a.subs)

    def pad_a(g: _GroupWeights) -> torch.Tensor:  # [n, S*r, d_in] -> [n, S*rank, d_in]
        if g.rank == rank:
            return g.a
        n, _, d_in = g.a.shape
        out = g.a.new_zeros(n, n_sub, rank, d_in)
        out[:, :, : g.rank] = g.a.view(n, n_sub, g.rank, d_in)
        return out.view(n, n_sub * rank, d_in)

    def pad_b(t: torch.Tensor, r: int) -> torch.Tensor:  # [n, r, d_out] -> [n, rank, d_out]
        return t if r == rank else torch.nn.functional.pad(t, (0, 0, 0, rank - r))

    subs = [
        _SubWeights(sa.module, i * rank, sa.out_offset,
                    torch.cat([pad_b(sa.b, a.rank), pad_b(sb.b, b.rank)]))
        for i, (sa, sb) in enumerate(zip(a.subs, b.subs, strict=True))
    ]
    return _GroupWeights(torch.cat([pad_a(a), pad_a(b)]), rank, subs, a.covers_all)


def _stack_group(adapters, layer, modules, out_sizes, device, dtype) -> _GroupWeights | None:
    present = [m for m in modules if any((layer, m) in a for a in adapters)]
    if not present:
        return None
    rank = max(a[(layer, m)][0].shape[0] for a in adapters for m in present if (layer, m) in a)
    n = len(adapters)
    d_in = next(a[(layer, m)][0].shape[1] for a in adapters for m in present if (layer, m) in a)
    a = torch.zeros(n, len(present) * rank, d_in, device=device, dtype=dtype)
    subs = []
    for s, module in enumerate(present):
        b = torch.zeros(n, rank, out_sizes[module], device=device, dtype=dtype)
        for i, ad in enumerate(adapters):
            if (layer, module) not in ad:
                continue
            a_w, b_w = ad[(layer, module)]  # [r, d_in], [d_out, r]
            r = a_w.shape[0]
            a[i, s * rank : s * rank + r, :] = a_w
            b[i, :r, :] = b_w.t()
        offset = sum(out_sizes[m] for m in modules[: modules.index(module)])
        subs.append(_SubWeights(module, s * rank, offset, b))
    return _GroupWeights(a, rank, subs, covers_all=len(present) == len(modules))


_EMPTY = torch.empty(0, dtype=torch.long)


@dataclass
class LoRARows:
    """Which rows use which stacked adapter in this step, as gather indices.

    Rows of adapter i sit at [i, 0:k_i] of an [n, m] padded layout. Expanding back is a
    gather too (`inv_index`), not a scatter-add: gathers are parallel and cheap on every device.
    """

    flat_index: torch.Tensor
    """[n * m] long: packed row for each padded position (padding → row 0)."""
    pad_mask: torch.Tensor
    """[n, m, 1] in the compute dtype: 1 for real rows, 0 for padding."""
    inv_index: torch.Tensor
    """[T] long: padded position of each packed row; rows without a LoRA point at a padding
    position (always zero after pad_mask)."""
    n: int
    m: int
    contiguous: bool = False
    """Adapter i's rows are exactly packed rows [i*m, (i+1)*m) (the runner sorts rows by
    adapter, base rows last): then no gather or scatter is needed at all."""
    segments: tuple[torch.Tensor, torch.Tensor] | None = None
    """(start [n], length [n]) int64 on the CPU when every adapter's rows are one run of
    packed rows (the runner sorts rows by adapter), whatever their counts: the CPU kernel
    (ops/lora_cpu.py) then walks them in place, without padding or gathers."""
    max_rows: int = 0
    """Most rows any one adapter has in this step."""
    real_rows: int = 0
    """Rows that use one of the n adapters in this step."""

    @classmethod
    def build(
        cls, row_slots: list[int], n: int, device: torch.device, dtype: torch.dtype
    ) -> LoRARows:
        """row_slots[t] = index into the stack of row t's adapter, or -1 (base / other kind)."""
        buckets: list[list[int]] = [[] for _ in range(n)]
        for t, s in enumerate(row_slots):
            if s >= 0:
                buckets[s].append(t)
        max_rows = max((len(b) for b in buckets), default=0)
        segments = None
        if all(b == list(range(b[0], b[0] + len(b))) for b in buckets if b):
            segments = (torch.tensor([b[0] if b else 0 for b in buckets], dtype=torch.long),
                        torch.tensor([len(b) for b in buckets], dtype=torch.long))
        sizes = {len(b) for b in buckets}
        if len(sizes) == 1 and 0 not in sizes and all(b == list(range(i * len(b), (i + 1) * len(b)))
                                   for i, b in enumerate(buckets)):
            m = sizes.pop()
            return cls(_EMPTY, _EMPTY, _EMPTY, n, m, contiguous=True, segments=segments,
                       max_rows=max_rows, real_rows=n * m)
        has_other = len(row_slots) > sum(len(b) for b in buckets)
        # One spare padding row when some rows use no LoRA: they all read it (adapter 0's
        # last row, which is padding since m exceeds every adapter's row count).
        m = max((len(b) for b in buckets), default=0) + (1 if has_other else 0)
        m = max(m, 1)
        flat = [0] * (n * m)
        mask = torch.zeros(n * m, 1)
        inv = [m - 1] * len(row_slots)
        for i, b in enumerate(buckets):
            for j, t in enumerate(b):
                flat[i * m + j] = t
                inv[t] = i * m + j
            mask[i * m : i * m + len(b)] = 1.0
        return cls(
            torch.tensor(flat, dtype=torch.long, device=device),
            mask.view(n, m, 1).to(device=device, dtype=dtype),
            torch.tensor(inv, dtype=torch.long, device=device),
            n,
            m,
            segments=segments,
            max_rows=max_rows,
            real_rows=sum(len(b) for b in buckets),
        )


def lora_grouped(x: torch.Tensor, y: torch.Tensor, gw: _GroupWeights, rows: LoRARows) -> None:
    """y[t, module cols] += B_a (A_a x[t]) for every row t of each adapter a. In place.

    x: [T, d_in]; y: [T, d_out_total] (the fused projection's output, subs in order).
    """
    n, m = rows.n, rows.m
    if rows.contiguous:
        _lora_contiguous(x[: n * m].view(n, m, -1), y[: n * m].view(n, m, -1), gw)
        return
    if rows.segments is not None and rows.real_rows >= _SEGMENT_LOOP_MIN_ROWS * n \
            and n * m > _SEGMENT_LOOP_WASTE * rows.real_rows:
        _lora_segment_loop(x, y, gw, rows.segments)
        return
    xg = x.index_select(0, rows.flat_index).view(n, m, -1)  # [n, m, d_in]
    h = _shrink(xg, gw.a).mul_(rows.pad_mask)  # [n, m, S*r]; padding rows zeroed
    outs = [torch.bmm(h[:, :, s.col : s.col + gw.rank], s.b) for s in gw.subs]  # [n, m, d_s]
    if gw.covers_all:  # one gather + add for the whole fused output
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        y.add_(out.view(n * m, -1).index_select(0, rows.inv_index))
        return
    for sub, out in zip(gw.subs, outs, strict=True):
        d = out.shape[-1]
        y[:, sub.out_offset : sub.out_offset + d].add_(
            out.view(n * m, d).index_select(0, rows.inv_index)
        )


def _shrink(xg: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """xg: [n, m, d_in], a: [n, R, d_in] -> [n, m, R] (contiguous).

    With few rows per adapter (decode) some CPUs' matmul kernels handle the transposed product
    A · xgᵀ (a tall-skinny [R, d_in] x [d_in, m]) much better than [m, d_in] x [d_in, R], others
    the reverse (measured ~2x either way between an AMX Xeon and a Zen 4): `tune_shrink` picks
    per machine at start-up.
    """
    if xg.shape[1] <= _SHRINK_TRANSPOSED_MAX_ROWS.get((xg.device.type, xg.dtype), 0):
        return torch.bmm(a, xg.transpose(1, 2)).transpose(1, 2).contiguous()
    return torch.bmm(xg, a.transpose(1, 2))


_SHRINK_TRANSPOSED_MAX_ROWS: dict[tuple[str, torch.dtype], int] = {}
"""(device type, dtype) -> most rows per adapter for which the transposed shrink is faster."""


def tune_shrink(device: torch.device, dtype: torch.dtype, d_in: int, rank: int = 48) -> int:
    """Time both shrink forms at 1..16 rows per adapter on this machine; remember (and return)
    up to how many rows the transposed one wins. CPU only (CUDA keeps the direct form)."""
    if device.type != "cpu":
        return 0
    n, best = 16, 0
    for m in (1, 2, 4, 8, 16):
        xg = torch.randn(n, m, d_in, dtype=dtype)
        a = torch.randn(n, rank, d_in, dtype=dtype)
        direct = _min_time(lambda: torch.bmm(xg, a.transpose(1, 2)))  # noqa: B023
        transposed = _min_time(
            lambda: torch.bmm(a, xg.transpose(1, 2)).transpose(1, 2).contiguous())  # noqa: B023
        if transposed >= direct:
            break
        best = m
    _SHRINK_TRANSPOSED_MAX_ROWS[(device.type, dtype)] = best
    return best


def _min_time(fn, reps: int = 5, rounds: int = 3) -> float:
    """Best of `rounds` averages: robust to another process taking the CPU for a moment."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append(time.perf_counter() - t0)
    return min(times)


_SEGMENT_LOOP_MIN_ROWS = 32
"""Rows per adapter (on average) from which one matmul per adapter beats padding (prefills)."""
_SEGMENT_LOOP_WASTE = 1.5
"""Padding overhead (padded rows / real rows) above which the per-adapter loop is used."""


def _lora_segment_loop(x: torch.Tensor, y: torch.Tensor, gw: _GroupWeights,
                       segments: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Uneven prefills: each adapter's run of rows through its own matmuls, no padding.

    x: [T, d_in]; y: [T, d_out_total]; adapter i's rows are [start_i, start_i + len_i).
    """
    for i, (start, length) in enumerate(zip(*(t.tolist() for t in segments), strict=True)):
        if length == 0:
            continue
        rows = slice(start, start + length)
        h = x[rows] @ gw.a[i].t()  # [len, S*r]
        for sub in gw.subs:
            d = sub.b.shape[-1]
            y[rows, sub.out_offset : sub.out_offset + d].addmm_(
                h[:, sub.col : sub.col + gw.rank], sub.b[i])


def _lora_contiguous(xg: torch.Tensor, yg: torch.Tensor, gw: _GroupWeights) -> None:
    """xg: [n, m, d_in] and yg: [n, m, d_out_total] are views of the packed rows."""
    h = _shrink(xg, gw.a)  # [n, m, S*r]
    for s in gw.subs:
        d = s.b.shape[-1]
        yg[:, :, s.out_offset : s.out_offset + d].baddbmm_(h[:, :, s.col : s.col + gw.rank], s.b)


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
