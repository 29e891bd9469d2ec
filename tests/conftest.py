"""Suite-wide: tests marked `gpu` run only where CUDA is available; without CUDA, Triton
kernels run under Triton's interpreter (CPU tensors); tests/vllm only on request.

tests/vllm needs vLLM, which lives in its own venv (`make test-vllm`): a plain `pytest` (what
`make test` runs) does not collect it; naming it (`pytest tests/vllm`) does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Before anything imports triton: its own @jit helpers (tl.zeros...) are built for the
    # interpreter or the compiler when triton is imported, our kernels when they are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

VLLM_TESTS = Path(__file__).parent / "vllm"


def _named(config: pytest.Config, path: Path) -> bool:
    """Whether a command-line argument points into `path`."""
    for arg in config.args:
        target = Path(arg.split("::")[0]).resolve()
        if target == path or path in target.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == VLLM_TESTS and not _named(config, VLLM_TESTS):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
