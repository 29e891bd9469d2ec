"""Grouped multi-LoRA shrink/expand as Triton kernels (SGMV-style, heterogeneous ranks).

Same layout and result as `lora.lora_grouped` (its PyTorch path is the reference):

- weights: a `_GroupWeights` of the step's n stacked adapters; A is [n, S*r, d_in] with the S
  modules of the fused group at rank blocks [s*r, (s+1)*r), each sub's B is [n, r, d_out_s];
  r is the largest rank of the set, smaller ranks are zero-padded;
- rows: a `LoRARows` padded layout: adapter i's rows sit at padded positions [i, 0:k_i] of
  [n, m] (`flat_index` maps each position to its packed row, `pad_mask` is 1 on real ones),
  or, when `contiguous`, adapter i owns packed rows [i*m, (i+1)*m).

Heterogeneous ranks: each (adapter, module) carries its real rank (`effective_ranks`, derived
once per stacked group from where A's rows stop being zero), and the kernels stop there, so a
rank-8 adapter stacked next to a rank-64 one reads 8 rows of A and B, not 64. Programs whose
row block holds no real row (the prefix k_i ends before it) or whose rank block lies past the
adapter's rank exit at once.

Expand writes each packed row's outputs in place (`y[row] += ...`): a row belongs to one
adapter, so every (row, column) is touched by exactly one program and no atomics are needed.

This module imports triton at the top: import it lazily (ops/dispatch.py does).
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from deltaserve.engine.ops.lora import LoRARows, _GroupWeights

# Tile sizes. tl.dot needs every dimension >= 16. Not tuned on a device yet (see README,
# "GPU fast path"): decode steps have few rows per adapter, so BLOCK_M stays at the minimum.
BLOCK_M = 16
BLOCK_R = 16  # shrink: rank columns per program
BLOCK_K_SHRINK = 64  # shrink: d_in chunk per loop iteration
BLOCK_N = 64  # expand: output columns per program
BLOCK_K_EXPAND = 16  # expand: rank chunk per loop iteration

_RANKS: dict[int, torch.Tensor] = {}
"""id(_GroupWeights) -> [n, S] int32 effective ranks; entries leave with their weights."""


def effective_ranks(gw: _GroupWeights) -> torch.Tensor:
    """[n, S] int32: 1 + the last non-zero row of each (adapter, module) rank block of A
    (0 when the adapter does not target the module). Computed once per stacked group: stacks
    are never written in place (a changed adapter set builds or extends into new groups)."""
    key = id(gw)
    cached = _RANKS.get(key)
    if cached is not None:
        return cached
    n, total, d_in = gw.a.shape
    s = total // gw.rank
    nonzero = (gw.a.view(n, s, gw.rank, d_in) != 0).any(-1)  # [n, S, r]
    position = torch.arange(1, gw.rank + 1, device=gw.a.device, dtype=torch.int32)
    ranks = (nonzero.to(torch.int32) * position).amax(-1).to(torch.int32).contiguous()
    _RANKS[key] = ranks
    weakref.finalize(gw, _RANKS.pop, key, None)
    return ranks


def _precision(dtype: torch.dtype) -> str:
    # float32 stays exact like torch's default matmul (TF32 off); half types use tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _row_block(flat_index_ptr, pad_mask_ptr, adapter, m, mb,
               BLOCK_M: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """(packed rows [BLOCK_M], real-row mask [BLOCK_M]) of row block mb of one adapter."""
    j = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = j < m
    if CONTIGUOUS:  # int64 like flat_index: row * stride may pass 2**31 on big steps
        rows = (adapter * m + j).to(tl.int64)
        real = in_range
    else:
        real = tl.load(pad_mask_ptr + adapter * m + j, mask=in_range, other=0.0) != 0
        rows = tl.load(flat_index_ptr + adapter * m + j, mask=real, other=0)
    return rows, real


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, h_ptr, ranks_ptr, flat_index_ptr, pad_mask_ptr,
    m, d_in, rank, num_subs, blocks_per_sub,
    stride_xt, stride_xk, stride_an, stride_ar, stride_ak,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    CONTIGUOUS: tl.constexpr, PRECISION: tl.constexpr,
):
    """h[i, j, s*r + c] = A_i[s*r + c] · x[row(i, j)] for c < rank of (i, s); h is fp32."""
    adapter = tl.program_id(0)
    mb = tl.program_id(1)
    sub = tl.program_id(2) // blocks_per_sub
    r0 = (tl.program_id(2) % blocks_per_sub) * BLOCK_R
    rank_is = tl.load(ranks_ptr + adapter * num_subs + sub)
    if r0 >= rank_is:
        return
    if not CONTIGUOUS:  # real rows are a prefix: a block starting on padding has none
        if tl.load(pad_mask_ptr + adapter * m + mb * BLOCK_M) == 0:
            return
    rows, real = _row_block(flat_index_ptr, pad_mask_ptr, adapter, m, mb, BLOCK_M, CONTIGUOUS)
    r = r0 + tl.arange(0, BLOCK_R)
    r_ok = r < rank_is
    a_rows = sub * rank + r
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < d_in
        xb = tl.load(x_ptr + rows[:, None] * stride_xt + k[None, :] * stride_xk,
                     mask=real[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        ab = tl.load(a_ptr + adapter * stride_an + a_rows[None, :] * stride_ar
                     + k[:, None] * stride_ak,
                     mask=r_ok[None, :] & k_ok[:, None], other=0.0)  # [BLOCK_K, BLOCK_R]
        acc += tl.dot(xb, ab, input_precision=PRECISION)
    j = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    total = num_subs * rank
    tl.store(h_ptr + (adapter * m + j[:, None]) * total + a_rows[None, :], acc,
             mask=real[:, None] & r_ok[None, :])


@triton.jit
def _expand_kernel(
    h_ptr, b_ptr, y_ptr, ranks_ptr, flat_index_ptr, pad_mask_ptr,
    m, d_out, col, out_offset, total, sub, num_subs,
    stride_bn, stride_bk, stride_bd, stride_yt, stride_yd,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CONTIGUOUS: tl.constexpr, PRECISION: tl.constexpr,
):
    """y[row(i, j), out_offset + c] += h[i, j, col : col + rank] · B_i[:rank, c]."""
    adapter = tl.program_id(0)
    mb = tl.program_id(1)
    rank_is = tl.load(ranks_ptr + adapter * num_subs + sub)
    if rank_is == 0:
        return
    if not CONTIGUOUS:
        if tl.load(pad_mask_ptr + adapter * m + mb * BLOCK_M) == 0:
            return
    rows, real = _row_block(flat_index_ptr, pad_mask_ptr, adapter, m, mb, BLOCK_M, CONTIGUOUS)
    j = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < d_out
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, rank_is, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < rank_is
        hb = tl.load(h_ptr + (adapter * m + j[:, None]) * total + col + k[None, :],
                     mask=real[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        bb = tl.load(b_ptr + adapter * stride_bn + k[:, None] * stride_bk
                     + c[None, :] * stride_bd,
                     mask=k_ok[:, None] & c_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        # h is rounded to the weights' dtype first, like the torch path's bmm inputs
        acc += tl.dot(hb.to(bb.dtype), bb, input_precision=PRECISION)
    y_at = y_ptr + rows[:, None] * stride_yt + (out_offset + c)[None, :] * stride_yd
    ok = real[:, None] & c_ok[None, :]
    old = tl.load(y_at, mask=ok, other=0.0)
    tl.store(y_at, (old.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=ok)


def lora_grouped_triton(x: torch.Tensor, y: torch.Tensor, gw: _GroupWeights,
                        rows: LoRARows) -> None:
    """Triton version of `lora.lora_grouped`: y += B_a(A_a x) per row, in place.

    x: [T, d_in]; y: [T, d_out_total] of the fused projection.
    """
    n, m = rows.n, rows.m
    _, total, d_in = gw.a.shape
    num_subs = total // gw.rank
    ranks = effective_ranks(gw)  # [n, S] int32
    # Placeholders the kernels never read when the layout is contiguous.
    flat = rows.flat_index if not rows.contiguous else ranks
    mask = rows.pad_mask if not rows.contiguous else ranks
    precision = _precision(gw.a.dtype)
    h = torch.empty(n, m, total, device=x.device, dtype=torch.float32)  # [n, m, S*r]
    blocks_per_sub = triton.cdiv(gw.rank, BLOCK_R)
    a = gw.a
    _shrink_kernel[(n, triton.cdiv(m, BLOCK_M), num_subs * blocks_per_sub)](
        x, a, h, ranks, flat, mask,
        m, d_in, gw.rank, num_subs, blocks_per_sub,
        x.stride(0), x.stride(1), a.stride(0), a.stride(1), a.stride(2),
        BLOCK_M=BLOCK_M, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K_SHRINK,
        CONTIGUOUS=rows.contiguous, PRECISION=precision,
    )
    for s, sub in enumerate(gw.subs):
        d_out = sub.b.shape[-1]
        b = sub.b  # [n, r, d_out]
        _expand_kernel[(n, triton.cdiv(m, BLOCK_M), triton.cdiv(d_out, BLOCK_N))](
            h, b, y, ranks, flat, mask,
            m, d_out, sub.col, sub.out_offset, total, s, num_subs,
            b.stride(0), b.stride(1), b.stride(2), y.stride(0), y.stride(1),
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K_EXPAND,
            CONTIGUOUS=rows.contiguous, PRECISION=precision,
        )
