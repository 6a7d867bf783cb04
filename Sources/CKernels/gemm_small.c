// y[m, n] = alpha · x[m, k] · w[n, k]ᵀ for few rows m (the decoder: one row per beam).
//
// OpenBLAS's sgemm packs all of w before multiplying, which for the 51864 x 384 output
// projection copies 80 MB per decoding step; sgemv reads w once per row of x. This kernel
// reads each row of w once and multiplies it with up to eight rows of x held in cache
// (measured with perf on beam-5 decoding before writing it: sgemm packing was 30% of time).
// On x86-64 with AVX2+FMA it uses one 8-lane accumulator register per row of x; elsewhere
// a portable loop.
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
__attribute__((target("avx2,fma"))) MQ_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// ROWS is a compile-time constant at every call, so acc[] lives in registers.
__attribute__((target("avx2,fma"))) MQ_INLINE void dot_rows_avx2(const float *w, const float *x, size_t k,
                                                                   size_t ldx, const int rows, float out[MAX_ROWS]) {
    __m256 acc[MAX_ROWS];
    for (int r = 0; r < rows; r++) acc[r] = _mm256_setzero_ps();
    size_t t = 0;
    for (; t + 8 <= k; t += 8) {
        __m256 wv = _mm256_loadu_ps(w + t);
        for (int r = 0; r < rows; r++) acc[r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)r * ldx + t), acc[r]);
    }
    for (int r = 0; r < rows; r++) {
        float s = hsum256(acc[r]);
        for (size_t u = t; u < k; u++) s += w[u] * x[(size_t)r * ldx + u];
        out[r] = s;
    }
}

__attribute__((target("avx2,fma"))) static void gemm_avx2(const float *x, size_t m, size_t ldx, const float *w,
                                                          size_t n, size_t ldw, size_t k, float alpha, float *y,
                                                          size_t ldy) {
    for (size_t r0 = 0; r0 < m; r0 += MAX_ROWS) {
        int rows = (int)(m - r0 < MAX_ROWS ? m - r0 : MAX_ROWS);
        const float *xb = x + r0 * ldx;
        for (size_t j = 0; j < n; j++) {
            float out[MAX_ROWS];
            const float *wj = w + j * ldw;
            switch (rows) {
            case 8: dot_rows_avx2(wj, xb, k, ldx, 8, out); break;
            case 7: dot_rows_avx2(wj, xb, k, ldx, 7, out); break;
            case 6: dot_rows_avx2(wj, xb, k, ldx, 6, out); break;
            case 5: dot_rows_avx2(wj, xb, k, ldx, 5, out); break;
            case 4: dot_rows_avx2(wj, xb, k, ldx, 4, out); break;
            case 3: dot_rows_avx2(wj, xb, k, ldx, 3, out); break;
            case 2: dot_rows_avx2(wj, xb, k, ldx, 2, out); break;
            default: dot_rows_avx2(wj, xb, k, ldx, 1, out); break;
            }
            for (int r = 0; r < rows; r++) y[(r0 + (size_t)r) * ldy + j] = alpha * out[r];
        }
    }
}
#endif

void mq_gemm_nt_small(const float *x, size_t m, size_t ldx, const float *w, size_t n, size_t ldw,
                      size_t k, float alpha, float *y, size_t ldy) {
#if defined(__x86_64__)
    static int hasAVX2 = -1;
    if (hasAVX2 < 0) hasAVX2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (hasAVX2) {
        gemm_avx2(x, m, ldx, w, n, ldw, k, alpha, y, ldy);
        return;
    }
#endif
    gemm_portable(x, m, ldx, w, n, ldw, k, alpha, y, ldy);
}
