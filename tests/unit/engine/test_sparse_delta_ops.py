"""ops/sparse_delta.py: the batched block-diagonal CSR op against the per-row reference."""

from __future__ import annotations

import random

import pytest
import torch

from deltaserve.engine.ops.lora import GROUPS
from deltaserve.engine.ops.sparse_delta import (
    DeltaRows,
    DeltaTensors,
    SparseDeltaStack,
    delta_dense,
    sparse_delta_grouped,
    sparse_delta_reference,
)

CPU = torch.device("cpu")
LAYERS = 2
H, Q, KV, INTER = 32, 32, 16, 48
IN = {"q_proj": H, "k_proj": H, "v_proj": H, "o_proj": Q, "gate_proj": H, "up_proj": H,
      "down_proj": INTER}
OUT = {"q_proj": Q, "k_proj": KV, "v_proj": KV, "o_proj": H, "gate_proj": INTER,
       "up_proj": INTER, "down_proj": H}


def _delta(seed: int, density: float) -> DeltaTensors:
    """A random delta on a random non-empty subset of (layer, module)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    mods = [(layer, m) for layer in range(LAYERS) for m in IN]
    out: DeltaTensors = {}
    for layer, m in rng.sample(mods, rng.randint(1, len(mods))):
        size = IN[m] * OUT[m]
        idx = torch.randperm(size, generator=g)[: max(1, int(density * size))].sort().values
        out[(layer, m)] = (idx, torch.randn(idx.numel(), generator=g))
    return out


def _rows(seed: int, counts: list[int], base_rows: int, shuffle: bool) -> list[int]:
    slots = [i for i, c in enumerate(counts) for _ in range(c)] + [-1] * base_rows
    if shuffle:
        random.Random(seed).shuffle(slots)
    return slots


CASES = [  # (delta counts per row, base rows, shuffled)
    ([1, 1, 1, 1, 1, 1, 1, 1], 24, True),   # decode: a quarter of the rows over 8 deltas
    ([3, 3], 0, False),                     # contiguous uniform layout
    ([40, 1, 2], 5, True),                  # uneven (prefill next to decodes): per-delta path
    ([5], 7, True),
    ([0, 4, 2], 3, True),                   # a stacked delta without rows this step
]


@pytest.mark.parametrize("counts,base_rows,shuffle", CASES)
@pytest.mark.parametrize("density", [0.1, 0.5])
def test_batched_matches_reference(counts, base_rows, shuffle, density) -> None:
    deltas = [_delta(100 + i, density) for i in range(len(counts))]
    stack = SparseDeltaStack(deltas, IN, OUT, LAYERS, CPU, torch.float32)
    slots = _rows(7, counts, base_rows, shuffle)
    rows = DeltaRows.build(slots, len(deltas), CPU, torch.float32)
    if counts == [40, 1, 2]:
        assert rows.per_delta is not None
    g = torch.Generator().manual_seed(1)
    for layer in range(LAYERS):
        for group, modules in GROUPS.items():
            x = torch.randn(len(slots), IN[modules[0]], generator=g)
            y = torch.randn(len(slots), sum(OUT[m] for m in modules), generator=g)
            want = y.clone()
            sparse_delta_reference(x, want, [deltas[s] if s >= 0 else None for s in slots],
                                   layer, modules, IN, OUT)
            gs = stack.groups.get((layer, group))
            if gs is not None:
                sparse_delta_grouped(x, y, gs, rows)
            torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-4)


def test_bf16_compute_runs_in_float32_on_cpu() -> None:
    deltas = [_delta(3, 0.2), _delta(4, 0.2)]
    stack = SparseDeltaStack(deltas, IN, OUT, LAYERS, CPU, torch.bfloat16)
    assert stack.dtype == torch.float32
    slots = [0, -1, 1, 0]
    rows = DeltaRows.build(slots, 2, CPU, torch.bfloat16)
    (layer, group), gs = next(iter(stack.groups.items()))
    modules = GROUPS[group]
    x = torch.randn(4, IN[modules[0]]).bfloat16()
    y = torch.zeros(4, sum(OUT[m] for m in modules)).bfloat16()
    want = y.float().clone()
    sparse_delta_reference(x.float(), want, [deltas[s] if s >= 0 else None for s in slots],
                           layer, modules, IN, OUT)
    sparse_delta_grouped(x, y, gs, rows)
    torch.testing.assert_close(y.float(), want, atol=0.1, rtol=0.02)
    assert y[1].abs().sum() == 0  # the base row got nothing


def test_stack_matches_the_dense_deltas() -> None:
    """Block i of the stacked CSR is delta i densified, modules at their fused offsets."""
    deltas = [_delta(300 + i, 0.2) for i in range(3)]
    stack = SparseDeltaStack(deltas, IN, OUT, LAYERS, CPU, torch.float32)
    for (layer, group), g in stack.groups.items():
        dense = g.s.to_dense()
        for i, d in enumerate(deltas):
            block = dense[i * g.d_out:(i + 1) * g.d_out, i * g.d_in:(i + 1) * g.d_in]
            want, offset = torch.zeros_like(block), 0
            for m in GROUPS[group]:
                if (layer, m) in d:
                    want[offset:offset + OUT[m]] = delta_dense(*d[(layer, m)], OUT[m], IN[m])
                offset += OUT[m]
            torch.testing.assert_close(block, want)
        off_diagonal = dense.clone()
        for i in range(3):
            off_diagonal[i * g.d_out:(i + 1) * g.d_out, i * g.d_in:(i + 1) * g.d_in] = 0
        assert off_diagonal.count_nonzero() == 0
