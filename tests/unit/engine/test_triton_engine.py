"""The engine with its adapter ops on the Triton kernels (interpreted on CPU here; compiled
on CUDA in tests/gpu) serves a mixed LoRA / sparse-delta / base batch token for token like
the engine on the PyTorch ops."""

from __future__ import annotations

import pytest

from deltaserve.engine.ops import dispatch
from tests.unit.engine.triton_helpers import DEVICE, count_kernel_calls, mixed_batch_runner

pytest.importorskip("triton")


def test_engine_on_triton_kernels_equals_engine_on_torch_ops(tmp_path, monkeypatch):
    run = mixed_batch_runner(tmp_path, DEVICE)
    on_torch = run() if DEVICE.type == "cpu" else None
    calls = count_kernel_calls(monkeypatch)
    monkeypatch.setattr(dispatch, "choose_backend", lambda device, dtype: "triton")
    on_triton = run()
    assert {"lora_grouped_triton", "sparse_delta_grouped_triton"} <= set(calls)
    if on_torch is not None:
        assert on_triton == on_torch
