// y[m, n] = alpha · x[m, k] · w[n, k]ᵀ for few rows m (the decoder: one row per beam).
//
// OpenBLAS's sgemm packs all of w before multiplying, which for the 51864 x 384 output
// projection copies 80 MB per decoding step; sgemv reads w once per row of x. This kernel
// reads w from memory once, whatever the number of x rows (measured with perf on beam-5
// decoding before writing it: sgemm packing was 30% of time).
// On x86-64 with AVX2+FMA it takes eight rows of w at a time, kept in cache while every x
// row passes them, with one 8-lane accumulator per w row, and sums the eight accumulators
// together (`hsum8x8`), so each x row costs one
// horizontal reduction per eight outputs instead of one per output: the decoder's
// cross-attention scores (24 heads of 1500 keys x 64 features per step, one thread) went
// from 429 to 150-200 us a step on keys in cache, and from 438 to 382 us on a real step's
// 9 MB of keys, where memory is the limit.
// Elsewhere a portable loop.
//
// The same product with w in half precision (`mq_gemm_nt_small_h`), and a product with a
// half-precision right-hand side not transposed (`mq_gemm_nn_small_h`), serve the decoder's
// cross-attention over a model's silent window, kept in half precision (SilentWindow.swift),
// as whisper.cpp keeps its cross-attention keys and values; the int8 forms (`mq_gemm_nt_small_q8`,
// `mq_gemm_nn_small_q8`, one scale per row of 64 features) serve it once it is stored in int8.
#include <math.h>
#include <stdatomic.h>
#include "ckernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define MAX_ROWS 8
#define MQ_INLINE static inline __attribute__((always_inline))

// Whether the CPU has AVX2, FMA and F16C. -1: not asked yet. Threads may race to fill it with the
// same value: an atomic, so that is defined.
#if defined(__x86_64__)
static int has_avx2(void) {
    static _Atomic int known = -1;
    int avx2 = atomic_load_explicit(&known, memory_order_relaxed);
    if (avx2 < 0) {
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        atomic_store_explicit(&known, avx2, memory_order_relaxed);
    }
    return avx2;
}
#endif

// IF_AVX2(call): `call`, then return, when the CPU has AVX2, FMA and F16C (x86-64 only).
#if defined(__x86_64__)
#define IF_AVX2(call) \
    if (has_avx2()) { \
        call;         \
        return;       \
    }
#else
#define IF_AVX2(call)
#endif

// One kernel family per element type of w, with its public entry point NAME: float32 (`f32`,
// mq_gemm_nt_small) and float16 (`f16`, mq_gemm_nt_small_h). WTYPE is the C type of w's elements,
// PTYPE the one the entry point takes; LOAD8 loads eight of them widened to float32 (x86-64 only).
#if defined(__x86_64__)
#define LOAD8_f32(p) _mm256_loadu_ps(p)
#define LOAD8_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define LOAD8_q8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#endif

// The eight sums of eight 8-lane accumulators, in one vector: [Σa0, Σa1, …, Σa7].
#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) MQ_INLINE __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                                             __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    // Per 128-bit half: pairs, then quads; the halves then hold the low and high four lanes' sums.
    __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}
#endif

