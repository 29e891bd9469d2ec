"""A CPU kernel for decode attention (one query per sequence) that reads the paged KV cache in
place.

The PyTorch path (layers/attention.py) first gathers every sequence's blocks into a padded
[Hkv, B, Lk, D] copy of K and of V, then runs batched matmuls over the padding and a masked
softmax: on the W model that was a quarter of a decode step. This kernel walks each sequence's
own block table, reads each of its keys and values once for the query heads that share them
(GQA), and keeps scores, softmax and the weighted sum in float32. One work item is one
(sequence, KV head).

On CPUs with AVX512-BF16 (Zen 4, Sapphire Rapids) bf16 items of head dim 64 or 128 and up to 8
query heads per KV head take a vectorised variant: measured 8.8 -> 4.5 ms per layer on an R-like
decode step (48 sequences, ~1000 cached keys each, 12 query / 4 KV heads of 64; 2 Zen 4 cores),
where attention was ~60% of the step. What is left is mostly waiting for blocks scattered over
the cache (2.4 ms when the same blocks are contiguous).

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


#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_BF16_FAST 1
/* bf16 items on CPUs with AVX512-BF16 (the generic item above is their oracle in the tests):
   q·k by vdpbf16ps straight from the cache (no conversion of K to float32), and the G query
   heads' sums of p·V held in registers (G and D compile-time constants; D = 64 or 128). */
#define FAST(G, D)                                                                             \
static void fast_##G##_##D(const bf16* q, const bf16* kc, const bf16* vc,                     \
        const int64_t* tables, int64_t nb, const int64_t* ranges, bf16* out, int b, int h,      \
        int H, int64_t bs, int64_t slots, float scale, float* sc, int64_t lmax) {              \
    const int64_t lo = ranges[2 * b], hi = ranges[2 * b + 1];                                   \
    __m512bh qv[G][D / 32];                                                                     \
    for (int g = 0; g < G; g++)                                                                 \
        for (int i = 0; i < D / 32; i++)                                                        \
            qv[g][i] = (__m512bh)_mm512_loadu_si512(q + ((int64_t)b * H + h * G + g) * D + 32 * i); \
    float m[G];                                                                                 \
    for (int g = 0; g < G; g++) m[g] = -3.0e38f;                                                \
    for (int64_t t = lo, slot = 0, left = 0; t < hi; t++, slot++, left--) {                     \
        if (left == 0) {                                                                        \
            slot = tables[b * nb + t / bs] * bs + t % bs;                                       \
            left = bs - t % bs;                                                                 \
        }                                                                                       \
        const bf16* kr = kc + ((int64_t)h * slots + slot) * D;                                  \
        __m512bh kv[D / 32];                                                                    \
        for (int i = 0; i < D / 32; i++) kv[i] = (__m512bh)_mm512_loadu_si512(kr + 32 * i);     \
        for (int g = 0; g < G; g++) {                                                           \
            __m512 acc = _mm512_setzero_ps();                                                   \
            for (int i = 0; i < D / 32; i++) acc = _mm512_dpbf16_ps(acc, qv[g][i], kv[i]);      \
            const float s = _mm512_reduce_add_ps(acc) * scale;                                  \
            sc[g * lmax + (t - lo)] = s;                                                        \
            m[g] = s > m[g] ? s : m[g];                                                         \
        }                                                                                       \
    }                                                                                           \
    float inv[G];                                                                               \
    for (int g = 0; g < G; g++) {                                                               \
        float* s = sc + g * lmax, sum = 0.f;                                                    \
        _Pragma("omp simd reduction(+:sum)")                                                    \
        for (int64_t t = 0; t < hi - lo; t++) { s[t] = exp_neg(s[t] - m[g]); sum += s[t]; }     \
        inv[g] = 1.f / sum;                                                                     \
    }                                                                                           \
    __m512 acc[G][D / 16];                                                                      \
    for (int g = 0; g < G; g++)                                                                 \
        for (int i = 0; i < D / 16; i++) acc[g][i] = _mm512_setzero_ps();                       \
    for (int64_t t = lo, slot = 0, left = 0; t < hi; t++, slot++, left--) {                     \
        if (left == 0) {                                                                        \
            slot = tables[b * nb + t / bs] * bs + t % bs;                                       \
            left = bs - t % bs;                                                                 \
        }                                                                                       \
        const bf16* vr = vc + ((int64_t)h * slots + slot) * D;                                  \
        __m512 vv[D / 16];                                                                      \
        for (int i = 0; i < D / 16; i++)                                                        \
            vv[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(                \
                _mm256_loadu_si256((const __m256i*)(vr + 16 * i))), 16));                       \
        for (int g = 0; g < G; g++) {                                                           \
            const __m512 p = _mm512_set1_ps(sc[g * lmax + (t - lo)]);                           \
            for (int i = 0; i < D / 16; i++) acc[g][i] = _mm512_fmadd_ps(p, vv[i], acc[g][i]);  \
        }                                                                                       \
    }                                                                                           \
    for (int g = 0; g < G; g++) {                                                               \
        bf16* o = out + ((int64_t)b * H + h * G + g) * D;                                       \
        for (int i = 0; i < D / 16; i++) {                                                      \
            float f[16];                                                                        \
            _mm512_storeu_ps(f, _mm512_mul_ps(acc[g][i], _mm512_set1_ps(inv[g])));              \
            for (int j = 0; j < 16; j++) o[16 * i + j] = f2bf(f[j]);                            \
        }                                                                                       \
    }                                                                                           \
}
#define FAST_D(G) FAST(G, 64) FAST(G, 128)
FAST_D(1) FAST_D(2) FAST_D(3) FAST_D(4) FAST_D(5) FAST_D(6) FAST_D(7) FAST_D(8)

typedef void (*fast_fn)(const bf16*, const bf16*, const bf16*, const int64_t*, int64_t,
                        const int64_t*, bf16*, int, int, int, int64_t, int64_t, float, float*,
                        int64_t);
static fast_fn fast_for(int G, int D) {
#define PICK(g) if (G == g) return D == 64 ? fast_##g##_64 : D == 128 ? fast_##g##_128 : 0;
    PICK(1) PICK(2) PICK(3) PICK(4) PICK(5) PICK(6) PICK(7) PICK(8)
#undef PICK
    return 0;
}
#endif

/* 1 where decode_attention_bf16 takes the AVX512-BF16 items for these shapes, else 0. */
int bf16_fast_path(int G, int D) {
#ifdef HAVE_BF16_FAST
    return fast_for(G, D) != 0;
#else
    (void)G; (void)D;
    return 0;
#endif
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
DECODE(decode_generic_bf16, bf16)
DECODE(decode_attention_f32, float)

/* use_fast: the AVX512-BF16 items where this CPU and these shapes have them (0: the generic
   items, for the tests to compare both). */
void decode_attention_bf16(const bf16* q, const bf16* kc, const bf16* vc, const int64_t* tables,
        int64_t nb, const int64_t* ranges, bf16* out, int B, int H, int Hkv, int D, int64_t bs,
        int64_t slots, float scale, float* scratch, int64_t lmax, int nthreads, int use_fast) {
#ifdef HAVE_BF16_FAST
    const int G = H / Hkv;
    const fast_fn fast = use_fast ? fast_for(G, D) : 0;
    if (fast) {
        const int64_t per_thread = (int64_t)G * lmax;
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")
        for (int64_t item = 0; item < (int64_t)B * Hkv; item++)
            fast(q, kc, vc, tables, nb, ranges, out, (int)(item / Hkv), (int)(item % Hkv), H, bs,
                 slots, scale, scratch + omp_get_thread_num() * per_thread, lmax);
        return;
    }
#endif
    (void)use_fast;
    decode_generic_bf16(q, kc, vc, tables, nb, ranges, out, B, H, Hkv, D, bs, slots, scale,
                        scratch, lmax, nthreads);
}
"""

