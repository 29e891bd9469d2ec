"""ops/lora.py: the grouped multi-LoRA op against the per-row reference."""

from __future__ import annotations

import random

import pytest
import torch

from deltaserve.engine.ops.lora import (
    GROUPS,
    LoRARows,
    LoRAStack,
    LoRATensors,
    lora_grouped,
    lora_reference,
)

CPU = torch.device("cpu")
LAYERS = 2
H, Q, KV, INTER = 32, 32, 16, 48
IN = {"q_proj": H, "k_proj": H, "v_proj": H, "o_proj": Q, "gate_proj": H, "up_proj": H,
      "down_proj": INTER}
OUT = {"q_proj": Q, "k_proj": KV, "v_proj": KV, "o_proj": H, "gate_proj": INTER,
       "up_proj": INTER, "down_proj": H}
MODULES = list(IN)


def _adapter(rng: random.Random, rank: int, modules) -> LoRATensors:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    return {
        (layer, m): (torch.randn(rank, IN[m], generator=g) / IN[m] ** 0.5,
                     torch.randn(OUT[m], rank, generator=g) / rank**0.5)
        for layer, m in modules
    }


def _random_adapters(seed: int, ranks) -> list[LoRATensors]:
    """Adapters of the given ranks, each on a random non-empty subset of (layer, module)."""
    rng = random.Random(seed)
    all_mods = [(layer, m) for layer in range(LAYERS) for m in MODULES]
    return [_adapter(rng, r, rng.sample(all_mods, rng.randint(1, len(all_mods)))) for r in ranks]


def _uneven_rows(seed: int, counts: list[int], base_rows: int) -> list[int]:
    """row_slots with counts[i] rows for adapter i and base_rows rows of -1, shuffled."""
    slots = [i for i, c in enumerate(counts) for _ in range(c)] + [-1] * base_rows
    random.Random(seed).shuffle(slots)
    return slots


def _group_inputs(layer_group: str, rows: int, dtype, seed: int):
    modules = GROUPS[layer_group]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, IN[modules[0]], generator=g).to(dtype)
    y = torch.randn(rows, sum(OUT[m] for m in modules), generator=g).to(dtype)
    return modules, x, y


def _compare_all_groups(adapters, row_slots, dtype, atol, rtol):
    stack = LoRAStack(adapters, OUT, LAYERS, CPU, dtype)
    rows = LoRARows.build(row_slots, len(adapters), CPU, dtype)
    per_row = [adapters[s] if s >= 0 else None for s in row_slots]
    checked = 0
    for layer in range(LAYERS):
        for gi, group in enumerate(GROUPS):
            modules, x, y0 = _group_inputs(group, len(row_slots), dtype, seed=layer * 10 + gi)
            got = y0.clone()
            gw = stack.groups.get((layer, group))
            if gw is not None:
                lora_grouped(x, got, gw, rows)
                checked += 1
            want = y0.float().clone()
            lora_reference(x.float(), want, per_row, layer, modules, OUT)
            torch.testing.assert_close(got.float(), want, atol=atol, rtol=rtol,
                                       msg=f"layer {layer} group {group}")
            base = [t for t, s in enumerate(row_slots) if s < 0]
            assert torch.equal(got[base], y0[base]), "base rows must be untouched"
    assert checked > 0


def test_reference_is_the_lora_formula():
    ad = _random_adapters(0, [4])[0]
    ad[(0, "v_proj")] = (torch.randn(4, H), torch.randn(KV, 4))
    ad.pop((0, "q_proj"), None)
    ad.pop((0, "k_proj"), None)
    x = torch.randn(3, H)
    y = torch.zeros(3, Q + 2 * KV)
    lora_reference(x, y, [ad, None, ad], 0, GROUPS["qkv"], OUT)
    a, b = ad[(0, "v_proj")]
    expect = x @ a.t() @ b.t()
    torch.testing.assert_close(y[[0, 2], Q + KV :], expect[[0, 2]])
    assert not y[1].any() and not y[:, : Q + KV].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_matches_reference_float32(seed):
    rng = random.Random(seed)
    ranks = [1, 64] + [rng.randint(1, 64) for _ in range(4)]
    adapters = _random_adapters(seed, ranks)
    counts = [7, 1, 0, 3, 12, 2]  # uneven, one adapter without rows
    row_slots = _uneven_rows(seed, counts, base_rows=5)
    _compare_all_groups(adapters, row_slots, torch.float32, atol=1e-5, rtol=1e-5)


