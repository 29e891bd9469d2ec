"""ops/lora_cpu.py: the compiled CPU kernel for decode-sized steps (chosen by ops/dispatch.py)
against the per-row oracle and the PyTorch path."""

from __future__ import annotations

import random

import pytest
import torch

from deltaserve.engine.ops import lora_cpu
from deltaserve.engine.ops.dispatch import lora_apply
from deltaserve.engine.ops.lora import GROUPS, LoRARows, LoRAStack, lora_grouped, lora_reference

CPU = torch.device("cpu")
# Widths that exercise the kernel's vector blocks and their tails: d_in 96 and 200 are not
# multiples of 32 (the bf16 dot's block), outputs 72/136/200 not multiples of 64.
H, Q, KV, INTER = 96, 136, 72, 200
IN = {"q_proj": H, "k_proj": H, "v_proj": H, "o_proj": Q, "gate_proj": H, "up_proj": H,
      "down_proj": INTER}
OUT = {"q_proj": Q, "k_proj": KV, "v_proj": KV, "o_proj": H, "gate_proj": INTER,
       "up_proj": INTER, "down_proj": H}


def _adapters(seed: int, ranks: list[int]):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in ranks:
        mods = rng.sample(list(IN), rng.randint(1, len(IN)))
        out.append({(0, m): (torch.randn(r, IN[m], generator=g) / IN[m] ** 0.5,
                             torch.randn(OUT[m], r, generator=g) / r ** 0.5) for m in mods})
    return out


def _check(adapters, counts, base_rows, dtype, atol, rtol, spy):
    # Rows sorted by adapter (as the model runner lays them out), base rows last.
    row_slots = [i for i, c in enumerate(counts) for _ in range(c)] + [-1] * base_rows
    stack = LoRAStack(adapters, OUT, 1, CPU, dtype)
    rows = LoRARows.build(row_slots, len(adapters), CPU, dtype)
    assert rows.segments is not None and rows.max_rows == max(counts)
    per_row = [adapters[s] if s >= 0 else None for s in row_slots]
    g = torch.Generator().manual_seed(len(row_slots))
    for group, modules in GROUPS.items():
        gw = stack.groups.get((0, group))
        if gw is None:
            continue
        x = torch.randn(len(row_slots), IN[modules[0]], generator=g).to(dtype)
        y0 = torch.randn(len(row_slots), sum(OUT[m] for m in modules), generator=g).to(dtype)
        got = y0.clone()
        calls = len(spy)
        lora_apply(x, got, gw, rows)
        assert len(spy) == calls + 1, "the CPU kernel must have run"
        want = y0.float().clone()
        lora_reference(x.float(), want, per_row, 0, modules, OUT)
        torch.testing.assert_close(got.float(), want, atol=atol, rtol=rtol, msg=group)
        assert torch.equal(got[len(row_slots) - base_rows:], y0[len(row_slots) - base_rows:])


@pytest.fixture
def spy(monkeypatch):
    assert lora_cpu.available(), "a C compiler (cc) is needed to build the CPU LoRA kernel"
    calls = []
    real = lora_cpu.lora_segments

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(lora_cpu, "lora_segments", counted)
    return calls


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_reference_float32(seed, spy):
    adapters = _adapters(seed, [1, 16, 7, 64, 3])
    _check(adapters, [2, 1, 5, 16, 0], base_rows=3, dtype=torch.float32, atol=1e-4, rtol=1e-4,
           spy=spy)


@pytest.mark.parametrize("seed", [2, 3])
def test_kernel_matches_reference_bfloat16(seed, spy):
    adapters = _adapters(seed, [4, 16, 33, 8])
    _check(adapters, [2, 2, 3, 9], base_rows=2, dtype=torch.bfloat16, atol=0.1, rtol=0.05,
           spy=spy)


def test_kernel_equals_the_pytorch_path():
    """The same step through the kernel and through bmm: equal to float32 rounding."""
    adapters = _adapters(5, [8, 16, 4])
    stack = LoRAStack(adapters, OUT, 1, CPU, torch.float32)
    rows = LoRARows.build([0, 0, 1, 2, 2, 2, -1], 3, CPU, torch.float32)
    for (_, group), gw in stack.groups.items():
        x = torch.randn(7, IN[GROUPS[group][0]])
        y0 = torch.randn(7, sum(OUT[m] for m in GROUPS[group]))
        fast, slow = y0.clone(), y0.clone()
        lora_apply(x, fast, gw, rows)
        lora_grouped(x, slow, gw, rows)  # the PyTorch path
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_prefill_sized_and_unsorted_steps_keep_the_pytorch_path():
    long_rows = LoRARows.build([0] * (lora_cpu.MAX_ROWS_PER_ADAPTER + 1), 1, CPU, torch.float32)
    assert not lora_cpu.supports(torch.zeros(1, 4), long_rows.max_rows)
    assert LoRARows.build([0, 1, 0], 2, CPU, torch.float32).segments is None
    assert not lora_cpu.supports(torch.zeros(1, 4, dtype=torch.float16), 1)
