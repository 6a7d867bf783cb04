// Packed low-bit weight kernels: see include/quant.h for the packed layout and
// docs/quantized-model-format.md for the reasoning behind it.
//
// Every kernel has a portable scalar form. On x86-64 the products have AVX2,
// AVX-VNNI and AVX512-VNNI(VL) forms selected once at run time with
// __builtin_cpu_supports; they are compiled with per-function target attributes, so the
// package itself still builds for any x86-64.
//
// The int8 product: W codes q (signed, -128 <= q <= 127) and activations xq (int8,
// |xq| <= 127, per block of 32 with a float scale) give per block an exact int32 dot
// Σ q·xq, computed as Σ |q| · (xq · sign q) so that the unsigned x signed byte
// instructions (vpmaddubsw, vpdpbusd) apply: |q| <= 128 is read as an unsigned byte
// (vpabsb of -128 is 0x80 = 128), and the 16-bit pair sums of vpmaddubsw cannot
// saturate (2·128·127 = 32512 < 32767). Each block's int32 dot is scaled by
// scale[group] · xscale[block] and accumulated in float.
#include "quant_blocks.h"

#include <math.h>
#include <string.h>

#include <stdatomic.h>
#include "clones.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// MARK: - Half floats

static inline uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return sign | (ax > 0x7F800000u ? 0x7E00 : 0x7C00);   // NaN / inf
    if (ax >= 0x477FF000u) return sign | 0x7C00;                                  // overflow
    if (ax < 0x38800000u) {                                                       // subnormal / zero
        if (ax < 0x33000000u) return sign;                                        // below half of min subnormal
        uint32_t e = ax >> 23, man = (ax & 0x7FFFFF) | 0x800000;
        uint32_t shift = 126 - e;                                                 // 14..24
        uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t rounded = ax + 0xFFF + ((ax >> 13) & 1);                              // round to nearest even
    return sign | (uint16_t)((rounded - 0x38000000u) >> 13);
}

void mq_f32_to_f16(const float *src, uint16_t *dst, size_t count) {
    for (size_t i = 0; i < count; i++) dst[i] = float_to_half(src[i]);
}

// MARK: - Packing (scalar, any CPU)

// u[32] (unsigned codes) -> planes at out.
static void pack_block(const uint8_t *u, int bits, uint8_t *out) {
    uint8_t lo[32], hi[32];
    switch (bits) {
    case 2: case 3:
        for (int i = 0; i < 32; i++) { lo[i] = u[i] & 3; hi[i] = u[i] >> 2; }
        for (int j = 0; j < 8; j++)
            out[j] = (uint8_t)(lo[j] | lo[j + 8] << 2 | lo[j + 16] << 4 | lo[j + 24] << 6);
        if (bits == 3) {
            memset(out + 8, 0, 4);
            for (int i = 0; i < 32; i++) out[8 + (i >> 3)] |= (uint8_t)((hi[i] & 1) << (i & 7));
        }
        break;
    case 4: case 5: case 6:
        for (int i = 0; i < 32; i++) { lo[i] = u[i] & 15; hi[i] = u[i] >> 4; }
        for (int j = 0; j < 16; j++) out[j] = (uint8_t)(lo[j] | lo[j + 16] << 4);
        if (bits == 5) {
            memset(out + 16, 0, 4);
            for (int i = 0; i < 32; i++) out[16 + (i >> 3)] |= (uint8_t)((hi[i] & 1) << (i & 7));
        } else if (bits == 6) {
            for (int j = 0; j < 8; j++)
                out[16 + j] = (uint8_t)((hi[j] & 3) | (hi[j + 8] & 3) << 2 | (hi[j + 16] & 3) << 4 | (hi[j + 24] & 3) << 6);
        }
        break;
    default:
        memcpy(out, u, 32);
    }
}

void mq_pack_codes(const int8_t *codes, size_t rows, size_t blocks, int bits, uint8_t *out) {
    const int off = 1 << (bits - 1);
    const size_t bb = block_bytes(bits);
    for (size_t r = 0; r < rows; r++) {
        for (size_t k = 0; k < blocks; k++) {
            const int8_t *c = codes + (r * blocks + k) * 32;
            uint8_t u[32];
            for (int i = 0; i < 32; i++) u[i] = (uint8_t)(c[i] + off);
            pack_block(u, bits, out + (r * blocks + k) * bb);
        }
    }
}

