"""A CPU kernel for the grouped LoRA op on decode-sized steps (few rows per adapter).

With a handful of rows per adapter, LoRA is bound by reading every adapter's A and B once per
step; torch.bmm over 32 tiny [m, d_in] x [d_in, r] problems ran ~4x below that (per-problem
overhead, and no kernel for uneven row counts, which then needed a padded gather). This kernel
reads each adapter's weights once, walks each adapter's rows as a contiguous segment of the
packed rows (the runner sorts rows by adapter), accumulates in float32, and splits the work over
(adapter, rank block) then (adapter, column block) so every thread streams distinct weights.

It is plain C compiled at start-up with the machine's own compiler and `-march=native` (CPUs
differ: nothing is assumed about AVX2/AVX-512/AMX), loaded with ctypes; where no compiler
works the engine keeps the PyTorch path. `ops.lora.lora_reference` is its test oracle.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from deltaserve.engine.ops import cpu_build

MAX_ROWS_PER_ADAPTER = 16
"""Above this the step is a prefill: compute-bound, where oneDNN's GEMMs win."""

_SRC = r"""

/* dot4(xr, a0..a3, d_in, out): four dot products of x's row with four A rows. */
#if defined(__AVX512BF16__)
#include <immintrin.h>
/* AVX512-BF16: 32 bf16 multiply-adds per instruction into float32, no conversions. */
static inline void dot4_bf16(const bf16* xr, const bf16* a0, const bf16* a1, const bf16* a2,
                             const bf16* a3, int64_t n, float* out) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 32 <= n; d += 32) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(xr + d);
        s0 = _mm512_dpbf16_ps(s0, xv, (__m512bh)_mm512_loadu_si512(a0 + d));
        s1 = _mm512_dpbf16_ps(s1, xv, (__m512bh)_mm512_loadu_si512(a1 + d));
        s2 = _mm512_dpbf16_ps(s2, xv, (__m512bh)_mm512_loadu_si512(a2 + d));
        s3 = _mm512_dpbf16_ps(s3, xv, (__m512bh)_mm512_loadu_si512(a3 + d));
    }
    float r0 = _mm512_reduce_add_ps(s0), r1 = _mm512_reduce_add_ps(s1);
    float r2 = _mm512_reduce_add_ps(s2), r3 = _mm512_reduce_add_ps(s3);
    for (; d < n; d++) {
        const float xv = bf2f(xr[d]);
        r0 += xv * bf2f(a0[d]); r1 += xv * bf2f(a1[d]); r2 += xv * bf2f(a2[d]); r3 += xv * bf2f(a3[d]);
    }
    out[0] = r0; out[1] = r1; out[2] = r2; out[3] = r3;
}
#define HAVE_DOT4_bf16 1
#endif

#define DOT4_GENERIC(T, LOAD)                                                                  \
static inline void dot4_generic_##T(const T* xr, const T* a0, const T* a1, const T* a2,        \
                                    const T* a3, int64_t n, float* out) {                       \
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;                                               \
    _Pragma("omp simd reduction(+:s0,s1,s2,s3)")                                                \
    for (int64_t d = 0; d < n; d++) {                                                           \
        const float xv = LOAD(xr[d]);                                                           \
        s0 += xv * LOAD(a0[d]); s1 += xv * LOAD(a1[d]);                                         \
        s2 += xv * LOAD(a2[d]); s3 += xv * LOAD(a3[d]);                                         \
    }                                                                                           \
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;                                         \
}
DOT4_GENERIC(bf16, bf2f)
DOT4_GENERIC(float, f2f)
#ifndef HAVE_DOT4_bf16
#define dot4_bf16 dot4_generic_bf16
#endif
#define dot4_float dot4_generic_float

#define KB 8    /* rank rows per shrink work item (a multiple of 4) */
#define CB 256  /* output columns per expand work item (a multiple of VC) */
#define VC 64   /* output columns whose accumulators stay in registers */
#define JB 4    /* rows sharing one conversion of B's row block */

/* x [T, d_in]; y [T, y_stride] (adds into columns off[s] .. off[s]+dout[s] of sub s);
   a [n, S*R, d_in]; b[s] [n, R, dout[s]]; rows of adapter i: seg_start[i] .. +seg_len[i];
   h: float32 scratch [T, S*R]. Shrink: four rank rows per pass over x's row, so four
   independent accumulator chains hide the FMA latency. Expand: VC columns of one row
   accumulate over the rank in registers, then are added to y once. */
#define LORA_SEGMENTS(NAME, T, LOAD, STORE)                                                    \
void NAME(const T* x, T* y, const T* a, const T* const* b, const int64_t* off,                  \
          const int64_t* dout, int S, int R, int64_t d_in, int64_t y_stride, int n,             \
          const int64_t* seg_start, const int64_t* seg_len, float* h, int nthreads) {           \
    const int SR = S * R, kblocks = (SR + KB - 1) / KB;                                         \
    int64_t maxcb = 0;                                                                          \
    for (int s = 0; s < S; s++) { int64_t c = (dout[s] + CB - 1) / CB; if (c > maxcb) maxcb = c; } \
    _Pragma("omp parallel num_threads(nthreads)")                                               \
    {                                                                                           \
        _Pragma("omp for schedule(static)")                                                     \
        for (int64_t item = 0; item < (int64_t)n * kblocks; item++) {                           \
            const int i = item / kblocks, k0 = (item % kblocks) * KB;                           \
            const int k1 = k0 + KB < SR ? k0 + KB : SR;                                         \
            for (int k = k0; k < k1; k += 4) {                                                  \
                const T* a0 = a + ((int64_t)i * SR + k) * d_in;                                 \
                const T* a1 = k + 1 < k1 ? a0 + d_in : a0;                                      \
                const T* a2 = k + 2 < k1 ? a0 + 2 * d_in : a0;                                  \
                const T* a3 = k + 3 < k1 ? a0 + 3 * d_in : a0;                                  \
                for (int64_t j = seg_start[i]; j < seg_start[i] + seg_len[i]; j++) {            \
                    float r[4];                                                                 \
                    dot4_##T(x + j * d_in, a0, a1, a2, a3, d_in, r);                            \
                    float* hr = h + j * SR + k;                                                 \
                    for (int q = 0; q < 4 && k + q < k1; q++) hr[q] = r[q];                     \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        _Pragma("omp for schedule(static)")                                                     \
        for (int64_t item = 0; item < (int64_t)n * S * maxcb; item++) {                         \
            const int i = item / (S * maxcb), s = (item / maxcb) % S;                           \
            const int64_t c0 = (item % maxcb) * CB;                                             \
            if (c0 >= dout[s]) continue;                                                        \
            const int64_t c1 = c0 + CB < dout[s] ? c0 + CB : dout[s];                           \
            const T* bs = b[s] + (int64_t)i * R * dout[s];                                      \
            const int64_t j_end = seg_start[i] + seg_len[i];                                    \
            for (int64_t j0 = seg_start[i]; j0 < j_end; j0 += JB) {                             \
                const int jn = j_end - j0 < JB ? (int)(j_end - j0) : JB;                        \
                int64_t c = c0;                                                                 \
                for (; c + VC <= c1; c += VC) {                                                 \
                    float acc[JB][VC], bv[VC];                                                  \
                    for (int q = 0; q < JB; q++)                                                \
                        _Pragma("omp simd")                                                     \
                        for (int v = 0; v < VC; v++) acc[q][v] = 0.f;                           \
                    for (int k = 0; k < R; k++) {                                               \
                        const T* br = bs + (int64_t)k * dout[s] + c;                            \
                        _Pragma("omp simd")                                                     \
                        for (int v = 0; v < VC; v++) bv[v] = LOAD(br[v]);                       \
                        for (int q = 0; q < jn; q++) {                                          \
                            const float hv = h[(j0 + q) * SR + s * R + k];                      \
                            _Pragma("omp simd")                                                 \
                            for (int v = 0; v < VC; v++) acc[q][v] += hv * bv[v];               \
                        }                                                                       \
                    }                                                                           \
                    for (int q = 0; q < jn; q++) {                                              \
                        T* yr = y + (j0 + q) * y_stride + off[s] + c;                           \
                        _Pragma("omp simd")                                                     \
                        for (int v = 0; v < VC; v++) yr[v] = STORE(LOAD(yr[v]) + acc[q][v]);    \
                    }                                                                           \
                }                                                                               \
                for (; c < c1; c++) {                                                           \
                    for (int q = 0; q < jn; q++) {                                              \
                        const float* hr = h + (j0 + q) * SR + s * R;                            \
                        float acc = 0.f;                                                        \
                        for (int k = 0; k < R; k++)                                             \
                            acc += hr[k] * LOAD(bs[(int64_t)k * dout[s] + c]);                  \
                        T* yr = y + (j0 + q) * y_stride + off[s];                               \
                        yr[c] = STORE(LOAD(yr[c]) + acc);                                       \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

LORA_SEGMENTS(lora_segments_bf16, bf16, bf2f, f2bf)
LORA_SEGMENTS(lora_segments_f32, float, f2f, f2f)
"""