def test_grouped_matches_reference_bfloat16():
    adapters = _random_adapters(7, [1, 8, 33, 64])
    row_slots = _uneven_rows(7, [5, 9, 1, 4], base_rows=6)
    _compare_all_groups(adapters, row_slots, torch.bfloat16, atol=0.1, rtol=0.05)


def test_partial_module_subsets_leave_other_columns_untouched():
    adapters = [
        {(0, "k_proj"): (torch.randn(3, H), torch.randn(KV, 3))},
        {(0, "q_proj"): (torch.randn(16, H), torch.randn(Q, 16))},
    ]
    stack = LoRAStack(adapters, OUT, LAYERS, CPU, torch.float32)
    assert set(stack.groups) == {(0, "qkv")}, "no weights for groups no adapter targets"
    gw = stack.groups[(0, "qkv")]
    row_slots = [0, 1, -1, 0]
    rows = LoRARows.build(row_slots, 2, CPU, torch.float32)
    _, x, y0 = _group_inputs("qkv", 4, torch.float32, seed=3)
    y = y0.clone()
    lora_grouped(x, y, gw, rows)
    q, k, v = slice(0, Q), slice(Q, Q + KV), slice(Q + KV, Q + 2 * KV)
    assert torch.equal(y[:, v], y0[:, v]), "v_proj is targeted by nobody"
    assert torch.equal(y[[0, 3]][:, q], y0[[0, 3]][:, q]), "adapter 0 has no q_proj"
    assert torch.equal(y[1, k], y0[1, k]), "adapter 1 has no k_proj"
    assert torch.equal(y[2], y0[2])
    a0, b0 = adapters[0][(0, "k_proj")]
    torch.testing.assert_close(y[[0, 3]][:, k], y0[[0, 3]][:, k] + x[[0, 3]] @ a0.t() @ b0.t())


def test_all_base_rows_change_nothing():
    adapters = _random_adapters(4, [8, 2])
    stack = LoRAStack(adapters, OUT, LAYERS, CPU, torch.float32)
    rows = LoRARows.build([-1] * 6, 2, CPU, torch.float32)
    for (layer, group), gw in stack.groups.items():
        _, x, y0 = _group_inputs(group, 6, torch.float32, seed=layer)
        y = y0.clone()
        lora_grouped(x, y, gw, rows)
        assert torch.equal(y, y0)


def test_full_coverage_and_no_base_rows():
    """Every module of every group targeted (the fused fast path) and every row on a LoRA."""
    rng = random.Random(11)
    all_mods = [(layer, m) for layer in range(LAYERS) for m in MODULES]
    adapters = [_adapter(rng, r, all_mods) for r in (3, 17)]
    for base_rows in (0, 4):
        row_slots = _uneven_rows(base_rows, [6, 2], base_rows=base_rows)
        _compare_all_groups(adapters, row_slots, torch.float32, atol=1e-5, rtol=1e-5)


def test_single_adapter_single_row():
    adapters = _random_adapters(12, [64])
    _compare_all_groups(adapters, [0], torch.float32, atol=1e-5, rtol=1e-5)
    _compare_all_groups(adapters, [-1, 0, -1], torch.float32, atol=1e-5, rtol=1e-5)


def test_row_order_does_not_matter():
    adapters = _random_adapters(13, [5, 9, 2])
    row_slots = _uneven_rows(13, [4, 3, 2], base_rows=3)
    perm = torch.randperm(len(row_slots), generator=torch.Generator().manual_seed(0))
    stack = LoRAStack(adapters, OUT, LAYERS, CPU, torch.float32)
    for (layer, group), gw in stack.groups.items():
        _, x, y0 = _group_inputs(group, len(row_slots), torch.float32, seed=layer)
        y = y0.clone()
        lora_grouped(x, y, gw, LoRARows.build(row_slots, 3, CPU, torch.float32))
        yp = y0[perm].clone()
        permuted_slots = [row_slots[i] for i in perm.tolist()]
        lora_grouped(x[perm], yp, gw, LoRARows.build(permuted_slots, 3, CPU, torch.float32))
        torch.testing.assert_close(yp, y[perm], atol=1e-6, rtol=1e-6)