void mq_unpack_codes(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd, int8_t *codes) {
    const size_t bb = block_bytes(m->bits);
    for (size_t r = rowStart; r < rowEnd; r++)
        for (size_t k = 0; k < m->blocks; k++)
            unpack_block(m->packed + (r * m->blocks + k) * bb, m->bits,
                         codes + ((r - rowStart) * m->blocks + k) * 32);
}

static void dequantize_rows_scalar(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd,
                                   size_t cols, float *out, size_t ldo) {
    const size_t bb = block_bytes(m->bits), groups = m->blocks / m->blocksPerGroup;
    int8_t q[32];
    for (size_t r = rowStart; r < rowEnd; r++) {
        float *o = out + (r - rowStart) * ldo;
        for (size_t k = 0; k < m->blocks; k++) {
            unpack_block(m->packed + (r * m->blocks + k) * bb, m->bits, q);
            const float s = half_to_float(m->scales[r * groups + k / m->blocksPerGroup]);
            const size_t c0 = k * 32;
            if (c0 >= cols) break;                                       // padding blocks
            const size_t n = cols - c0 < 32 ? cols - c0 : 32;
            if (n == 32) {
                for (int i = 0; i < 32; i++) o[c0 + i] = s * (float)q[i];
            } else {
                for (size_t i = 0; i < n; i++) o[c0 + i] = s * (float)q[i];
            }
        }
    }
}

// Block `k` of a row -> 32 int8 codes o with |o| <= 127; returns the step d = max|v| / 127
// (v ≈ d·o, rounded half away from zero) and sets *sum = Σ o.
static inline float quantize_block(const float *row, size_t cols, size_t k, int rotate, int8_t o[32],
                                   int32_t *sum) {
    float v[32];
    const size_t c0 = k * 32;
    const size_t cnt = c0 >= cols ? 0 : (cols - c0 < 32 ? cols - c0 : 32);
    if (rotate && cnt == 32) {
        mq_rotate_blocks(row + c0, v, 32, 0);
    } else {
        for (size_t j = 0; j < 32; j++) v[j] = j < cnt ? row[c0 + j] : 0.0f;
    }
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) { float a = fabsf(v[j]); amax = a > amax ? a : amax; }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t s = 0;
    for (int j = 0; j < 32; j++) {
        float t = v[j] * inv;
        o[j] = (int8_t)(int)(t + (t >= 0.0f ? 0.5f : -0.5f));
        s += o[j];
    }
    *sum = s;
    return amax / 127.0f;
}

#if defined(__x86_64__)
// quantize_block for a whole block of 32 floats v with AVX2: the same operations in the same
// order per element (so the same codes, step and sum).
__attribute__((target("avx2,fma,f16c"))) static float quantize_block_avx2(const float *v, int8_t o[32], int32_t *sum) {
    const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 a[4], m = _mm256_setzero_ps();
    for (int q = 0; q < 4; q++) {
        a[q] = _mm256_loadu_ps(v + 8 * q);
        m = _mm256_max_ps(m, _mm256_and_ps(a[q], absMask));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m256 half = _mm256_set1_ps(0.5f), sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    __m256i c[4], total = _mm256_setzero_si256();
    for (int q = 0; q < 4; q++) {
        const __m256 t = _mm256_mul_ps(a[q], inv);
        // t + (t >= 0 ? 0.5 : -0.5), truncated: half away from zero (-0.0 gets +0.5, as in C).
        const __m256 ge = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ);
        const __m256 h5 = _mm256_blendv_ps(_mm256_or_ps(half, sign), half, ge);
        c[q] = _mm256_cvttps_epi32(_mm256_add_ps(t, h5));
        total = _mm256_add_epi32(total, c[q]);
    }
    // int32 x 32 -> int8 x 32 in element order (the packs work per 128-bit lane; fix the order).
    const __m256i w01 = _mm256_packs_epi32(c[0], c[1]), w23 = _mm256_packs_epi32(c[2], c[3]);
    const __m256i b = _mm256_packs_epi16(w01, w23);
    _mm256_storeu_si256((__m256i *)o, _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    *sum = _mm_cvtsi128_si32(s4);
    return amax / 127.0f;
}

// Rows of x with AVX2: whole blocks (rotated first if asked) by quantize_block_avx2, a partial
// last block by quantize_block.
__attribute__((target("avx2,fma,f16c"))) static void quantize_rows_avx2(const float *x, size_t n, size_t cols, size_t ldx,
                                                                        size_t blocks, int rotate, int8_t *xq,
                                                                        float *xscale, int32_t *xsum) {
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * ldx;
        for (size_t k = 0; k < blocks; k++) {
            int32_t s;
            int8_t *o = xq + (i * blocks + k) * 32;
            if ((k + 1) * 32 <= cols) {
                float r[32];
                if (rotate) mq_rotate_blocks(row + k * 32, r, 32, 0);
                xscale[i * blocks + k] = quantize_block_avx2(rotate ? r : row + k * 32, o, &s);
            } else {
                xscale[i * blocks + k] = quantize_block(row, cols, k, rotate, o, &s);
            }
            if (xsum) xsum[i * blocks + k] = s;
        }
    }
}
#endif

