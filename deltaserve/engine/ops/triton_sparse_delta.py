"""Sparse-delta rows as a Triton kernel: y[t] += Δ_a x[t], straight from the stacked CSR.

Same storage and result as `sparse_delta.sparse_delta_grouped` (its PyTorch path is the
reference): the step's n deltas of one (layer, fused group) are the diagonal blocks of a CSR
matrix [n * d_out, n * d_in], and `DeltaRows.padded` (a `LoRARows`) says which packed rows use
which delta. One program owns one output row o of delta i and a block of that delta's rows:
it walks the row's non-zeros (column, value) in chunks, gathers those columns of its rows' x
and reduces, then adds the sum to y[row, o]. Each (row, o) has one owner, so no atomics;
programs whose row block holds no real row exit at once (real rows are a prefix of [i, 0:m]),
so the uneven layouts that make the torch path loop per delta cost nothing extra here.

This module imports triton at the top: import it lazily (ops/dispatch.py does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.engine.ops.sparse_delta import DeltaRows, _SparseGroup
from deltaserve.engine.ops.triton_lora import _row_block

BLOCK_M = 16  # rows of the delta per program
BLOCK_NNZ = 32  # non-zeros of the output row per loop iteration


@triton.jit
def _sparse_rows_kernel(
    x_ptr, y_ptr, crow_ptr, col_ptr, val_ptr, flat_index_ptr, pad_mask_ptr,
    m, d_in, d_out, stride_xt, stride_xk, stride_yt, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_NNZ: tl.constexpr, CONTIGUOUS: tl.constexpr,
):
    """y[row(i, j), o] += Σ_p val[p] · x[row(i, j), col[p] - i*d_in] over CSR row i*d_out + o."""
    global_row = tl.program_id(0)  # i * d_out + o
    mb = tl.program_id(1)
    delta = global_row // d_out
    o = global_row % d_out
    if not CONTIGUOUS:
        if tl.load(pad_mask_ptr + delta * m + mb * BLOCK_M) == 0:
            return
    start = tl.load(crow_ptr + global_row)
    end = tl.load(crow_ptr + global_row + 1)
    if start == end:
        return
    rows, real = _row_block(flat_index_ptr, pad_mask_ptr, delta, m, mb, BLOCK_M, CONTIGUOUS)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_NNZ):
        p = p0 + tl.arange(0, BLOCK_NNZ)
        p_ok = p < end
        cols = tl.load(col_ptr + p, mask=p_ok, other=0) - delta * d_in  # [BLOCK_NNZ]
        vals = tl.load(val_ptr + p, mask=p_ok, other=0.0).to(tl.float32)
        xb = tl.load(x_ptr + rows[:, None] * stride_xt + cols[None, :] * stride_xk,
                     mask=real[:, None] & p_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_NNZ]
        acc += tl.sum(xb.to(tl.float32) * vals[None, :], axis=1)
    y_at = y_ptr + rows * stride_yt + o * stride_yd
    old = tl.load(y_at, mask=real, other=0.0)
    tl.store(y_at, (old.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=real)


def sparse_delta_grouped_triton(x: torch.Tensor, y: torch.Tensor, g: _SparseGroup,
                                rows: DeltaRows) -> None:
    """Triton version of `sparse_delta.sparse_delta_grouped`: y += Δ_a x per row, in place.

    x: [T, d_in]; y: [T, d_out] of the fused projection. `rows.per_delta` is not needed.
    """
    p = rows.padded
    crow, col, val = g.s.crow_indices(), g.s.col_indices(), g.s.values()
    flat = p.flat_index if not p.contiguous else crow  # placeholders, never read
    mask = p.pad_mask if not p.contiguous else crow
    _sparse_rows_kernel[(p.n * g.d_out, triton.cdiv(p.m, BLOCK_M))](
        x, y, crow, col, val, flat, mask,
        p.m, g.d_in, g.d_out, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_NNZ=BLOCK_NNZ, CONTIGUOUS=p.contiguous,
    )