#define DEFINE_GEMM_NT(T, WTYPE, NAME, PTYPE)                                                                 \
    /* Portable: dot products of one row of w with `rows` rows of x. */                                      \
    MQ_INLINE void dot_rows_portable_##T(const WTYPE *w, const float *x, size_t k, size_t ldx, int rows,     \
                                         float out[MAX_ROWS]) {                                             \
        for (int r = 0; r < rows; r++) {                                                                     \
            const float *xr = x + (size_t)r * ldx;                                                           \
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                            \
            size_t t = 0;                                                                                    \
            for (; t + 4 <= k; t += 4) {                                                                     \
                s0 += (float)w[t] * xr[t];                                                                   \
                s1 += (float)w[t + 1] * xr[t + 1];                                                           \
                s2 += (float)w[t + 2] * xr[t + 2];                                                           \
                s3 += (float)w[t + 3] * xr[t + 3];                                                           \
            }                                                                                                \
            for (; t < k; t++) s0 += (float)w[t] * xr[t];                                                    \
            out[r] = (s0 + s1) + (s2 + s3);                                                                  \
        }                                                                                                    \
    }                                                                                                        \
                                                                                                             \
    static void gemm_portable_##T(const float *x, size_t m, size_t ldx, const WTYPE *w, size_t n, size_t ldw, \
                                  size_t k, float alpha, float *y, size_t ldy) {                             \
        for (size_t r0 = 0; r0 < m; r0 += MAX_ROWS) {                                                        \
            int rows = (int)(m - r0 < MAX_ROWS ? m - r0 : MAX_ROWS);                                         \
            for (size_t j = 0; j < n; j++) {                                                                 \
                float out[MAX_ROWS];                                                                         \
                dot_rows_portable_##T(w + j * ldw, x + r0 * ldx, k, ldx, rows, out);                         \
                for (int r = 0; r < rows; r++) y[(r0 + (size_t)r) * ldy + j] = alpha * out[r];               \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    DEFINE_GEMM_NT_AVX2(T, WTYPE)                                                                            \
                                                                                                             \
    void NAME(const float *x, size_t m, size_t ldx, const PTYPE *w, size_t n, size_t ldw, size_t k,           \
              float alpha, float *y, size_t ldy) {                                                           \
        const WTYPE *wt = (const WTYPE *)w;                                                                  \
        IF_AVX2(gemm_avx2_##T(x, m, ldx, wt, n, ldw, k, alpha, y, ldy))                                      \
        gemm_portable_##T(x, m, ldx, wt, n, ldw, k, alpha, y, ldy);                                          \
    }

#if defined(__x86_64__)
#define DEFINE_GEMM_NT_AVX2(T, WTYPE)                                                                         \
    /* y[j..j+8) of one x row: dot products with eight rows of w starting at w0. */                          \
    __attribute__((target("avx2,fma,f16c"))) MQ_INLINE void dot8_avx2_##T(const WTYPE *w0, size_t ldw,       \
                                                                          const float *xr, size_t k,         \
                                                                          float alpha, float *y) {           \
        size_t k8 = k & ~(size_t)7;                                                                          \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;      \
        for (size_t t = 0; t < k8; t += 8) {                                                                 \
            __m256 q = _mm256_loadu_ps(xr + t);                                                              \
            a0 = _mm256_fmadd_ps(LOAD8_##T(w0 + t), q, a0);                                                  \
            a1 = _mm256_fmadd_ps(LOAD8_##T(w0 + ldw + t), q, a1);                                            \
            a2 = _mm256_fmadd_ps(LOAD8_##T(w0 + 2 * ldw + t), q, a2);                                        \
            a3 = _mm256_fmadd_ps(LOAD8_##T(w0 + 3 * ldw + t), q, a3);                                        \
            a4 = _mm256_fmadd_ps(LOAD8_##T(w0 + 4 * ldw + t), q, a4);                                        \
            a5 = _mm256_fmadd_ps(LOAD8_##T(w0 + 5 * ldw + t), q, a5);                                        \
            a6 = _mm256_fmadd_ps(LOAD8_##T(w0 + 6 * ldw + t), q, a6);                                        \
            a7 = _mm256_fmadd_ps(LOAD8_##T(w0 + 7 * ldw + t), q, a7);                                        \
        }                                                                                                    \
        __m256 s = hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7);                                                  \
        if (k8 < k) {                                                                                        \
            float tail[8];                                                                                   \
            for (int u = 0; u < 8; u++) {                                                                    \
                float e = 0;                                                                                 \
                for (size_t t = k8; t < k; t++) e += (float)w0[(size_t)u * ldw + t] * xr[t];                 \
                tail[u] = e;                                                                                 \
            }                                                                                                \
            s = _mm256_add_ps(s, _mm256_loadu_ps(tail));                                                     \
        }                                                                                                    \
        _mm256_storeu_ps(y, _mm256_mul_ps(s, _mm256_set1_ps(alpha)));                                        \
    }                                                                                                        \
                                                                                                             \
    __attribute__((target("avx2,fma,f16c"))) static void gemm_avx2_##T(                                      \
        const float *x, size_t m, size_t ldx, const WTYPE *w, size_t n, size_t ldw, size_t k, float alpha,   \
        float *y, size_t ldy) {                                                                              \
        size_t j = 0;                                                                                        \
        /* Eight rows of w (8 k values) stay in cache while every x row passes them. */                      \
        for (; j + 8 <= n; j += 8) {                                                                         \
            for (size_t r = 0; r < m; r++) dot8_avx2_##T(w + j * ldw, ldw, x + r * ldx, k, alpha, y + r * ldy + j); \
        }                                                                                                    \
        for (; j < n; j++) {                                                                                 \
            for (size_t r = 0; r < m; r += MAX_ROWS) {                                                       \
                int rows = (int)(m - r < MAX_ROWS ? m - r : MAX_ROWS);                                       \
                float out[MAX_ROWS];                                                                         \
                dot_rows_portable_##T(w + j * ldw, x + r * ldx, k, ldx, rows, out);                          \
                for (int i = 0; i < rows; i++) y[(r + (size_t)i) * ldy + j] = alpha * out[i];                \
            }                                                                                                \
        }                                                                                                    \
    }
#else
#define DEFINE_GEMM_NT_AVX2(T, WTYPE)
#endif

DEFINE_GEMM_NT(f32, float, mq_gemm_nt_small, float)
DEFINE_GEMM_NT(f16, _Float16, mq_gemm_nt_small_h, unsigned short)
// The int8 form's products of codes, before each column takes its row's scale (mq_gemm_nt_small_q8).
DEFINE_GEMM_NT(q8, signed char, mq_gemm_nt_small_q8_codes, signed char)

void mq_gemm_nt_small_q8(const float *x, size_t m, size_t ldx, const signed char *w, const float *wscale, size_t n,
                         size_t ldw, size_t k, float alpha, float *y, size_t ldy) {
    mq_gemm_nt_small_q8_codes(x, m, ldx, w, n, ldw, k, alpha, y, ldy);
    for (size_t r = 0; r < m; r++) {
        for (size_t j = 0; j < n; j++) y[r * ldy + j] *= wscale[j];
    }
}

// y[m, n] += x[m, k] · v[k, n] for few rows m and narrow n (a head's 64 features), one kernel pair per
// element type of v: half precision (`f16`, mq_gemm_nn_small_h) and int8 codes with one scale per row of
// v (`q8`, mq_gemm_nn_small_q8, each x coefficient multiplied by its row's scale: COEF_##T).
#define COEF_f16(a, scale, t) (a)
#define COEF_q8(a, scale, t) ((a) * (scale)[t])
#define DEFINE_GEMM_NN(T, VTYPE)                                                                             \
    static void gemm_nn_portable_##T(const float *x, size_t m, size_t ldx, const VTYPE *v, const float *vscale, \
                                     size_t k, size_t n, size_t ldv, float *y, size_t ldy) {                 \
        (void)vscale;                                                                                        \
        for (size_t r = 0; r < m; r++) {                                                                     \
            float *yr = y + r * ldy;                                                                         \
            for (size_t t = 0; t < k; t++) {                                                                 \
                float a = COEF_##T(x[r * ldx + t], vscale, t);                                               \
                const VTYPE *vt = v + t * ldv;                                                               \
                for (size_t j = 0; j < n; j++) yr[j] += a * (float)vt[j];                                    \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    DEFINE_GEMM_NN_AVX2(T, VTYPE)

#if defined(__x86_64__)
// Eight columns of y at a time for up to MAX_ROWS rows, one accumulator per row, while the k rows
// of v pass once; v's eight-column slices are widened as they are read.
#define DEFINE_GEMM_NN_AVX2(T, VTYPE)                                                                        \
    __attribute__((target("avx2,fma,f16c"))) static void gemm_nn_avx2_##T(                                   \
        const float *x, size_t m, size_t ldx, const VTYPE *v, const float *vscale, size_t k, size_t n,       \
        size_t ldv, float *y, size_t ldy) {                                                                  \
        (void)vscale;                                                                                        \
        size_t n8 = n & ~(size_t)7;                                                                          \
        for (size_t r0 = 0; r0 < m; r0 += MAX_ROWS) {                                                        \
            int rows = (int)(m - r0 < MAX_ROWS ? m - r0 : MAX_ROWS);                                         \
            const float *xb = x + r0 * ldx;                                                                  \
            float *yb = y + r0 * ldy;                                                                        \
            for (size_t c = 0; c < n8; c += 8) {                                                             \
                __m256 acc[MAX_ROWS];                                                                        \
                for (int r = 0; r < rows; r++) acc[r] = _mm256_loadu_ps(yb + (size_t)r * ldy + c);          \
                for (size_t t = 0; t < k; t++) {                                                             \
                    __m256 vt = LOAD8_##T(v + t * ldv + c);                                                  \
                    for (int r = 0; r < rows; r++) {                                                         \
                        __m256 a = _mm256_set1_ps(COEF_##T(xb[(size_t)r * ldx + t], vscale, t));             \
                        acc[r] = _mm256_fmadd_ps(a, vt, acc[r]);                                             \
                    }                                                                                        \
                }                                                                                            \
                for (int r = 0; r < rows; r++) _mm256_storeu_ps(yb + (size_t)r * ldy + c, acc[r]);           \
            }                                                                                                \
            if (n8 < n) {                                                                                    \
                for (int r = 0; r < rows; r++) {                                                             \
                    for (size_t t = 0; t < k; t++) {                                                         \
                        float a = COEF_##T(xb[(size_t)r * ldx + t], vscale, t);                              \
                        for (size_t j = n8; j < n; j++) yb[(size_t)r * ldy + j] += a * (float)v[t * ldv + j]; \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }
#else
#define DEFINE_GEMM_NN_AVX2(T, VTYPE)
#endif

DEFINE_GEMM_NN(f16, _Float16)
DEFINE_GEMM_NN(q8, signed char)

void mq_gemm_nn_small_h(const float *x, size_t m, size_t ldx, const unsigned short *v, size_t k, size_t n,
                        size_t ldv, float *y, size_t ldy) {
    const _Float16 *vh = (const _Float16 *)v;
    IF_AVX2(gemm_nn_avx2_f16(x, m, ldx, vh, NULL, k, n, ldv, y, ldy))
    gemm_nn_portable_f16(x, m, ldx, vh, NULL, k, n, ldv, y, ldy);
}

void mq_gemm_nn_small_q8(const float *x, size_t m, size_t ldx, const signed char *v, const float *vscale, size_t k,
                         size_t n, size_t ldv, float *y, size_t ldy) {
    IF_AVX2(gemm_nn_avx2_q8(x, m, ldx, v, vscale, k, n, ldv, y, ldy))
    gemm_nn_portable_q8(x, m, ldx, v, vscale, k, n, ldv, y, ldy);
}

void mq_quantize_rows_q8(const float *x, size_t rows, size_t width, signed char *codes, float *scales) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * width;
        float largest = 0;
        for (size_t t = 0; t < width; t++) largest = fabsf(xr[t]) > largest ? fabsf(xr[t]) : largest;
        float scale = largest / 127, inverse = largest > 0 ? 127 / largest : 0;
        for (size_t t = 0; t < width; t++) codes[r * width + t] = (signed char)lrintf(xr[t] * inverse);
        scales[r] = scale;
    }
}
