"""A CPU kernel for decode attention (one query per sequence) that reads the paged KV cache in
place.

The PyTorch path (layers/attention.py) first gathers every sequence's blocks into a padded
[Hkv, B, Lk, D] copy of K and of V, then runs batched matmuls over the padding and a masked
softmax: on the W model that was a quarter of a decode step. This kernel walks each sequence's
own block table, reads each of its keys and values once for the query heads that share them
(GQA), and keeps scores, softmax and the weighted sum in float32. One work item is one
(sequence, KV head).

Plain C compiled at start-up (ops/cpu_build.py). `layers.attention._eager_attention` on the
gathered cache is its test oracle.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from deltaserve.engine.ops import cpu_build

_SRC = r"""
#include <omp.h>

/* exp(x) for x <= 0 (scores minus their maximum), vectorisable (libm's expf is not without
   -ffast-math, which would change the whole process's float mode): 2^n * p(r), r in
   [-ln2/2, ln2/2], Cephes' polynomial, relative error ~1e-7. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_floorf(x * 1.44269504f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691e-4f;
    p = p * r + 1.3981999e-3f;
    p = p * r + 8.3334519e-3f;
    p = p * r + 4.1665795e-2f;
    p = p * r + 1.6666665e-1f;
    p = p * r + 5.0000001e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } s; s.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * s.f;
}

/* One (sequence b, KV head h) item. Inlined with D a constant where it is 64 or 128, so the
   loops over a head's dimensions unroll into whole vectors. */
#define ITEM(T, LOAD, STORE)                                                                   \
static inline __attribute__((always_inline)) void item_##T(                                    \
        const T* q, const T* kc, const T* vc, const int64_t* tables, int64_t nb,                \
        const int64_t* ranges, T* out, int b, int h, int H, int G, const int D, int64_t bs,     \
        int64_t slots, float scale, float* sc, int64_t lmax) {                                 \
    float* qf = sc + (int64_t)G * lmax;                                                         \
    float* acc = qf + (int64_t)G * D;                                                           \
    float* row = acc + (int64_t)G * D;  /* one K or V row in float32 */                         \
    const int64_t lo = ranges[2 * b], hi = ranges[2 * b + 1];                                   \
    for (int g = 0; g < G; g++)                                                                 \
        for (int d = 0; d < D; d++)                                                             \
            qf[g * D + d] = LOAD(q[((int64_t)b * H + h * G + g) * D + d]) * scale;              \
    for (int64_t t = lo, slot = 0, left = 0; t < hi; t++, slot++, left--) {                     \
        if (left == 0) {  /* the next block of the table */                                     \
            slot = tables[b * nb + t / bs] * bs + t % bs;                                       \
            left = bs - t % bs;                                                                 \
        }                                                                                       \
        const T* kr = kc + ((int64_t)h * slots + slot) * D;                                     \
        _Pragma("omp simd")                                                                     \
        for (int d = 0; d < D; d++) row[d] = LOAD(kr[d]);  /* once for the G heads */           \
        for (int g = 0; g < G; g++) {                                                           \
            float s = 0.f;                                                                      \
            _Pragma("omp simd reduction(+:s)")                                                  \
            for (int d = 0; d < D; d++) s += qf[g * D + d] * row[d];                            \
            sc[g * lmax + (t - lo)] = s;                                                        \
        }                                                                                       \
    }                                                                                           \
    for (int g = 0; g < G; g++) {                                                               \
        float* s = sc + g * lmax;                                                               \
        float m = s[0], sum = 0.f;                                                              \
        _Pragma("omp simd reduction(max:m)")                                                    \
        for (int64_t t = 1; t < hi - lo; t++) m = s[t] > m ? s[t] : m;                          \
        _Pragma("omp simd reduction(+:sum)")                                                    \
        for (int64_t t = 0; t < hi - lo; t++) { s[t] = exp_neg(s[t] - m); sum += s[t]; }        \
        const float inv = 1.f / sum;                                                            \
        _Pragma("omp simd")                                                                     \
        for (int64_t t = 0; t < hi - lo; t++) s[t] *= inv;                                      \
        for (int d = 0; d < D; d++) acc[g * D + d] = 0.f;                                       \
    }                                                                                           \
    for (int64_t t = lo, slot = 0, left = 0; t < hi; t++, slot++, left--) {                     \
        if (left == 0) {                                                                        \
            slot = tables[b * nb + t / bs] * bs + t % bs;                                       \
            left = bs - t % bs;                                                                 \
        }                                                                                       \
        const T* vr = vc + ((int64_t)h * slots + slot) * D;                                     \
        _Pragma("omp simd")                                                                     \
        for (int d = 0; d < D; d++) row[d] = LOAD(vr[d]);                                       \
        for (int g = 0; g < G; g++) {                                                           \
            const float p = sc[g * lmax + (t - lo)];                                            \
            _Pragma("omp simd")                                                                 \
            for (int d = 0; d < D; d++) acc[g * D + d] += p * row[d];                           \
        }                                                                                       \
    }                                                                                           \
    for (int g = 0; g < G; g++)                                                                 \
        for (int d = 0; d < D; d++)                                                             \
            out[((int64_t)b * H + h * G + g) * D + d] = STORE(acc[g * D + d]);                  \
}