_FUNCS = {torch.bfloat16: "decode_attention_bf16", torch.float32: "decode_attention_f32"}
_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_ARGTYPES = [_P, _P, _P, _P, _I64, _P, _P, _I, _I, _I, _I, _I64, _I64, ctypes.c_float, _P, _I64,
             _I]
_FUNC_ARGS = {"decode_attention_f32": _ARGTYPES, "decode_attention_bf16": [*_ARGTYPES, _I],
              "bf16_fast_path": [_I, _I]}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel (built once per process); None where no compiler works."""
    return cpu_build.build("decode_attention", _SRC, _FUNC_ARGS)


def has_bf16_fast_path(heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether bf16 decode attention of these shapes takes the AVX512-BF16 items here."""
    lib = _library()
    if lib is None or heads % kv_heads:
        return False
    lib.bf16_fast_path.restype = ctypes.c_int
    return bool(lib.bf16_fast_path(heads // kv_heads, head_dim))


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """CPU tensors of a dtype the kernel has, contiguous caches, and a compiler."""
    return (q.device.type == "cpu" and q.dtype in _FUNCS and k_cache.dtype == q.dtype
            and k_cache.is_contiguous() and _library() is not None)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, block_size: int,
                     key_ranges: torch.Tensor, scale: float | None = None,
                     fast: bool = True) -> torch.Tensor:
    """Attention of one query per sequence over its cached keys. Returns [B, H*D].
    scale: of q·k (default D^-0.5; Gemma's query_pre_attn_scalar^-0.5).

    q: [B, H, D]; k_cache, v_cache: [Hkv, slots, D] contiguous; block_tables: [B, nb] int64;
    key_ranges: [B, 2] int64, the keys [lo, hi) each sequence attends to (hi > lo).
    fast: bf16 may take the AVX512-BF16 items (False: the generic ones, their oracle).
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
    args = [q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
            tables.shape[1], ranges.data_ptr(), out.data_ptr(), bsz, heads, hkv, d, block_size,
            slots, d**-0.5 if scale is None else scale, scratch.data_ptr(), lmax, threads]
    if q.dtype == torch.bfloat16:
        args.append(int(fast))
    getattr(_library(), _FUNCS[q.dtype])(*args)
    return out