void mq_quantize_activations_sums(const float *x, size_t n, size_t cols, size_t ldx, size_t blocks, int rotate,
                                  int8_t *xq, float *xscale, int32_t *xsum) {
#if defined(__x86_64__)
    if (mq_q8_kernel() >= 1) { quantize_rows_avx2(x, n, cols, ldx, blocks, rotate, xq, xscale, xsum); return; }
#endif
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < blocks; k++) {
            int32_t s;
            xscale[i * blocks + k] = quantize_block(x + i * ldx, cols, k, rotate, xq + (i * blocks + k) * 32, &s);
            if (xsum) xsum[i * blocks + k] = s;
        }
    }
}

void mq_quantize_activations(const float *x, size_t n, size_t cols, size_t ldx, size_t blocks,
                             int8_t *xq, float *xscale) {
    mq_quantize_activations_sums(x, n, cols, ldx, blocks, 0, xq, xscale, NULL);
}

// MARK: - Scalar products

static void gemv_q8_scalar(const mq_packed_matrix *m, size_t r0, size_t r1,
                           const int8_t *xq, const float *xs, size_t n, float *y, size_t ldy) {
    const size_t bb = block_bytes(m->bits), blocks = m->blocks, groups = blocks / m->blocksPerGroup;
    int8_t q[32];
    for (size_t r = r0; r < r1; r++) {
        for (size_t i = 0; i < n; i++) y[i * ldy + r] = 0.0f;
        for (size_t k = 0; k < blocks; k++) {
            unpack_block(m->packed + (r * blocks + k) * bb, m->bits, q);
            const float s = half_to_float(m->scales[r * groups + k / m->blocksPerGroup]);
            for (size_t i = 0; i < n; i++) {
                const int8_t *xv = xq + (i * blocks + k) * 32;
                int32_t dot = 0;
                for (int j = 0; j < 32; j++) dot += (int32_t)q[j] * (int32_t)xv[j];
                y[i * ldy + r] += (float)dot * (s * xs[i * blocks + k]);
            }
        }
    }
}

static void gemv_f32_scalar(const mq_packed_matrix *m, size_t r0, size_t r1, const float *x, float *y) {
    const size_t bb = block_bytes(m->bits), blocks = m->blocks, bpg = m->blocksPerGroup;
    const size_t groups = blocks / bpg;
    int8_t q[32];
    for (size_t r = r0; r < r1; r++) {
        float acc = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            float gacc = 0.0f;
            for (size_t kb = 0; kb < bpg; kb++) {
                const size_t k = g * bpg + kb;
                unpack_block(m->packed + (r * blocks + k) * bb, m->bits, q);
                for (int j = 0; j < 32; j++) gacc += (float)q[j] * x[k * 32 + j];
            }
            acc += gacc * half_to_float(m->scales[r * groups + g]);
        }
        y[r] = acc;
    }
}

// MARK: - x86 products

#if defined(__x86_64__)

