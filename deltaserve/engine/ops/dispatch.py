"""Which implementation of an adapter op runs: the PyTorch ops or the Triton kernels.

The Triton kernels (ops/triton_lora.py, ops/triton_sparse_delta.py) run only on CUDA tensors
of a dtype they support and only when triton is installed; everything else (CPU above all)
keeps the PyTorch path. triton is imported lazily, on the first CUDA step, so the engine
imports and runs without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch

from deltaserve.engine.ops import lora_cpu
from deltaserve.engine.ops.lora import LoRARows, _GroupWeights, lora_grouped
from deltaserve.engine.ops.sparse_delta import DeltaRows, _SparseGroup, sparse_delta_grouped

Backend = Literal["torch", "triton"]

TRITON_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


@functools.cache
def triton_usable() -> bool:
    """Whether triton imports (asked once, and only once a CUDA step needs the answer)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(device: torch.device, dtype: torch.dtype,
                   triton_ok: Callable[[], bool] = triton_usable) -> Backend:
    """"triton" for CUDA tensors of a supported dtype when triton is usable, else "torch".

    `triton_ok` is called only for CUDA tensors, so CPU steps never import triton.
    """
    if device.type == "cuda" and dtype in TRITON_DTYPES and triton_ok():
        return "triton"
    return "torch"


def lora_apply(x: torch.Tensor, y: torch.Tensor, gw: _GroupWeights, rows: LoRARows) -> None:
    """y += the LoRA deltas of every row (see lora.lora_grouped), by the chosen backend: the
    Triton kernels on CUDA, the compiled CPU kernel for decode-sized CPU steps whose rows are
    sorted by adapter (ops/lora_cpu.py), else the PyTorch ops."""
    if choose_backend(x.device, x.dtype) == "triton":
        from deltaserve.engine.ops.triton_lora import lora_grouped_triton

        lora_grouped_triton(x, y, gw, rows)
    elif rows.segments is not None and lora_cpu.supports(x, rows.max_rows):
        if gw.kernel is None:  # once per stack: the stack's weights never change
            gw.kernel = lora_cpu.KernelWeights.build(
                gw.a, [s.b for s in gw.subs], [s.out_offset for s in gw.subs], gw.rank)
        lora_cpu.lora_segments(x.contiguous(), y, gw.kernel, *rows.segments)
    else:
        lora_grouped(x, y, gw, rows)


def sparse_delta_apply(x: torch.Tensor, y: torch.Tensor, g: _SparseGroup,
                       rows: DeltaRows) -> None:
    """y += the sparse deltas of every row (see sparse_delta.sparse_delta_grouped)."""
    if choose_backend(x.device, x.dtype) == "triton":
        from deltaserve.engine.ops.triton_sparse_delta import sparse_delta_grouped_triton

        sparse_delta_grouped_triton(x, y, g, rows)
    else:
        sparse_delta_grouped(x, y, g, rows)
