// Block rotation of a rotated layer's input features: see include/quant.h.
//
// A fast Walsh-Hadamard transform per block of 32 (five butterfly stages). The float form
// runs in every product of a rotated layer, over every input row (the encoder's 1500), so it
// is written for the vector unit: a block is four 8-float vectors; the stages of span 16
// and 8 add and subtract whole vectors, the spans 4, 2 and 1 pair lanes inside a vector with
// one shuffle and one multiply-add against a ±1 pattern. (With a plain scalar loop that
// rotated a copy of x, quant-bench's 1500x384·(1536x384)ᵀ product took 6.27 ms rotated
// against 5.92 ms; with this form rotating W's dequantized tiles back, 6.00 against 6.02.)
// The double form only rotates second-moment matrices at quantization time and stays plain.
#include "quant.h"

#include "clones.h"

// Column j of the block is negated when bit j is set (the first 32 fraction bits of √2:
// any fixed pattern that is not all-equal serves; this one is easy to write down).
#define MQ_ROTATION_SIGNS 0x6A09E667u
#define MQ_RSQRT32 0.17677669529663688   // 1/√32

typedef float v8f __attribute__((vector_size(32), aligned(4)));

// H32 applied to the block held in v[0..3] (element 8k+j in lane j of v[k]).
static inline __attribute__((always_inline)) void hadamard32(v8f v[4]) {
    const v8f p4 = {1, 1, 1, 1, -1, -1, -1, -1}, p2 = {1, 1, -1, -1, 1, 1, -1, -1},
              p1 = {1, -1, 1, -1, 1, -1, 1, -1};
    v8f a, b;
    a = v[0] + v[2]; b = v[0] - v[2]; v[0] = a; v[2] = b;   // span 16
    a = v[1] + v[3]; b = v[1] - v[3]; v[1] = a; v[3] = b;
    a = v[0] + v[1]; b = v[0] - v[1]; v[0] = a; v[1] = b;   // span 8
    a = v[2] + v[3]; b = v[2] - v[3]; v[2] = a; v[3] = b;
    for (int k = 0; k < 4; k++) {
        v8f x = v[k];
        x = x * p4 + __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3);   // span 4
        x = x * p2 + __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5);   // span 2
        x = x * p1 + __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6);   // span 1
        v[k] = x;
    }
}

MQ_CLONES void mq_rotate_blocks(const float *src, float *dst, size_t count, int inverse) {
    // The signs as ±1/√32 per column (D/√32), as four vectors of 8.
    float sn[32];
    for (int j = 0; j < 32; j++) sn[j] = ((MQ_ROTATION_SIGNS >> j) & 1u) ? -(float)MQ_RSQRT32 : (float)MQ_RSQRT32;
    v8f s[4];
    __builtin_memcpy(s, sn, sizeof sn);
    for (size_t b = 0; b + 32 <= count; b += 32) {
        v8f v[4];
        for (int k = 0; k < 4; k++) {
            __builtin_memcpy(&v[k], src + b + 8 * k, sizeof(v8f));
            if (!inverse) v[k] *= s[k];   // D/√32 first, then H32
        }
        hadamard32(v);
        for (int k = 0; k < 4; k++) {
            // Forward: already scaled. Inverse: H32 first, then D/√32 (the sign of column j
            // multiplies output j of Rᵀ = D·H32/√32).
            v8f out = inverse ? v[k] * s[k] : v[k];
            __builtin_memcpy(dst + b + 8 * k, &out, sizeof(v8f));
        }
    }
}

void mq_rotate_blocks_f64(double *x, size_t count) {
    for (size_t b = 0; b + 32 <= count; b += 32) {
        double *p = x + b;
        for (int j = 0; j < 32; j++)
            if ((MQ_ROTATION_SIGNS >> j) & 1u) p[j] = -p[j];
        for (int h = 1; h < 32; h <<= 1)
            for (int i = 0; i < 32; i += 2 * h)
                for (int j = i; j < i + h; j++) {
                    double a = p[j], c = p[j + h];
                    p[j] = a + c;
                    p[j + h] = a - c;
                }
        for (int j = 0; j < 32; j++) p[j] *= MQ_RSQRT32;
    }
}
