"""ops/triton_sparse_delta.py: the Triton sparse-delta kernel against the PyTorch op and the oracle.

Without a GPU it runs under Triton's interpreter on CPU tensors (conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.ops.lora import GROUPS
from deltaserve.engine.ops.sparse_delta import (
    DeltaRows,
    SparseDeltaStack,
    sparse_delta_grouped,
    sparse_delta_reference,
)
from tests.unit.engine.test_sparse_delta_ops import IN, LAYERS, OUT, _delta, _rows
from tests.unit.engine.triton_helpers import DEVICE, require_runnable_kernels

pytest.importorskip("triton")
from deltaserve.engine.ops import triton_sparse_delta  # noqa: E402  (needs triton)

CASES = [  # (delta counts per row, base rows, shuffled)
    ([1, 1, 1, 1], 6, True),   # decode-like: one row per delta among base rows
    ([3, 3], 0, False),        # contiguous uniform layout
    ([20, 1, 2], 3, True),     # uneven (the torch op loops per delta); two row blocks
    ([0, 4, 2], 2, True),      # a stacked delta without rows this step
]


@pytest.fixture(autouse=True)
def _runnable():
    require_runnable_kernels(triton_sparse_delta._sparse_rows_kernel)


@pytest.mark.parametrize("counts,base_rows,shuffle", CASES)
def test_matches_torch_op_and_reference(counts, base_rows, shuffle, small_tiles):
    deltas = [_delta(200 + i, 0.1) for i in range(len(counts))]
    stack = SparseDeltaStack(deltas, IN, OUT, LAYERS, DEVICE, torch.float32)
    slots = _rows(3, counts, base_rows, shuffle)
    rows = DeltaRows.build(slots, len(deltas), DEVICE, torch.float32)
    base = [t for t, s in enumerate(slots) if s < 0]
    g = torch.Generator().manual_seed(2)
    assert stack.groups
    for (layer, group), gs in stack.groups.items():
        modules = GROUPS[group]
        x = torch.randn(len(slots), IN[modules[0]], generator=g).to(DEVICE)
        y0 = torch.randn(len(slots), sum(OUT[m] for m in modules), generator=g).to(DEVICE)
        got, torch_op, want = y0.clone(), y0.clone(), y0.cpu().clone()
        triton_sparse_delta.sparse_delta_grouped_triton(x, got, gs, rows)
        sparse_delta_grouped(x, torch_op, gs, rows)
        sparse_delta_reference(x.cpu(), want, [deltas[s] if s >= 0 else None for s in slots],
                               layer, modules, IN, OUT)
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got, torch_op, atol=1e-4, rtol=1e-4)
        assert torch.equal(got[base], y0[base]), "base rows must be untouched"


def test_float16_rows():
    deltas = [_delta(5, 0.3), _delta(6, 0.3)]
    stack = SparseDeltaStack(deltas, IN, OUT, LAYERS, DEVICE, torch.float16)
    slots = [1, -1, 0, 1, 0]
    rows = DeltaRows.build(slots, 2, DEVICE, torch.float16)
    (layer, group), gs = next(iter(stack.groups.items()))
    modules = GROUPS[group]
    x = (torch.randn(5, IN[modules[0]]) / 4).half().to(DEVICE)
    y = torch.zeros(5, sum(OUT[m] for m in modules)).half().to(DEVICE)
    want = y.float().cpu()
    triton_sparse_delta.sparse_delta_grouped_triton(x, y, gs, rows)
    sparse_delta_reference(x.float().cpu(), want, [deltas[s] if s >= 0 else None for s in slots],
                           layer, modules, IN, OUT)
    assert want.abs().max() > 0
    torch.testing.assert_close(y.float().cpu(), want, atol=1e-2, rtol=1e-2)
