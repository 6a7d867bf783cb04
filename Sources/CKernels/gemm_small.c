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
#include <stdatomic.h>
#include "ckernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define MAX_ROWS 8
#define MQ_INLINE static inline __attribute__((always_inline))

// Portable: dot products of one row of w with `rows` rows of x.
MQ_INLINE void dot_rows_portable(const float *w, const float *x, size_t k, size_t ldx, int rows,
                                 float out[MAX_ROWS]) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t t = 0;
        for (; t + 4 <= k; t += 4) {
            s0 += w[t] * xr[t];
            s1 += w[t + 1] * xr[t + 1];
            s2 += w[t + 2] * xr[t + 2];
            s3 += w[t + 3] * xr[t + 3];
        }
        for (; t < k; t++) s0 += w[t] * xr[t];
        out[r] = (s0 + s1) + (s2 + s3);
    }
}

static void gemm_portable(const float *x, size_t m, size_t ldx, const float *w, size_t n, size_t ldw,
                          size_t k, float alpha, float *y, size_t ldy) {
    for (size_t r0 = 0; r0 < m; r0 += MAX_ROWS) {
        int rows = (int)(m - r0 < MAX_ROWS ? m - r0 : MAX_ROWS);
        for (size_t j = 0; j < n; j++) {
            float out[MAX_ROWS];
            dot_rows_portable(w + j * ldw, x + r0 * ldx, k, ldx, rows, out);
            for (int r = 0; r < rows; r++) y[(r0 + (size_t)r) * ldy + j] = alpha * out[r];
        }
    }
}

#if defined(__x86_64__)
// The eight sums of eight 8-lane accumulators, in one vector: [Σa0, Σa1, …, Σa7].
__attribute__((target("avx2,fma"))) MQ_INLINE __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                                             __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    // Per 128-bit half: pairs, then quads; the halves then hold the low and high four lanes' sums.
    __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// y[j..j+8) of one x row: dot products with eight rows of w starting at w0.
__attribute__((target("avx2,fma"))) MQ_INLINE void dot8_avx2(const float *w0, size_t ldw, const float *xr, size_t k,
                                                             float alpha, float *y) {
    size_t k8 = k & ~(size_t)7;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t t = 0; t < k8; t += 8) {
        __m256 q = _mm256_loadu_ps(xr + t);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + t), q, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + ldw + t), q, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 2 * ldw + t), q, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 3 * ldw + t), q, a3);
        a4 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 4 * ldw + t), q, a4);
        a5 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 5 * ldw + t), q, a5);
        a6 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 6 * ldw + t), q, a6);
        a7 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + 7 * ldw + t), q, a7);
    }
    __m256 s = hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7);
    if (k8 < k) {
        float tail[8];
        for (int u = 0; u < 8; u++) {
            float e = 0;
            for (size_t t = k8; t < k; t++) e += w0[(size_t)u * ldw + t] * xr[t];
            tail[u] = e;
        }
        s = _mm256_add_ps(s, _mm256_loadu_ps(tail));
    }
    _mm256_storeu_ps(y, _mm256_mul_ps(s, _mm256_set1_ps(alpha)));
}

__attribute__((target("avx2,fma"))) static void gemm_avx2(const float *x, size_t m, size_t ldx, const float *w,
                                                          size_t n, size_t ldw, size_t k, float alpha, float *y,
                                                          size_t ldy) {
    size_t j = 0;
    // Eight rows of w (8 k floats) stay in cache while every x row passes them.
    for (; j + 8 <= n; j += 8) {
        for (size_t r = 0; r < m; r++) dot8_avx2(w + j * ldw, ldw, x + r * ldx, k, alpha, y + r * ldy + j);
    }
    for (; j < n; j++) {
        for (size_t r = 0; r < m; r += MAX_ROWS) {
            int rows = (int)(m - r < MAX_ROWS ? m - r : MAX_ROWS);
            float out[MAX_ROWS];
            dot_rows_portable(w + j * ldw, x + r * ldx, k, ldx, rows, out);
            for (int i = 0; i < rows; i++) y[(r + (size_t)i) * ldy + j] = alpha * out[i];
        }
    }
}
#endif

void mq_gemm_nt_small(const float *x, size_t m, size_t ldx, const float *w, size_t n, size_t ldw,
                      size_t k, float alpha, float *y, size_t ldy) {
#if defined(__x86_64__)
    // -1: not asked yet. Threads may race to fill it with the same value: an atomic, so that is defined.
    static _Atomic int hasAVX2 = -1;
    int avx2 = atomic_load_explicit(&hasAVX2, memory_order_relaxed);
    if (avx2 < 0) {
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        atomic_store_explicit(&hasAVX2, avx2, memory_order_relaxed);
    }
    if (avx2) {
        gemm_avx2(x, m, ldx, w, n, ldw, k, alpha, y, ldy);
        return;
    }
#endif
    gemm_portable(x, m, ldx, w, n, ldw, k, alpha, y, ldy);
}