_FUNCS = {torch.bfloat16: "lora_segments_bf16", torch.float32: "lora_segments_f32"}
_P = ctypes.c_void_p
_ARGTYPES = [_P, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
             ctypes.c_int, _P, _P, _P, ctypes.c_int]


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel (built once per process); None where no compiler works."""
    return cpu_build.build("lora", _SRC, {name: _ARGTYPES for name in _FUNCS.values()})


def available() -> bool:
    return _library() is not None


def supports(x: torch.Tensor, max_rows: int) -> bool:
    """Whether this step's LoRA can run here: CPU tensors, f32/bf16, decode-sized segments."""
    return (x.device.type == "cpu" and x.dtype in _FUNCS and max_rows <= MAX_ROWS_PER_ADAPTER
            and available())


@dataclass(frozen=True)
class KernelWeights:
    """One fused projection's stacked LoRA weights as the kernel takes them: built once per
    stack (the engine keeps it with the stack), so a call does no per-step Python set-up
    beyond its rows (~40 µs a call otherwise, 48 calls a decode step of the W model)."""

    a: torch.Tensor
    """[n, S*rank, d_in] contiguous."""
    bs: tuple[torch.Tensor, ...]
    """bs[s]: [n, rank, d_s] contiguous."""
    rank: int
    b_ptrs: ctypes.Array
    off: torch.Tensor
    """[S] int64: first column of sub s in y."""
    dout: torch.Tensor
    """[S] int64: d_s."""

    @classmethod
    def build(cls, a: torch.Tensor, bs: list[torch.Tensor], offsets: list[int],
              rank: int) -> KernelWeights:
        assert a.is_contiguous() and all(b.is_contiguous() and b.dtype == a.dtype for b in bs)
        return cls(a, tuple(bs), rank, (ctypes.c_void_p * len(bs))(*[b.data_ptr() for b in bs]),
                   torch.tensor(offsets, dtype=torch.int64),
                   torch.tensor([b.shape[2] for b in bs], dtype=torch.int64))