def test_stack_nbytes_and_groups():
    adapters = _random_adapters(5, [2, 40])
    stack = LoRAStack(adapters, OUT, LAYERS, CPU, torch.bfloat16)
    assert stack.num_adapters == 2 and stack.nbytes > 0
    targeted = {(layer, g) for ad in adapters for (layer, m) in ad for g in GROUPS
                if m in GROUPS[g]}
    assert set(stack.groups) == targeted, "a group is stacked iff some adapter targets it"
    fp32 = LoRAStack(adapters, OUT, LAYERS, CPU, torch.float32)
    assert fp32.nbytes == 2 * stack.nbytes


def _full_targets(rng: random.Random, rank: int) -> LoRATensors:
    return _adapter(rng, rank, [(layer, m) for layer in range(LAYERS) for m in MODULES])


def test_extended_stack_equals_a_stack_built_at_once():
    """Appending adapters (with a larger rank) gives the same math as stacking all together."""
    rng = random.Random(5)
    first = [_full_targets(rng, r) for r in (2, 4)]
    later = [_full_targets(rng, r) for r in (8, 1)]
    grown = LoRAStack(first, OUT, LAYERS, CPU, torch.float32).extended(
        LoRAStack(later, OUT, LAYERS, CPU, torch.float32))
    assert grown is not None and grown.num_adapters == 4
    row_slots = _uneven_rows(9, [3, 1, 2, 4], base_rows=2)
    rows = LoRARows.build(row_slots, 4, CPU, torch.float32)
    for layer in range(LAYERS):
        for group in GROUPS:
            modules, x, y = _group_inputs(group, len(row_slots), torch.float32, seed=layer)
            want = y.clone()
            lora_reference(x, want, [(first + later)[s] if s >= 0 else None for s in row_slots],
                           layer, modules, OUT)
            lora_grouped(x, y, grown.groups[(layer, group)], rows)
            torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_extended_refuses_different_layouts():
    rng = random.Random(6)
    only_q = [_adapter(rng, 4, [(0, "q_proj")])]
    full = [_full_targets(rng, 4)]
    a = LoRAStack(only_q, OUT, LAYERS, CPU, torch.float32)
    assert a.extended(LoRAStack(full, OUT, LAYERS, CPU, torch.float32)) is None


@pytest.mark.parametrize("transposed_rows", [0, 16])
def test_both_shrink_forms_match_the_reference(transposed_rows, monkeypatch):
    """Whichever form tune_shrink picks on a machine, the grouped op equals the oracle."""
    from deltaserve.engine.ops import lora as ops

    monkeypatch.setitem(ops._SHRINK_TRANSPOSED_MAX_ROWS, ("cpu", torch.float32), transposed_rows)
    adapters = _random_adapters(7, [4, 8, 16])
    _compare_all_groups(adapters, _uneven_rows(3, [2, 5, 1], 3), torch.float32, 1e-5, 1e-5)
    _compare_all_groups(adapters, [0, 0, 1, 1, 2, 2], torch.float32, 1e-5, 1e-5)


def test_tune_shrink_records_a_threshold_for_the_machine(monkeypatch):
    from deltaserve.engine.ops import lora as ops

    monkeypatch.setattr(ops, "_SHRINK_TRANSPOSED_MAX_ROWS", {})
    rows = ops.tune_shrink(CPU, torch.float32, d_in=64, rank=8)
    assert rows in (0, 1, 2, 4, 8, 16)
    assert ops._SHRINK_TRANSPOSED_MAX_ROWS == {("cpu", torch.float32): rows}
    assert ops.tune_shrink(torch.device("cuda"), torch.float32, d_in=64) == 0


def test_uneven_prefill_runs_one_matmul_per_adapter(monkeypatch):
    """Sorted rows with very uneven counts (prefills of different lengths): the per-adapter
    loop runs instead of padding every adapter to the longest, and equals the oracle."""
    from deltaserve.engine.ops import lora as ops

    calls = []
    real = ops._lora_segment_loop
    monkeypatch.setattr(ops, "_lora_segment_loop", lambda *a: (calls.append(1), real(*a)))
    adapters = _random_adapters(11, [4, 16, 8])
    counts = [40, 120, 33]
    row_slots = [i for i, c in enumerate(counts) for _ in range(c)] + [-1] * 7
    _compare_all_groups(adapters, row_slots, torch.float32, atol=1e-4, rtol=1e-4)
    assert calls, "the segment loop must have run"
