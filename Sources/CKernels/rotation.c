// Block rotation of a rotated layer's input features: see include/quant.h.
//
// A fast Walsh-Hadamard transform per block of 32: five butterfly stages, 160 additions
// and 32 multiplications per block. Tiny next to the product it precedes (a row of 384
// inputs costs 1.9k flops here and 384·outFeatures multiply-adds there), so it is kept
// plain and left to the compiler's vectoriser.
#include "quant.h"

#if defined(__x86_64__)
#define MQ_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MQ_CLONES
#endif

// Column j of the block is negated when bit j is set (the first 32 fraction bits of √2:
// any fixed pattern that is not all-equal serves; this one is easy to write down).
#define MQ_ROTATION_SIGNS 0x6A09E667u

#define MQ_ROTATE(NAME, T)                                                      \
    MQ_CLONES void NAME(T *x, size_t count, int inverse) {                      \
        const T norm = (T)0.17677669529663688; /* 1/√32 */                      \
        for (size_t b = 0; b + 32 <= count; b += 32) {                          \
            T *p = x + b;                                                       \
            if (!inverse)                                                       \
                for (int j = 0; j < 32; j++)                                    \
                    if ((MQ_ROTATION_SIGNS >> j) & 1u) p[j] = -p[j];            \
            for (int h = 1; h < 32; h <<= 1)                                    \
                for (int i = 0; i < 32; i += 2 * h)                             \
                    for (int j = i; j < i + h; j++) {                           \
                        T a = p[j], c = p[j + h];                               \
                        p[j] = a + c;                                           \
                        p[j + h] = a - c;                                       \
                    }                                                           \
            for (int j = 0; j < 32; j++) p[j] *= norm;                          \
            if (inverse)                                                        \
                for (int j = 0; j < 32; j++)                                    \
                    if ((MQ_ROTATION_SIGNS >> j) & 1u) p[j] = -p[j];            \
        }                                                                       \
    }

MQ_ROTATE(mq_rotate_blocks, float)
MQ_ROTATE(mq_rotate_blocks_f64, double)