def lora_segments(x: torch.Tensor, y: torch.Tensor, w: KernelWeights, seg_start: torch.Tensor,
                  seg_len: torch.Tensor) -> None:
    """y[rows of adapter i, sub s cols] += B_{i,s} (A_{i,s} x[row]) for every adapter i. In place.

    x: [T, d_in] contiguous; y: [T, d_out_total] with unit column stride; w: the stacked
    weights (KernelWeights.build); seg_start/seg_len: [n] int64 on the CPU, adapter i's rows
    are x[seg_start[i] : seg_start[i] + seg_len[i]].
    """
    assert x.is_contiguous() and y.stride(1) == 1 and x.dtype == y.dtype == w.a.dtype
    n, sr, d_in = w.a.shape
    h = torch.empty(x.shape[0], sr, dtype=torch.float32)  # the shrink's output, [T, S*rank]
    fn = getattr(_library(), _FUNCS[x.dtype])
    fn(x.data_ptr(), y.data_ptr(), w.a.data_ptr(), ctypes.cast(w.b_ptrs, ctypes.c_void_p),
       w.off.data_ptr(), w.dout.data_ptr(), len(w.bs), w.rank, d_in, y.stride(0), n,
       seg_start.data_ptr(), seg_len.data_ptr(), h.data_ptr(), torch.get_num_threads())