static inline TGT_AVX2 float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// The int8 GEMV body for one dot instruction DOT(|q|, x·sign q) -> 8 x int32.
// NC x-rows at a time (1..4, a constant after inlining), codes unpacked once per block.
#define DEFINE_GEMV_Q8(NAME, TARGET, DOT)                                                         \
    static inline __attribute__((target(TARGET), always_inline)) void NAME##_rows(                 \
        const mq_packed_matrix *m, size_t r0, size_t r1, const int8_t *xq, const float *xs,        \
        float *y, size_t ldy, const int nc, const int bits) {                                      \
        const size_t blocks = m->blocks, bpg = m->blocksPerGroup, groups = blocks / bpg;           \
        const size_t rowBytes = blocks * 4 * (size_t)bits;                                         \
        for (size_t r = r0; r < r1; r++) {                                                         \
            const uint8_t *p = m->packed + r * rowBytes;                                           \
            const uint16_t *sc = m->scales + r * groups;                                           \
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),        \
                             _mm256_setzero_ps()};                                                 \
            for (size_t g = 0; g < groups; g++) {                                                  \
                const float s = _cvtsh_ss(sc[g]);                                                  \
                for (size_t kb = 0; kb < bpg; kb++) {                                              \
                    const size_t k = g * bpg + kb;                                                 \
                    const __m256i q = unpack_q_avx2(p + k * 4 * (size_t)bits, bits);               \
                    const __m256i aq = _mm256_abs_epi8(q);                                         \
                    for (int c = 0; c < nc; c++) {                                                 \
                        const __m256i xv =                                                         \
                            _mm256_loadu_si256((const __m256i *)(xq + (c * blocks + k) * 32));     \
                        const __m256i d = DOT(aq, _mm256_sign_epi8(xv, q));                        \
                        acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d),                            \
                                                 _mm256_set1_ps(s * xs[c * blocks + k]), acc[c]);  \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            for (int c = 0; c < nc; c++) y[c * ldy + r] = hsum_avx2(acc[c]);                      \
        }                                                                                          \
    }                                                                                              \
    static inline __attribute__((target(TARGET), always_inline)) void NAME##_bits(                 \
        const mq_packed_matrix *m, size_t r0, size_t r1, const int8_t *xq, const float *xs,        \
        size_t n, float *y, size_t ldy, const int bits) {                                          \
        const size_t blocks = m->blocks;                                                           \
        size_t i = 0;                                                                              \
        for (; i + 4 <= n; i += 4)                                                                 \
            NAME##_rows(m, r0, r1, xq + i * blocks * 32, xs + i * blocks, y + i * ldy, ldy, 4, bits); \
        switch (n - i) {                                                                           \
        case 3: NAME##_rows(m, r0, r1, xq + i * blocks * 32, xs + i * blocks, y + i * ldy, ldy, 3, bits); break; \
        case 2: NAME##_rows(m, r0, r1, xq + i * blocks * 32, xs + i * blocks, y + i * ldy, ldy, 2, bits); break; \
        case 1: NAME##_rows(m, r0, r1, xq + i * blocks * 32, xs + i * blocks, y + i * ldy, ldy, 1, bits); break; \
        default: break;                                                                            \
        }                                                                                          \
    }                                                                                              \
    __attribute__((target(TARGET))) static void NAME(const mq_packed_matrix *m, size_t r0,         \
                                                     size_t r1, const int8_t *xq, const float *xs, \
                                                     size_t n, float *y, size_t ldy) {             \
        switch (m->bits) {                                                                         \
        case 2: NAME##_bits(m, r0, r1, xq, xs, n, y, ldy, 2); break;                               \
        case 3: NAME##_bits(m, r0, r1, xq, xs, n, y, ldy, 3); break;                               \
        case 4: NAME##_bits(m, r0, r1, xq, xs, n, y, ldy, 4); break;                               \
        case 5: NAME##_bits(m, r0, r1, xq, xs, n, y, ldy, 5); break;                               \
        case 6: NAME##_bits(m, r0, r1, xq, xs, n, y, ldy, 6); break;                               \
        default: NAME##_bits(m, r0, r1, xq, xs, n, y, ldy, 8); break;                              \
        }                                                                                          \
    }

#define DOT_AVX2(a, b) _mm256_madd_epi16(_mm256_maddubs_epi16((a), (b)), _mm256_set1_epi16(1))
#define DOT_AVXVNNI(a, b) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), (a), (b))
#define DOT_AVX512VNNI(a, b) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (a), (b))

