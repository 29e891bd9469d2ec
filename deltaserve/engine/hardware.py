"""What the machine computes fast, decided once at start-up: the automatic dtype and the default
share of memory for the device adapter pool.

CPUs differ between machines (AVX2 only, AVX-512-BF16, AMX): on a CPU without native bf16
instructions a bf16 matmul is emulated and runs ~7x slower than float32, so `auto` takes bf16
on CPU only where the CPU has it natively, never float16.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags meaning the CPU computes bf16 dot products in hardware."""

ADAPTER_POOL_MEMORY_SHARE = 0.10
"""Default share of the device's memory (RAM on CPU, GPU memory on CUDA) for the device
adapter pool, when neither its byte budget nor max_loras is given."""

PROXY_MEMORY_SHARE = 0.05
"""Default share of RAM (CPU) for proxy-tuning small models (weights + their KV caches)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str]) -> bool:
    return any(f in flags for f in NATIVE_BF16_CPU_FLAGS)


def auto_dtype(
    device: torch.device,
    flags: Callable[[], frozenset[str]] = cpu_flags,
    cuda_bf16: Callable[[], bool] = lambda: torch.cuda.is_bf16_supported(),
) -> tuple[torch.dtype, str]:
    """The dtype `--dtype auto` serves in on `device`, and why (for the start-up log).

    The probes are parameters so that the decision is unit-tested with them faked.
    """
    if device.type == "cuda":
        if cuda_bf16():
            return torch.bfloat16, "CUDA device supports bfloat16"
        return torch.float16, "CUDA device without bfloat16"
    found = sorted(set(NATIVE_BF16_CPU_FLAGS) & flags())
    if found:
        return torch.bfloat16, f"CPU computes bfloat16 natively ({', '.join(found)})"
    return torch.float32, "CPU has no native bfloat16 (no avx512_bf16/amx_bf16): float32"


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the device: GPU memory on CUDA, physical RAM on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB from its heap and to keep freed memory.

    By default glibc returns large freed blocks to the OS at once (mmap/munmap), so every step's
    multi-megabyte temporaries (gathered K/V, activations) page-fault afresh: measured ~2.5x on
    a decode attention step, about what preloading tcmalloc gives (which vLLM recommends on CPU).
    Returns False where the C library has no mallopt (not glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
