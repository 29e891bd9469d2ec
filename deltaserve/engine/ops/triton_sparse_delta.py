"""Sparse-delta rows as a Triton kernel: y[t] += Δ_a x[t], straight from the stacked CSR.

Same storage and result as `sparse_delta.sparse_delta_grouped` (its PyTorch path is the
reference): the step's n deltas of one (layer, fused group) are the diagonal blocks of a CSR
matrix [n * d_out, n * d_in], and `DeltaRows.padded` (a `LoRARows`) says which packed rows use
which delta. One program owns a tile of BLOCK_O output rows of delta i and a block of that
delta's rows: it streams the tile's non-zeros (contiguous in CSR) in chunks, gathers x at their
columns, multiplies by their values ([BLOCK_M, BLOCK_NNZ] products) and reduces each product
into its output row with a one-hot matmul (products x [BLOCK_NNZ, BLOCK_O] membership of each
non-zero in the tile's rows, from the tile's crow slice: no per-non-zero row ids are stored).
The [BLOCK_M, BLOCK_O] sum is added to y in place; each (row, output) has one owner, so no
atomics. Programs whose row block holds no real row (real rows are a prefix of [i, 0:m]) or
whose tile has no non-zero exit at once, so the uneven layouts that make the torch path loop
per delta cost nothing extra here.

This module imports triton at the top: import it lazily (ops/dispatch.py does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.engine.ops.sparse_delta import DeltaRows, _SparseGroup
from deltaserve.engine.ops.triton_lora import _row_block

BLOCK_M = 16  # rows of the delta per program
BLOCK_O = 32  # output rows (of Δ) per program
BLOCK_NNZ = 64  # non-zeros of the tile per loop iteration


def _precision(dtype: torch.dtype) -> str:
    # fp32 models stay exact; for half models the fp32 products pass through TF32 (10-bit
    # mantissa, finer than the bf16 the weights are stored in); the one-hot side is exact.
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _sparse_rows_kernel(
    x_ptr, y_ptr, crow_ptr, col_ptr, val_ptr, flat_index_ptr, pad_mask_ptr,
    m, d_in, d_out, tiles_per_delta, stride_xt, stride_xk, stride_yt, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_NNZ: tl.constexpr,
    CONTIGUOUS: tl.constexpr, PRECISION: tl.constexpr,
):
    """y[row(i, j), o] += Σ_p val[p] · x[row(i, j), col[p] - i*d_in] over CSR row i*d_out + o,
    for the BLOCK_O outputs o of one tile."""
    delta = tl.program_id(0) // tiles_per_delta
    o0 = (tl.program_id(0) % tiles_per_delta) * BLOCK_O
    mb = tl.program_id(1)
    if not CONTIGUOUS:
        if tl.load(pad_mask_ptr + delta * m + mb * BLOCK_M) == 0:
            return
    first = delta * d_out + o0  # first CSR row of the tile
    tile_start = tl.load(crow_ptr + first)
    tile_end = tl.load(crow_ptr + delta * d_out + tl.minimum(o0 + BLOCK_O, d_out))
    if tile_start == tile_end:
        return
    o = o0 + tl.arange(0, BLOCK_O)
    o_ok = o < d_out
    lo = tl.load(crow_ptr + first + tl.arange(0, BLOCK_O), mask=o_ok, other=tile_end)
    hi = tl.load(crow_ptr + first + tl.arange(0, BLOCK_O) + 1, mask=o_ok, other=tile_end)
    rows, real = _row_block(flat_index_ptr, pad_mask_ptr, delta, m, mb, BLOCK_M, CONTIGUOUS)
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    for p0 in range(tile_start, tile_end, BLOCK_NNZ):
        p = p0 + tl.arange(0, BLOCK_NNZ)
        p_ok = p < tile_end
        cols = tl.load(col_ptr + p, mask=p_ok, other=0) - delta * d_in  # [BLOCK_NNZ]
        vals = tl.load(val_ptr + p, mask=p_ok, other=0.0).to(tl.float32)
        xb = tl.load(x_ptr + rows[:, None] * stride_xt + cols[None, :] * stride_xk,
                     mask=real[:, None] & p_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_NNZ]
        prod = xb.to(tl.float32) * vals[None, :]
        member = (p[:, None] >= lo[None, :]) & (p[:, None] < hi[None, :])  # [NNZ, BLOCK_O]
        acc += tl.dot(prod, member.to(tl.float32), input_precision=PRECISION)
    y_at = y_ptr + rows[:, None] * stride_yt + o[None, :] * stride_yd
    ok = real[:, None] & o_ok[None, :]
    old = tl.load(y_at, mask=ok, other=0.0)
    tl.store(y_at, (old.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=ok)


def sparse_delta_grouped_triton(x: torch.Tensor, y: torch.Tensor, g: _SparseGroup,
                                rows: DeltaRows) -> None:
    """Triton version of `sparse_delta.sparse_delta_grouped`: y += Δ_a x per row, in place.

    x: [T, d_in]; y: [T, d_out] of the fused projection. `rows.per_delta` is not needed.
    """
    p = rows.padded
    crow, col, val = g.s.crow_indices(), g.s.col_indices(), g.s.values()
    flat = p.flat_index if not p.contiguous else crow  # placeholders, never read
    mask = p.pad_mask if not p.contiguous else crow
    tiles = triton.cdiv(g.d_out, BLOCK_O)
    _sparse_rows_kernel[(p.n * tiles, triton.cdiv(p.m, BLOCK_M))](
        x, y, crow, col, val, flat, mask,
        p.m, g.d_in, g.d_out, tiles, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_O=BLOCK_O, BLOCK_NNZ=BLOCK_NNZ, CONTIGUOUS=p.contiguous,
        PRECISION=_precision(val.dtype),
    )
