"""Compiles every Triton kernel for an H100/H200-class GPU (sm_90) without a GPU.

Run as `python -m tests.unit.engine.triton_compile_check` (TRITON_INTERPRET must be unset: the
kernels must be defined for the compiler). Triton's wheel carries its LLVM and ptxas, so the
whole pipeline (TTIR, TTGIR, LLVM IR, PTX, cubin) runs on a CPU-only machine: this catches what
the interpreter accepts but the compiler rejects. Prints one line per compiled variant.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from deltaserve.engine.ops import triton_lora, triton_sparse_delta

TARGET = GPUTarget("cuda", 90, 32)
INDEX_PTRS = {"flat_index_ptr": "*i64", "crow_ptr": "*i64", "col_ptr": "*i64",
              "ranks_ptr": "*i32", "h_ptr": "*fp32"}


def _signature(kernel, dtype: str, constexprs: dict) -> dict[str, str]:
    """Every pointer argument in the model dtype unless it is an index/fp32 buffer; ints i32."""
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = INDEX_PTRS.get(name, f"*{dtype}")
        else:
            sig[name] = "i32"
    return sig


def variants():
    lora = dict(BLOCK_M=triton_lora.BLOCK_M)
    for dtype, precision in [("bf16", "tf32"), ("fp32", "ieee")]:  # fp16 lowers like bf16
        for contiguous in (False, True):
            common = dict(lora, CONTIGUOUS=contiguous, PRECISION=precision)
            yield triton_lora._shrink_kernel, dtype, dict(
                common, BLOCK_R=triton_lora.BLOCK_R, BLOCK_K=triton_lora.BLOCK_K_SHRINK)
            yield triton_lora._expand_kernel, dtype, dict(
                common, BLOCK_N=triton_lora.BLOCK_N, BLOCK_K=triton_lora.BLOCK_K_EXPAND)
            yield triton_sparse_delta._sparse_rows_kernel, dtype, dict(
                BLOCK_M=triton_sparse_delta.BLOCK_M, BLOCK_O=triton_sparse_delta.BLOCK_O,
                BLOCK_NNZ=triton_sparse_delta.BLOCK_NNZ, CONTIGUOUS=contiguous,
                PRECISION=precision)


def main() -> int:
    for kernel, dtype, constexprs in variants():
        if type(kernel).__name__ != "JITFunction":
            print(f"{kernel} is not compiled (is TRITON_INTERPRET set?)", file=sys.stderr)
            return 1
        src = ASTSource(kernel, _signature(kernel, dtype, constexprs), constexprs)
        compiled = triton.compile(src, target=TARGET)
        print(f"{kernel.__name__} {dtype} contiguous={constexprs['CONTIGUOUS']} "
              f"cubin={len(compiled.asm['cubin'])}B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
