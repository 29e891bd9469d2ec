"""Suite-wide: tests marked `gpu` run only where CUDA is available; without CUDA, Triton
kernels run under Triton's interpreter (CPU tensors)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Before anything imports triton: its own @jit helpers (tl.zeros...) are built for the
    # interpreter or the compiler when triton is imported, our kernels when they are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
