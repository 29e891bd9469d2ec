"""The Triton adapter kernels on a CUDA device, at Llama-3-8B projection sizes, against the
PyTorch ops and the per-row fp32 oracles; and the engine really running them (skipped without
a GPU; tests/unit/engine/test_triton_*.py also run compiled there)."""

from __future__ import annotations

import random

import pytest
import torch

from deltaserve.engine.ops import dispatch
from deltaserve.engine.ops.lora import GROUPS, LoRARows, LoRAStack, lora_grouped, lora_reference
from deltaserve.engine.ops.sparse_delta import (
    DeltaRows,
    SparseDeltaStack,
    sparse_delta_grouped,
    sparse_delta_reference,
)
from tests.unit.engine.triton_helpers import count_kernel_calls, mixed_batch_runner

pytestmark = pytest.mark.gpu
triton = pytest.importorskip("triton")

CUDA = torch.device("cuda")
H, Q, KV, INTER = 4096, 4096, 1024, 14336  # Llama-3-8B
IN = {"q_proj": H, "k_proj": H, "v_proj": H, "o_proj": Q, "gate_proj": H, "up_proj": H,
      "down_proj": INTER}
OUT = {"q_proj": Q, "k_proj": KV, "v_proj": KV, "o_proj": H, "gate_proj": INTER,
       "up_proj": INTER, "down_proj": H}


def _loras(ranks: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    return [{(0, m): (torch.randn(r, IN[m], generator=g) / IN[m] ** 0.5,
                      torch.randn(OUT[m], r, generator=g) / r**0.5) for m in IN} for r in ranks]


def _decode_and_prefill_rows(n: int, decode: int, prefill: int, base: int) -> list[int]:
    """`decode` rows spread over n adapters, one adapter's `prefill` chunk, `base` base rows."""
    rng = random.Random(0)
    slots = [i % n for i in range(decode)] + [0] * prefill + [-1] * base
    rng.shuffle(slots)
    return slots


def test_selection_picks_triton_for_cuda_tensors():
    assert dispatch.choose_backend(CUDA, torch.bfloat16) == "triton"
    assert dispatch.choose_backend(torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.parametrize("prefill", [0, 300])
def test_lora_kernels_32_adapters_8b_shapes_bf16(prefill):
    adapters = _loras([8, 16, 32, 64] * 8, seed=1)
    slots = _decode_and_prefill_rows(32, 64, prefill, base=16)
    stack = LoRAStack(adapters, OUT, 1, CUDA, torch.bfloat16)
    rows = LoRARows.build(slots, 32, CUDA, torch.bfloat16)
    per_row = [adapters[s] if s >= 0 else None for s in slots]
    g = torch.Generator(device=CUDA).manual_seed(0)
    for group, modules in GROUPS.items():
        x = torch.randn(len(slots), IN[modules[0]], device=CUDA, generator=g)
        y0 = torch.randn(len(slots), sum(OUT[m] for m in modules), device=CUDA, generator=g)
        got, torch_op = y0.bfloat16(), y0.bfloat16()
        dispatch.lora_apply(x.bfloat16(), got, stack.groups[(0, group)], rows)
        lora_grouped(x.bfloat16(), torch_op, stack.groups[(0, group)], rows)
        want = y0.clone()
        lora_reference(x.bfloat16().float(), want, [None if a is None else
                       {k: (w[0].to(CUDA).bfloat16().float(), w[1].to(CUDA).bfloat16().float())
                        for k, w in a.items()} for a in per_row], 0, modules, OUT)
        torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05, msg=group)
        torch.testing.assert_close(got, torch_op, atol=0.1, rtol=0.05, msg=group)


def _sparse_deltas(n: int, density: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = {}
        for m in IN:
            size = IN[m] * OUT[m]
            idx = torch.randperm(size, generator=g)[: int(density * size)]
            d[(0, m)] = (idx, torch.randn(idx.numel(), generator=g) * 0.02)
        out.append(d)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sparse_delta_kernel_8b_shapes(dtype):
    deltas = _sparse_deltas(4, 0.01, seed=2)
    slots = _decode_and_prefill_rows(4, 16, 40, base=8)
    stack = SparseDeltaStack(deltas, IN, OUT, 1, CUDA, dtype)
    rows = DeltaRows.build(slots, 4, CUDA, dtype)
    per_row = [deltas[s] if s >= 0 else None for s in slots]
    for group, modules in GROUPS.items():
        x = torch.randn(len(slots), IN[modules[0]], device=CUDA).to(dtype)
        y0 = torch.randn(len(slots), sum(OUT[m] for m in modules), device=CUDA).to(dtype)
        got = y0.clone()
        dispatch.sparse_delta_apply(x, got, stack.groups[(0, group)], rows)
        want = y0.float().clone()  # .float() of a float32 tensor is itself
        sparse_delta_reference(x.float(), want, per_row, 0, modules, IN, OUT)
        tol = dict(atol=5e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-3,
                                                                              rtol=1e-3)
        torch.testing.assert_close(got.float(), want, msg=group, **tol)
        if dtype == torch.float32:  # the torch CSR path on CUDA, same storage
            torch_op = y0.clone()
            sparse_delta_grouped(x, torch_op, stack.groups[(0, group)], rows)
            torch.testing.assert_close(got, torch_op, atol=1e-3, rtol=1e-3, msg=group)


def test_engine_steps_run_the_triton_kernels(tmp_path, monkeypatch):
    """On CUDA the engine picks the kernels by itself, and its greedy tokens of a mixed
    LoRA / sparse-delta / base batch equal the engine forced onto the torch ops."""
    run = mixed_batch_runner(tmp_path, CUDA)
    calls = count_kernel_calls(monkeypatch)
    with_triton = run()
    assert {"lora_grouped_triton", "sparse_delta_grouped_triton"} <= set(calls)
    monkeypatch.setattr(dispatch, "choose_backend", lambda device, dtype: "torch")
    assert run() == with_triton
