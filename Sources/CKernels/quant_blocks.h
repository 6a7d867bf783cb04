// Reading packed blocks (layout in include/quant.h), shared by the products in quant.c
// (GEMV, dequantization) and quant_gemm.c (the many-row int8 product). Private to CKernels.
#ifndef MYQASR_QUANT_BLOCKS_H
#define MYQASR_QUANT_BLOCKS_H

#include "quant.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// MARK: - Half floats

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {                                   // subnormal: renormalise
            int e = -1;
            do { man <<= 1; e++; } while ((man & 0x400) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// MARK: - Blocks (scalar, any CPU)

static inline size_t block_bytes(int bits) { return (size_t)(4 * bits); }

// planes at p -> unsigned codes u[32] (u = q + 2^(bits-1), 0 <= u < 2^bits).
static inline void unpack_block_u(const uint8_t *p, int bits, uint8_t u[32]) {
    switch (bits) {
    case 2: case 3:
        for (int j = 0; j < 8; j++)
            for (int t = 0; t < 4; t++) u[j + 8 * t] = (p[j] >> (2 * t)) & 3;
        if (bits == 3)
            for (int i = 0; i < 32; i++) u[i] |= (uint8_t)(((p[8 + (i >> 3)] >> (i & 7)) & 1) << 2);
        break;
    case 4: case 5: case 6:
        for (int j = 0; j < 16; j++) { u[j] = p[j] & 15; u[j + 16] = p[j] >> 4; }
        if (bits == 5)
            for (int i = 0; i < 32; i++) u[i] |= (uint8_t)(((p[16 + (i >> 3)] >> (i & 7)) & 1) << 4);
        else if (bits == 6)
            for (int j = 0; j < 8; j++)
                for (int t = 0; t < 4; t++) u[j + 8 * t] |= (uint8_t)(((p[16 + j] >> (2 * t)) & 3) << 4);
        break;
    default:
        memcpy(u, p, 32);
    }
}

// planes at p -> signed codes q[32].
static inline void unpack_block(const uint8_t *p, int bits, int8_t *q) {
    uint8_t u[32];
    unpack_block_u(p, bits, u);
    const int off = 1 << (bits - 1);
    for (int i = 0; i < 32; i++) q[i] = (int8_t)((int)u[i] - off);
}

// MARK: - Blocks (AVX2)

#if defined(__x86_64__)

#define TGT_AVX2 __attribute__((target("avx2,fma,f16c"), always_inline))

// 2-bit plane (8 B) -> 32 bytes with values 0..3 (element j + 8t = bits 2t of byte j).
static inline TGT_AVX2 __m256i unpack2_avx2(const uint8_t *p) {
    __m128i v = _mm_loadl_epi64((const __m128i *)p);
    __m128i t01 = _mm_unpacklo_epi64(v, _mm_srli_epi16(v, 2));
    __m128i t23 = _mm_unpacklo_epi64(_mm_srli_epi16(v, 4), _mm_srli_epi16(v, 6));
    return _mm256_and_si256(_mm256_set_m128i(t23, t01), _mm256_set1_epi8(3));
}

// 4-bit plane (16 B) -> 32 bytes 0..15 (element j low nibble, j + 16 high nibble of byte j).
static inline TGT_AVX2 __m256i unpack4_avx2(const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    __m128i mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
}

// 1-bit plane (4 B) -> 32 bytes 0/1 (element i = bit i & 7 of byte i >> 3).
static inline TGT_AVX2 __m256i unpack1_avx2(const uint8_t *p) {
    uint32_t h;
    memcpy(&h, p, 4);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)h), spread), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(1));
}

// One block -> 32 unsigned codes u (0 <= u < 2^bits).
static inline TGT_AVX2 __m256i unpack_u_avx2(const uint8_t *p, const int bits) {
    __m256i u;
    switch (bits) {
    case 2: u = unpack2_avx2(p); break;
    case 3: u = _mm256_or_si256(unpack2_avx2(p), _mm256_slli_epi16(unpack1_avx2(p + 8), 2)); break;
    case 4: u = unpack4_avx2(p); break;
    case 5: u = _mm256_or_si256(unpack4_avx2(p), _mm256_slli_epi16(unpack1_avx2(p + 16), 4)); break;
    case 6: u = _mm256_or_si256(unpack4_avx2(p), _mm256_slli_epi16(unpack2_avx2(p + 16), 4)); break;
    default: u = _mm256_loadu_si256((const __m256i *)p); break;
    }
    return u;
}

// One block -> 32 signed codes q = u - 2^(bits-1).
static inline TGT_AVX2 __m256i unpack_q_avx2(const uint8_t *p, const int bits) {
    return _mm256_sub_epi8(unpack_u_avx2(p, bits), _mm256_set1_epi8((char)(1 << (bits - 1))));
}

#endif  // __x86_64__

#endif
