"""Triton kernels run under Triton's interpreter (CPU tensors) where no CUDA device exists.

Set before anything imports a kernel module: `triton.jit` picks interpreter or compiler when a
kernel is defined. With a GPU the kernel tests run compiled, on CUDA tensors.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 so the tiny test shapes span several row/column/reduction blocks."""
    from deltaserve.engine.ops import triton_lora, triton_sparse_delta

    for mod, name in [(triton_lora, "BLOCK_K_SHRINK"), (triton_lora, "BLOCK_N"),
                      (triton_sparse_delta, "BLOCK_NNZ"), (triton_sparse_delta, "BLOCK_O")]:
        monkeypatch.setattr(mod, name, 16)
