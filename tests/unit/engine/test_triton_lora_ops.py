"""ops/triton_lora.py: the Triton grouped LoRA kernels against the PyTorch op and the oracle.

Without a GPU they run under Triton's interpreter on CPU tensors (conftest.py); float32 and
float16 (the interpreter mishandles bfloat16: tests/gpu covers it on a device).
"""

from __future__ import annotations

import random

import pytest
import torch

from deltaserve.engine.ops.lora import GROUPS, LoRARows, LoRAStack, lora_grouped, lora_reference
from tests.unit.engine.test_lora_ops import (
    LAYERS,
    OUT,
    _adapter,
    _group_inputs,
    _random_adapters,
    _uneven_rows,
)
from tests.unit.engine.triton_helpers import DEVICE, require_runnable_kernels

pytest.importorskip("triton")
from deltaserve.engine.ops import triton_lora  # noqa: E402  (needs triton)


@pytest.fixture(autouse=True)
def _runnable():
    require_runnable_kernels(triton_lora._shrink_kernel)


def _check(adapters, row_slots, dtype, atol, rtol):
    """Every stacked (layer, group): Triton == torch op, and == the per-row fp32 oracle."""
    stack = LoRAStack(adapters, OUT, LAYERS, DEVICE, dtype)
    rows = LoRARows.build(row_slots, len(adapters), DEVICE, dtype)
    per_row = [adapters[s] if s >= 0 else None for s in row_slots]
    base = [t for t, s in enumerate(row_slots) if s < 0]
    assert stack.groups
    for (layer, group), gw in stack.groups.items():
        modules, x, y0 = _group_inputs(group, len(row_slots), dtype, seed=layer * 7)
        x, y0 = x.to(DEVICE), y0.to(DEVICE)
        got, torch_op = y0.clone(), y0.clone()
        triton_lora.lora_grouped_triton(x, got, gw, rows)
        lora_grouped(x, torch_op, gw, rows)
        want = y0.float().cpu()
        lora_reference(x.float().cpu(), want, per_row, layer, modules, OUT)
        where = f"layer {layer} group {group}"
        torch.testing.assert_close(got.float().cpu(), want, atol=atol, rtol=rtol, msg=where)
        torch.testing.assert_close(got, torch_op, atol=atol, rtol=rtol, msg=where)
        assert torch.equal(got[base], y0[base]), "base rows must be untouched"


@pytest.mark.parametrize("seed", [0, 1])
def test_heterogeneous_ranks_uneven_rows_float32(seed, small_tiles):
    # ranks 1..40 zero-padded to 40 in one stack; 20 rows of one adapter span two row blocks
    adapters = _random_adapters(seed, [1, 40, 8, 17])
    row_slots = _uneven_rows(seed, [3, 20, 0, 2], base_rows=4)
    _check(adapters, row_slots, torch.float32, atol=1e-4, rtol=1e-4)


def test_float16(small_tiles):
    adapters = _random_adapters(3, [4, 16, 33])
    row_slots = _uneven_rows(3, [2, 5, 1], base_rows=3)
    _check(adapters, row_slots, torch.float16, atol=2e-2, rtol=2e-2)


def test_contiguous_layout_and_default_tiles():
    """Rows sorted by adapter, no base rows: the kernels index packed rows directly."""
    adapters = _random_adapters(5, [8, 2, 30])
    row_slots = [0, 0, 1, 1, 2, 2]
    assert LoRARows.build(row_slots, 3, DEVICE, torch.float32).contiguous
    _check(adapters, row_slots, torch.float32, atol=1e-4, rtol=1e-4)


def test_all_base_rows_change_nothing():
    adapters = _random_adapters(6, [8, 2])
    _check(adapters, [-1] * 5, torch.float32, atol=0, rtol=0)


def test_partial_module_subsets_leave_other_columns_untouched(small_tiles):
    h, q, kv = 32, 32, 16
    adapters = [{(0, "k_proj"): (torch.randn(3, h), torch.randn(kv, 3))},
                {(0, "q_proj"): (torch.randn(16, h), torch.randn(q, 16))}]
    stack = LoRAStack(adapters, OUT, LAYERS, DEVICE, torch.float32)
    gw = stack.groups[(0, "qkv")]
    _, x, y0 = _group_inputs("qkv", 4, torch.float32, seed=3)
    x, y0 = x.to(DEVICE), y0.to(DEVICE)
    y = y0.clone()
    triton_lora.lora_grouped_triton(x, y, gw, LoRARows.build([0, 1, -1, 0], 2, DEVICE,
                                                             torch.float32))
    v = slice(q + kv, q + 2 * kv)
    assert torch.equal(y[:, v], y0[:, v]), "v_proj is targeted by nobody"
    assert torch.equal(y[[0, 3], :q], y0[[0, 3], :q]), "adapter 0 has no q_proj"
    assert torch.equal(y[1, q : q + kv], y0[1, q : q + kv]), "adapter 1 has no k_proj"
    assert not torch.equal(y[1, :q], y0[1, :q]), "adapter 1's q_proj applied"


def test_effective_ranks_see_through_zero_padding():
    rng = random.Random(9)
    mods = [(0, "q_proj"), (0, "v_proj")]
    adapters = [_adapter(rng, 3, mods), _adapter(rng, 12, mods[:1])]
    gw = LoRAStack(adapters, OUT, LAYERS, DEVICE, torch.float32).groups[(0, "qkv")]
    assert [s.module for s in gw.subs] == ["q_proj", "v_proj"] and gw.rank == 12
    ranks = triton_lora.effective_ranks(gw)
    assert ranks.tolist() == [[3, 3], [12, 0]]
    assert triton_lora.effective_ranks(gw) is ranks, "computed once per stacked group"


def test_ranks_cache_entry_leaves_with_the_weights():
    gw = LoRAStack(_random_adapters(8, [4]), OUT, LAYERS, DEVICE, torch.float32)
    group = next(iter(gw.groups.values()))
    triton_lora.effective_ranks(group)
    key = id(group)
    assert key in triton_lora._RANKS
    del gw, group
    assert key not in triton_lora._RANKS


def test_groups_cover_every_fused_projection():
    """The checks above run over every fused group kind at least once."""
    adapters = _random_adapters(0, [1, 40, 8, 17])
    stacked = {g for (_, g) in LoRAStack(adapters, OUT, LAYERS, DEVICE, torch.float32).groups}
    assert stacked == set(GROUPS)
