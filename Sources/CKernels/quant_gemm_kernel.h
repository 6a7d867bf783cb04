// The micro-kernel of the many-row int8 product (quant_gemm.c), written once and included
// there once per x86 instruction set, with:
//
//   GEMM_NAME(f)       the function names' suffix for the set (f##_avx2, ...)
//   GEMM_TARGET        its target attribute ("avx2,fma,f16c", ...)
//   GEMM_MR            rows of x per micro-kernel call (as many as its registers hold)
//   GEMM_VNNI          1: GEMM_DPBUSD(acc, u, x) (vpdpbusd) adds 4 products u·x per int32
//                      lane (u unsigned, x signed bytes); 0: AVX2's vpmaddubsw + vpmaddwd
//
// No include guard: including it again with other definitions makes another instruction set's
// kernel. Buffer shapes are those of quant_gemm.c ("Panels").

// y[i][j] (i < mr, j < ncols) for `mr` rows of x against one panel (16 rows of W), one
// block of 32 inputs at a time: an int32 dot per (row of x, row of W) lane, started at the
// row's offset correction, then scaled by (W scale · x scale) into a float accumulator.
//   panel  [blocks][8][16][4] codes     pscale [blocks][16]
//   xq     [mr][blocks*32]              xs, xcorr [mr][blocks]
//   y      [mr][ldy]
static inline __attribute__((target(GEMM_TARGET), always_inline)) void GEMM_NAME(tile)(
    const uint8_t *panel, const float *pscale, const int8_t *xq, const float *xs, const int32_t *xcorr,
    size_t blocks, const int mr, const int signedCodes, const int steps16, float *y, size_t ldy, int ncols) {
    const size_t ldq = blocks * 32;
    (void)steps16;
    __m256 acc[GEMM_MR][2];   // [row of x][W rows 0-7, 8-15]
    for (int i = 0; i < mr; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (size_t k = 0; k < blocks; k++) {
        const uint8_t *pk = panel + k * 512;
        __m256i d[GEMM_MR][2];   // the block's int32 dots, started at x's offset correction
#if GEMM_VNNI
        for (int i = 0; i < mr; i++) d[i][0] = d[i][1] = _mm256_set1_epi32(xcorr[i * blocks + k]);
        // One dot instruction per step adds 4 products into each int32 lane.
        for (int s = 0; s < 8; s++) {
            // Inputs 32k + 4s .. +3 of W rows 0-7 (w0) and 8-15 (w1), 4 bytes per row.
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(pk + 64 * s));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(pk + 64 * s + 32));
            const __m256i a0 = signedCodes ? _mm256_abs_epi8(w0) : w0;
            const __m256i a1 = signedCodes ? _mm256_abs_epi8(w1) : w1;
            for (int i = 0; i < mr; i++) {
                int32_t x4;   // the same 4 inputs of row i of x, in every lane
                memcpy(&x4, xq + i * ldq + 32 * k + 4 * s, 4);
                const __m256i xb = _mm256_set1_epi32(x4);
                d[i][0] = GEMM_DPBUSD(d[i][0], a0, signedCodes ? _mm256_sign_epi8(xb, w0) : xb);
                d[i][1] = GEMM_DPBUSD(d[i][1], a1, signedCodes ? _mm256_sign_epi8(xb, w1) : xb);
            }
        }
#else
        // vpmaddubsw adds pairs of products into int16 lanes; `steps16` steps are summed there
        // before vpmaddwd widens them to int32 (the sums stay below 32767, see quant_gemm.c).
        for (int s0 = 0; s0 < 8; s0 += steps16) {
            __m256i h[GEMM_MR][2];
            for (int i = 0; i < mr; i++) h[i][0] = h[i][1] = _mm256_setzero_si256();
            // Not unrolled: unrolled, the compiler loads all of the block's codes at once and
            // spills them (the code then ran slower).
#pragma clang loop unroll(disable)
            for (int s = s0; s < s0 + steps16; s++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(pk + 64 * s));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(pk + 64 * s + 32));
                const __m256i a0 = signedCodes ? _mm256_abs_epi8(w0) : w0;
                const __m256i a1 = signedCodes ? _mm256_abs_epi8(w1) : w1;
                for (int i = 0; i < mr; i++) {
                    int32_t x4;
                    memcpy(&x4, xq + i * ldq + 32 * k + 4 * s, 4);
                    const __m256i xb = _mm256_set1_epi32(x4);
                    h[i][0] = _mm256_add_epi16(h[i][0], _mm256_maddubs_epi16(a0, signedCodes ? _mm256_sign_epi8(xb, w0) : xb));
                    h[i][1] = _mm256_add_epi16(h[i][1], _mm256_maddubs_epi16(a1, signedCodes ? _mm256_sign_epi8(xb, w1) : xb));
                }
            }
            const __m256i ones = _mm256_set1_epi16(1);
            for (int i = 0; i < mr; i++) {
                const __m256i e0 = _mm256_madd_epi16(h[i][0], ones), e1 = _mm256_madd_epi16(h[i][1], ones);
                if (s0 == 0) {   // (d is only live from here: fewer registers at 4 bits and below)
                    const __m256i c = _mm256_set1_epi32(xcorr[i * blocks + k]);
                    d[i][0] = _mm256_add_epi32(c, e0);
                    d[i][1] = _mm256_add_epi32(c, e1);
                } else {
                    d[i][0] = _mm256_add_epi32(d[i][0], e0);
                    d[i][1] = _mm256_add_epi32(d[i][1], e1);
                }
            }
        }
