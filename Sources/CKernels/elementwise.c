// Element-wise kernels: see include/ckernels.h.
//
// exp and erf are written here instead of calling libm because a call per element stops
// the loops from vectorising; the softmax over 1500 keys and the encoder's GELU are the
// largest element-wise passes of the network (measured with perf before writing this).
#include "ckernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "clones.h"

// Lanes of the explicit partial sums: lets the compiler vectorise reductions without
// reassociating floating-point additions on its own.
#define LANES 16

// e^x, relative error below 2e-7 for x in [-87, 88]; 0 below -87.
// x = k·ln2 + r with |r| <= ln2/2, degree-6 Taylor polynomial for e^r, 2^k via the exponent.
static inline __attribute__((always_inline)) float mq_exp(float x) {
    float c = x < -87.0f ? -87.0f : x;
    float k = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   // round to nearest
    float r = c - k * 0.693145751953125f - k * 1.42860682030941723212e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.0f ? 0.0f : p * scale;
}

// erf(x), absolute error below 2e-7 (Abramowitz and Stegun 7.1.26).
static inline __attribute__((always_inline)) float mq_erf(float x) {
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    float y = 1.0f - p * t * mq_exp(-a * a);
    return x < 0.0f ? -y : y;
}

static inline __attribute__((always_inline)) float sum_lanes(const float lanes[LANES]) {
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += lanes[l];
    return s;
}

MQ_CLONES
void mq_softmax_rows(float *x, size_t rows, size_t cols, size_t ld) {
    for (size_t r = 0; r < rows; r++) {
        float *row = x + r * ld;
        float maxLanes[LANES];
        for (int l = 0; l < LANES; l++) maxLanes[l] = -INFINITY;
        size_t i = 0;
        for (; i + LANES <= cols; i += LANES)
            for (int l = 0; l < LANES; l++) maxLanes[l] = row[i + l] > maxLanes[l] ? row[i + l] : maxLanes[l];
        float m = -INFINITY;
        for (int l = 0; l < LANES; l++) m = maxLanes[l] > m ? maxLanes[l] : m;
        for (; i < cols; i++) m = row[i] > m ? row[i] : m;

        for (size_t j = 0; j < cols; j++) row[j] = mq_exp(row[j] - m);

        float sumLanes[LANES] = {0};
        i = 0;
        for (; i + LANES <= cols; i += LANES)
            for (int l = 0; l < LANES; l++) sumLanes[l] += row[i + l];
        float s = sum_lanes(sumLanes);
        for (; i < cols; i++) s += row[i];
        float inv = 1.0f / s;
        for (size_t j = 0; j < cols; j++) row[j] *= inv;
    }
}

MQ_CLONES
void mq_layer_norm(const float *x, size_t rows, size_t cols, const float *gamma,
                   const float *beta, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *o = out + r * cols;
        float lanes[LANES] = {0};
        size_t i = 0;
        for (; i + LANES <= cols; i += LANES)
            for (int l = 0; l < LANES; l++) lanes[l] += xr[i + l];
        float s = sum_lanes(lanes);
        for (; i < cols; i++) s += xr[i];
        float mean = s / (float)cols;

        for (int l = 0; l < LANES; l++) lanes[l] = 0.0f;
        i = 0;
        for (; i + LANES <= cols; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float d = xr[i + l] - mean;
                lanes[l] += d * d;
            }
        float v = sum_lanes(lanes);
        for (; i < cols; i++) v += (xr[i] - mean) * (xr[i] - mean);
        float inv = 1.0f / sqrtf(v / (float)cols + 1e-5f);
        for (size_t j = 0; j < cols; j++) o[j] = (xr[j] - mean) * inv * gamma[j] + beta[j];
    }
}

MQ_CLONES
void mq_gelu(float *x, size_t count) {
    const float invSqrt2 = 0.70710678118654752f;
    for (size_t i = 0; i < count; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + mq_erf(v * invSqrt2));
    }
}

MQ_CLONES
void mq_add(float *a, const float *b, size_t count) {
    for (size_t i = 0; i < count; i++) a[i] += b[i];
}

MQ_CLONES
void mq_f16_to_f32(const unsigned short *src, float *dst, size_t count) {
    const _Float16 *half = (const _Float16 *)src;
    for (size_t i = 0; i < count; i++) dst[i] = (float)half[i];
}
