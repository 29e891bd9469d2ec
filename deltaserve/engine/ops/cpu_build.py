"""Build a CPU kernel's C source with the machine's own compiler, once per process.

`-march=native`: CPUs differ (AVX2 only, AVX-512, AVX512-BF16, AMX) and nothing may be assumed;
the source picks its vector paths by the compiler's feature macros. The library links the
OpenMP runtime torch already loaded (same soname), so the kernels share torch's thread team.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

logger = logging.getLogger(__name__)

PRELUDE = r"""
#include <stdint.h>
typedef uint16_t bf16;
static inline float bf2f(bf16 v) { union { uint32_t u; float f; } c; c.u = (uint32_t)v << 16; return c.f; }
static inline bf16 f2bf(float f) {  /* round to nearest even; NaN stays NaN */
    union { uint32_t u; float f; } c; c.f = f;
    if ((c.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((c.u >> 16) | 0x40);
    return (bf16)((c.u + 0x7fffu + ((c.u >> 16) & 1u)) >> 16);
}
static inline float f2f(float v) { return v; }
"""
"""Put before every kernel's source: bf16 <-> float32 (bf2f, f2bf, and f2f for float kernels
written once for both dtypes by macros)."""


def build(name: str, source: str, functions: dict[str, list]) -> ctypes.CDLL | None:
    """Compile PRELUDE + `source`, load it and set each function's argtypes (restype void);
    None where no compiler works (the caller keeps its PyTorch path)."""
    source = PRELUDE + source
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    out_dir = tempfile.mkdtemp(prefix="deltaserve-kernels-")
    src = os.path.join(out_dir, f"{name}_{tag}.c")
    lib = os.path.join(out_dir, f"{name}_{tag}.so")
    with open(src, "w") as f:
        f.write(source)
    cmd = ["cc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", src, "-o", lib]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        dll = ctypes.CDLL(lib)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("CPU kernel %s unavailable (%s); using the PyTorch path", name, exc)
        return None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # a loaded library stays mapped
    for fn, argtypes in functions.items():
        getattr(dll, fn).argtypes = argtypes
        getattr(dll, fn).restype = None
    return dll
