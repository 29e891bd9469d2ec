"""What the benchmark reports about the machine, and the dtype the baselines run in.

The dtype decision is the engine's own (`deltaserve.engine.hardware.auto_dtype`): on CPU
bfloat16 only where the CPU computes it natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo),
else float32; on CUDA bfloat16. HF PEFT and the matmul bound use it too, so every row of the
table runs in the CPU's native dtype, not in an emulated one.
"""

from __future__ import annotations

from collections.abc import Callable

REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The /proc/cpuinfo flags that decide how fast float32 / bf16 matmuls run, as reported."""


def _cpu_flags() -> frozenset[str]:
    from deltaserve.engine.hardware import cpu_flags

    return cpu_flags()


def native_dtype(device: str = "cpu", flags: Callable[[], frozenset[str]] = _cpu_flags):
    """(torch dtype, why) the CPU or GPU computes natively — what `--dtype auto` serves in."""
    import torch

    from deltaserve.engine.hardware import auto_dtype

    return auto_dtype(torch.device(device), flags=flags)


def reported_flags(flags: Callable[[], frozenset[str]] = _cpu_flags) -> dict[str, bool]:
    """{flag: present} for REPORTED_FLAGS."""
    have = flags()
    return {f: f in have for f in REPORTED_FLAGS}


def dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")