#endif
        const __m256 s0 = _mm256_loadu_ps(pscale + 16 * k), s1 = _mm256_loadu_ps(pscale + 16 * k + 8);
        for (int i = 0; i < mr; i++) {
            const __m256 xsb = _mm256_set1_ps(xs[i * blocks + k]);
            acc[i][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[i][0]), _mm256_mul_ps(s0, xsb), acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[i][1]), _mm256_mul_ps(s1, xsb), acc[i][1]);
        }
    }
    for (int i = 0; i < mr; i++) {
        float *yi = y + (size_t)i * ldy;
        if (ncols == 16) {
            _mm256_storeu_ps(yi, acc[i][0]);
            _mm256_storeu_ps(yi + 8, acc[i][1]);
        } else {   // the last panel of W: only its real rows
            float t[16];
            _mm256_storeu_ps(t, acc[i][0]);
            _mm256_storeu_ps(t + 8, acc[i][1]);
            memcpy(yi, t, (size_t)ncols * sizeof(float));
        }
    }
}

// All `rows` rows of x (a chunk) against one panel: GEMM_MR rows per call, then one at a time.
// S16 is the number of vpmaddubsw steps the AVX2 form sums in int16 (8, 4, 2 or 1).
#define GEMM_ROWS(SIGNED, S16)                                                                              \
    do {                                                                                                    \
        for (; i + GEMM_MR <= rows; i += GEMM_MR)                                                           \
            GEMM_NAME(tile)(panel, pscale, xq + i * ldq, xs + i * blocks, xcorr + i * blocks, blocks, GEMM_MR, \
                            SIGNED, S16, y + i * ldy, ldy, ncols);                                          \
        for (; i < rows; i++)                                                                               \
            GEMM_NAME(tile)(panel, pscale, xq + i * ldq, xs + i * blocks, xcorr + i * blocks, blocks, 1,       \
                            SIGNED, S16, y + i * ldy, ldy, ncols);                                          \
    } while (0)

__attribute__((target(GEMM_TARGET))) static void GEMM_NAME(panel_rows)(
    const uint8_t *panel, const float *pscale, const int8_t *xq, const float *xs, const int32_t *xcorr,
    size_t blocks, size_t rows, int bits, float *y, size_t ldy, int ncols) {
    const size_t ldq = blocks * 32;
    size_t i = 0;
#if GEMM_VNNI
    if (bits == 8) GEMM_ROWS(1, 1); else GEMM_ROWS(0, 1);
#else
    switch (bits) {
    case 2: case 3: case 4: GEMM_ROWS(0, 8); break;   // u <= 15: 8 steps · 2·15·127 = 30480
    case 5: GEMM_ROWS(0, 4); break;                   // u <= 31: 4 steps · 2·31·127 = 31496
    case 6: GEMM_ROWS(0, 2); break;                   // u <= 63: 2 steps · 2·63·127 = 32004
    default: GEMM_ROWS(1, 1); break;                  // |q| <= 128: 1 step · 2·128·127 = 32512
    }
#endif
}

#undef GEMM_ROWS