DEFINE_GEMV_Q8(gemv_q8_avx2, "avx2,fma,f16c", DOT_AVX2)
DEFINE_GEMV_Q8(gemv_q8_avxvnni, "avx2,fma,f16c,avxvnni", DOT_AVXVNNI)
DEFINE_GEMV_Q8(gemv_q8_avx512vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", DOT_AVX512VNNI)

static inline TGT_AVX2 void gemv_f32_avx2_bits(const mq_packed_matrix *m, size_t r0, size_t r1,
                                               const float *x, float *y, const int bits) {
    const size_t blocks = m->blocks, bpg = m->blocksPerGroup, groups = blocks / bpg;
    const size_t rowBytes = blocks * 4 * (size_t)bits;
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *p = m->packed + r * rowBytes;
        __m256 acc = _mm256_setzero_ps();
        for (size_t g = 0; g < groups; g++) {
            __m256 ga = _mm256_setzero_ps(), gb = _mm256_setzero_ps();
            for (size_t kb = 0; kb < bpg; kb++) {
                const size_t k = g * bpg + kb;
                const __m256i q = unpack_q_avx2(p + k * 4 * (size_t)bits, bits);
                const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
                const float *xv = x + k * 32;
                ga = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), _mm256_loadu_ps(xv), ga);
                gb = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
                                     _mm256_loadu_ps(xv + 8), gb);
                ga = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), _mm256_loadu_ps(xv + 16), ga);
                gb = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))),
                                     _mm256_loadu_ps(xv + 24), gb);
            }
            acc = _mm256_fmadd_ps(_mm256_add_ps(ga, gb), _mm256_set1_ps(_cvtsh_ss(m->scales[r * groups + g])), acc);
        }
        y[r] = hsum_avx2(acc);
    }
}

__attribute__((target("avx2,fma,f16c"))) static void gemv_f32_avx2(const mq_packed_matrix *m, size_t r0,
                                                                   size_t r1, const float *x, float *y) {
    switch (m->bits) {
    case 2: gemv_f32_avx2_bits(m, r0, r1, x, y, 2); break;
    case 3: gemv_f32_avx2_bits(m, r0, r1, x, y, 3); break;
    case 4: gemv_f32_avx2_bits(m, r0, r1, x, y, 4); break;
    case 5: gemv_f32_avx2_bits(m, r0, r1, x, y, 5); break;
    case 6: gemv_f32_avx2_bits(m, r0, r1, x, y, 6); break;
    default: gemv_f32_avx2_bits(m, r0, r1, x, y, 8); break;
    }
}