/* q [B, H, D]; caches [Hkv, slots, D]; tables [B, nb]; ranges [B, 2]: keys lo..hi-1 of
   sequence b (its context, cut to the sliding window); out [B, H, D];
   scratch per thread: G * lmax scores, G * D query, G * D sums, D row (float32). */
#define DECODE(NAME, T)                                                                        \
void NAME(const T* q, const T* kc, const T* vc, const int64_t* tables, int64_t nb,              \
          const int64_t* ranges, T* out, int B, int H, int Hkv, int D, int64_t bs,              \
          int64_t slots, float scale, float* scratch, int64_t lmax, int nthreads) {            \
    const int G = H / Hkv;                                                                      \
    const int64_t per_thread = (int64_t)G * lmax + (2 * (int64_t)G + 1) * D;                    \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")                      \
    for (int64_t item = 0; item < (int64_t)B * Hkv; item++) {                                   \
        const int b = item / Hkv, h = item % Hkv;                                               \
        float* sc = scratch + omp_get_thread_num() * per_thread;                                \
        if (D == 64)                                                                            \
            item_##T(q, kc, vc, tables, nb, ranges, out, b, h, H, G, 64, bs, slots, scale, sc, lmax); \
        else if (D == 128)                                                                      \
            item_##T(q, kc, vc, tables, nb, ranges, out, b, h, H, G, 128, bs, slots, scale, sc, lmax); \
        else                                                                                    \
            item_##T(q, kc, vc, tables, nb, ranges, out, b, h, H, G, D, bs, slots, scale, sc, lmax); \
    }                                                                                           \
}

ITEM(bf16, bf2f, f2bf)
ITEM(float, f2f, f2f)
DECODE(decode_attention_bf16, bf16)
DECODE(decode_attention_f32, float)
"""

_FUNCS = {torch.bfloat16: "decode_attention_bf16", torch.float32: "decode_attention_f32"}
_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_ARGTYPES = [_P, _P, _P, _P, _I64, _P, _P, _I, _I, _I, _I, _I64, _I64, ctypes.c_float, _P, _I64,
             _I]


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel (built once per process); None where no compiler works."""
    return cpu_build.build("decode_attention", _SRC, {n: _ARGTYPES for n in _FUNCS.values()})


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """CPU tensors of a dtype the kernel has, contiguous caches, and a compiler."""
    return (q.device.type == "cpu" and q.dtype in _FUNCS and k_cache.dtype == q.dtype
            and k_cache.is_contiguous() and _library() is not None)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, block_size: int,
                     key_ranges: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention of one query per sequence over its cached keys. Returns [B, H*D].
    scale: of q·k (default D^-0.5; Gemma's query_pre_attn_scalar^-0.5).

    q: [B, H, D]; k_cache, v_cache: [Hkv, slots, D] contiguous; block_tables: [B, nb] int64;
    key_ranges: [B, 2] int64, the keys [lo, hi) each sequence attends to (hi > lo).
    """
    bsz, heads, d = q.shape
    hkv, slots, _ = k_cache.shape
    q = q.contiguous()
    ranges = key_ranges.contiguous()
    lmax = int((ranges[:, 1] - ranges[:, 0]).max())
    g = heads // hkv
    threads = torch.get_num_threads()
    scratch = torch.empty(threads, g * lmax + (2 * g + 1) * d, dtype=torch.float32)
    out = torch.empty(bsz, heads * d, dtype=q.dtype)
    tables = block_tables.contiguous()
    getattr(_library(), _FUNCS[q.dtype])(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
        tables.shape[1], ranges.data_ptr(), out.data_ptr(), bsz, heads, hkv, d, block_size,
        slots, d**-0.5 if scale is None else scale, scratch.data_ptr(), lmax, threads)
    return out
