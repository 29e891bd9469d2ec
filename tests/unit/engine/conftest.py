"""Fixtures of the Triton kernel tests (tests/conftest.py selects Triton's interpreter on
machines without CUDA; with a GPU the kernel tests run compiled, on CUDA tensors)."""

from __future__ import annotations

import pytest


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 so the tiny test shapes span several row/column/reduction blocks."""
    from deltaserve.engine.ops import triton_lora, triton_sparse_delta

    for mod, name in [(triton_lora, "BLOCK_K_SHRINK"), (triton_lora, "BLOCK_N"),
                      (triton_sparse_delta, "BLOCK_NNZ"), (triton_sparse_delta, "BLOCK_O")]:
        monkeypatch.setattr(mod, name, 16)
