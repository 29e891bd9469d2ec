"""The automatic dtype and adapter-pool share, decided with the hardware probes faked."""

from __future__ import annotations

import pytest
import torch

from deltaserve.engine.config import EngineConfig
from deltaserve.engine.hardware import (
    auto_dtype,
    cpu_flags,
    device_memory_bytes,
    keep_freed_memory,
)

CPU = torch.device("cpu")
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (AVX2_ONLY, torch.float32),
        (AVX2_ONLY | {"avx512f", "avx512bw"}, torch.float32),  # AVX-512 without BF16
        (ZEN4, torch.bfloat16),
        (SAPPHIRE_RAPIDS, torch.bfloat16),
        (frozenset(), torch.float32),  # no /proc/cpuinfo: the safe choice
    ],
)
def test_cpu_takes_bf16_only_where_it_is_native(flags, expected):
    dtype, why = auto_dtype(CPU, flags=lambda: flags)
    assert dtype is expected
    assert ("natively" in why) == (expected is torch.bfloat16)


def test_cpu_never_takes_float16_even_for_a_float16_checkpoint():
    for flags in (AVX2_ONLY, ZEN4):
        dtype, _ = auto_dtype(CPU, flags=lambda f=flags: f)
        assert dtype is not torch.float16


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_takes_bf16_where_supported(bf16, expected):
    dtype, _ = auto_dtype(torch.device("cuda"), flags=lambda: frozenset(), cuda_bf16=lambda: bf16)
    assert dtype is expected


def test_explicit_dtype_wins_and_bad_names_are_refused():
    assert EngineConfig(model="m", dtype="bfloat16").torch_dtype(CPU) == (
        torch.bfloat16, "set explicitly")
    with pytest.raises(ValueError, match="dtype must be"):
        EngineConfig(model="m", dtype="int8").torch_dtype(CPU)


def test_probes_read_this_machine():
    flags = cpu_flags()
    assert isinstance(flags, frozenset)
    dtype, _ = EngineConfig(model="m").torch_dtype(CPU)
    assert dtype in (torch.float32, torch.bfloat16)
    assert device_memory_bytes(CPU) > 1 << 30


def test_malloc_keeps_freed_memory_on_glibc():
    import platform

    ok = keep_freed_memory()
    assert ok == (platform.libc_ver()[0] == "glibc")