static inline TGT_AVX2 void dequantize_rows_avx2_bits(const mq_packed_matrix *m, size_t r0, size_t r1,
                                                      size_t cols, float *out, size_t ldo, const int bits) {
    const size_t blocks = m->blocks, bpg = m->blocksPerGroup, groups = blocks / bpg;
    const size_t rowBytes = blocks * 4 * (size_t)bits, full = cols / 32;
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *p = m->packed + r * rowBytes;
        float *o = out + (r - r0) * ldo;
        for (size_t k = 0; k < full; k++) {
            const __m256i q = unpack_q_avx2(p + k * 4 * (size_t)bits, bits);
            const __m256 s = _mm256_set1_ps(_cvtsh_ss(m->scales[r * groups + k / bpg]));
            const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
            float *ok = o + k * 32;
            _mm256_storeu_ps(ok, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
            _mm256_storeu_ps(ok + 8, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
            _mm256_storeu_ps(ok + 16, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
            _mm256_storeu_ps(ok + 24, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
        }
    }
}

__attribute__((target("avx2,fma,f16c"))) static void dequantize_rows_avx2(const mq_packed_matrix *m, size_t r0, size_t r1,
                                                                          size_t cols, float *out, size_t ldo) {
    switch (m->bits) {
    case 2: dequantize_rows_avx2_bits(m, r0, r1, cols, out, ldo, 2); break;
    case 3: dequantize_rows_avx2_bits(m, r0, r1, cols, out, ldo, 3); break;
    case 4: dequantize_rows_avx2_bits(m, r0, r1, cols, out, ldo, 4); break;
    case 5: dequantize_rows_avx2_bits(m, r0, r1, cols, out, ldo, 5); break;
    case 6: dequantize_rows_avx2_bits(m, r0, r1, cols, out, ldo, 6); break;
    default: dequantize_rows_avx2_bits(m, r0, r1, cols, out, ldo, 8); break;
    }
}

#endif  // __x86_64__

// MARK: - Dispatch

static int cpu_best_kernel(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (!avx2) return 0;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")) return 3;
    if (__builtin_cpu_supports("avxvnni")) return 2;
    return 1;
#else
    return 0;
#endif
}

int mq_cpu_vector_width(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd")) return 512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 256;
#endif
    return 0;
}

// -1: not chosen yet. Written with the same value by any thread that races here: atomics, so that is defined
// (ThreadSanitizer reported the plain form).
static _Atomic int q8_kernel = -1;
static _Atomic int cpu_kernel = -1;

static int cpu_kernel_cached(void) {
    int k = atomic_load_explicit(&cpu_kernel, memory_order_relaxed);
    if (k < 0) { k = cpu_best_kernel(); atomic_store_explicit(&cpu_kernel, k, memory_order_relaxed); }
    return k;
}

int mq_q8_kernel(void) {
    int k = atomic_load_explicit(&q8_kernel, memory_order_relaxed);
    if (k < 0) { k = cpu_kernel_cached(); atomic_store_explicit(&q8_kernel, k, memory_order_relaxed); }
    return k;
}

void mq_set_q8_kernel(int kernel) {
    int best = cpu_kernel_cached();
    if (kernel < 0) { q8_kernel = best; return; }
    // AVX-VNNI and AVX512-VNNI are separate features: a CPU may have either one.
    if (kernel == 2 && best == 3) {
#if defined(__x86_64__)
        q8_kernel = __builtin_cpu_supports("avxvnni") ? 2 : 1;
#endif
        return;
    }
    q8_kernel = kernel > best ? best : kernel;
}

void mq_gemv_q8(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd,
                const int8_t *xq, const float *xscale, size_t n, float *y, size_t ldy) {
    switch (mq_q8_kernel()) {
#if defined(__x86_64__)
    case 3: gemv_q8_avx512vnni(m, rowStart, rowEnd, xq, xscale, n, y, ldy); return;
    case 2: gemv_q8_avxvnni(m, rowStart, rowEnd, xq, xscale, n, y, ldy); return;
    case 1: gemv_q8_avx2(m, rowStart, rowEnd, xq, xscale, n, y, ldy); return;
#endif
    default: gemv_q8_scalar(m, rowStart, rowEnd, xq, xscale, n, y, ldy); return;
    }
}

void mq_dequantize_rows(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd,
                        size_t cols, float *out, size_t ldo) {
#if defined(__x86_64__)
    if (cpu_kernel_cached() >= 1 && mq_q8_kernel() >= 1) {
        // Whole blocks with AVX2, the partial last block (cols % 32) in scalar code.
        dequantize_rows_avx2(m, rowStart, rowEnd, cols, out, ldo);
        if (cols % 32 == 0) return;
        const size_t c0 = cols / 32 * 32;
        const size_t groups = m->blocks / m->blocksPerGroup;
        int8_t q[32];
        for (size_t r = rowStart; r < rowEnd; r++) {
            unpack_block(m->packed + (r * m->blocks + c0 / 32) * block_bytes(m->bits), m->bits, q);
            const float s = half_to_float(m->scales[r * groups + (c0 / 32) / m->blocksPerGroup]);
            for (size_t c = c0; c < cols; c++) out[(r - rowStart) * ldo + c] = s * (float)q[c - c0];
        }
        return;
    }
#endif
    dequantize_rows_scalar(m, rowStart, rowEnd, cols, out, ldo);
}

void mq_gemv_f32(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd, const float *x, float *y) {
#if defined(__x86_64__)
    if (cpu_kernel_cached() >= 1 && mq_q8_kernel() >= 1) { gemv_f32_avx2(m, rowStart, rowEnd, x, y); return; }
#endif
    gemv_f32_scalar(m, rowStart, rowEnd, x, y);
}
