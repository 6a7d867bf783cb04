// Packed low-bit weight kernels (myQASR). The layout is documented in
// docs/quantized-model-format.md; in short:
//
//   W[rows, cols] is stored row by row. A row holds `blocks` blocks of 32 consecutive
//   input features (cols padded with zeros up to blocks*32). Each element is a signed
//   code q in [-2^(bits-1), 2^(bits-1) - 1] (all 2^bits codes), stored as the unsigned
//   code u = q + 2^(bits-1) (so u fits in `bits` bits). A block takes 4*bits bytes:
//
//     bits 2: [8 B low plane, 2-bit]                  u = L2
//     bits 3: [8 B low plane, 2-bit][4 B high, 1-bit]  u = L2 | H1 << 2
//     bits 4: [16 B low plane, 4-bit]                 u = L4
//     bits 5: [16 B low plane, 4-bit][4 B high, 1-bit] u = L4 | H1 << 4
//     bits 6: [16 B low plane, 4-bit][8 B high, 2-bit] u = L4 | H2 << 4
//     bits 8: [32 B, one byte per element]            u = byte
//
//   4-bit plane (16 B): element j (j < 16) is the low nibble of byte j, element j+16 its
//                       high nibble.
//   2-bit plane (8 B):  element j + 8t (j < 8, t < 4) is bits 2t..2t+1 of byte j.
//   1-bit plane (4 B):  element i is bit (i & 7) of byte (i >> 3).
//
//   Row r starts at packed + r * blocks * 4 * bits. Scales: IEEE half floats,
//   scales[r * groups + g], one per group of `blockPerGroup` blocks (groupSize / 32),
//   signed (the sign puts a group's extreme weight on the code -2^(bits-1));
//   w[r, c] = scale[r, c / groupSize] * q[r, c].
#ifndef MYQASR_QUANT_H
#define MYQASR_QUANT_H

#include <stddef.h>
#include <stdint.h>

/// Description of one packed matrix (all pointers borrowed, read-only).
typedef struct {
    /// Packed codes, rows * blocks * 4 * bits bytes, layout above.
    const uint8_t *packed;
    /// Half-float scales, rows * groups entries (groups = blocks / blocksPerGroup).
    const uint16_t *scales;
    /// 2, 3, 4, 5, 6 or 8.
    int bits;
    /// Rows of W (output features).
    size_t rows;
    /// 32-element blocks per row (ceil(cols / 32)).
    size_t blocks;
    /// Blocks per scale group (groupSize / 32).
    size_t blocksPerGroup;
} mq_packed_matrix;

/// Packs signed codes `codes[rows][blocks*32]` (each in [-2^(bits-1), 2^(bits-1) - 1]) into `out`
/// (rows * blocks * 4 * bits bytes).
void mq_pack_codes(const int8_t *codes, size_t rows, size_t blocks, int bits, uint8_t *out);

/// Unpacks rows [rowStart, rowEnd) into signed codes `codes[(r - rowStart)][blocks*32]`.
void mq_unpack_codes(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd, int8_t *codes);

/// Dequantizes rows [rowStart, rowEnd) into out[(r - rowStart) * ldo + c] for c < cols
/// (cols <= blocks * 32; the padding is not written).
void mq_dequantize_rows(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd,
                        size_t cols, float *out, size_t ldo);

/// Quantizes activations x[n][cols] (row stride ldx) to int8 per block of 32:
/// xq[i][blocks*32] (zero padded), xscale[i][blocks], x ≈ xscale * xq, |xq| <= 127.
void mq_quantize_activations(const float *x, size_t n, size_t cols, size_t ldx, size_t blocks,
                             int8_t *xq, float *xscale);

/// y[i * ldy + r] = Σ_c x[i, c] · W[r, c] for r in [rowStart, rowEnd), i < n, with int8
/// activations from `mq_quantize_activations` (xq[n][blocks*32], xscale[n][blocks]).
/// Uses AVX512-VNNI / AVX-VNNI / AVX2 when the CPU has them, a scalar loop otherwise.
void mq_gemv_q8(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd,
                const int8_t *xq, const float *xscale, size_t n, float *y, size_t ldy);

/// The activations of `mq_gemm_q8`: as `mq_quantize_activations` (xq[n][blocks*32],
/// xscale[n][blocks]), plus each block's code sum xsum[n][blocks] = Σ_j xq[i][32k + j] (NULL to
/// skip). With `rotate` (cols a multiple of 32), each block of 32 inputs is first rotated as by
/// `mq_rotate_blocks` (the input of a rotated matrix).
void mq_quantize_activations_sums(const float *x, size_t n, size_t cols, size_t ldx, size_t blocks, int rotate,
                                  int8_t *xq, float *xscale, int32_t *xsum);

/// Bytes of scratch one `mq_gemm_q8` call on `m` needs (each concurrent call its own).
size_t mq_gemm_q8_scratch_size(const mq_packed_matrix *m);

/// The many-row product (the encoder): y[i * ldy + r] = Σ_c x[i, c] · W[r, c] for r in
/// [rowStart, rowEnd), i < n, with int8 activations from `mq_quantize_activations_sums`
/// (xq[n][blocks*32], xscale[n][blocks], xsum[n][blocks]), in integer arithmetic per block:
/// the same per-block integer dots as `mq_gemv_q8`, so the two agree up to float rounding.
/// W's rows are unpacked once per call into `scratch` (`mq_gemm_q8_scratch_size` bytes) and
/// reused across all n rows of x. Kernel (quant_gemm.c): the one `mq_q8_kernel` names.
void mq_gemm_q8(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd, const int8_t *xq,
                const float *xscale, const int32_t *xsum, size_t n, float *y, size_t ldy, void *scratch);

/// y[r] = Σ_c x[c] · W[r, c] for r in [rowStart, rowEnd) with float activations
/// x[blocks*32] (zero padded): exact up to float summation order.
void mq_gemv_f32(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd,
                 const float *x, float *y);

/// The widest float vectors this CPU and its kernel let a program use: 512 (AVX-512 F, BW, DQ, VL and CD:
/// what OpenBLAS's SkylakeX kernels need), 256 (AVX2 and FMA: its Haswell kernels), else 0.
int mq_cpu_vector_width(void);

/// Which int8 kernel `mq_gemv_q8` and `mq_gemm_q8` run on this CPU: 0 scalar, 1 AVX2,
/// 2 AVX-VNNI, 3 AVX512-VNNI (256-bit). `mq_set_q8_kernel(k)` forces k (clamped to what the CPU
/// supports); -1 restores the automatic choice. Forcing 0 also makes `mq_gemv_f32` and
/// `mq_dequantize_rows` use their scalar forms. For tests and measurements.
int mq_q8_kernel(void);
/// See `mq_q8_kernel`.
void mq_set_q8_kernel(int kernel);

/// IEEE half bit patterns from floats (round to nearest even), for scales.
void mq_f32_to_f16(const float *src, uint16_t *dst, size_t count);

/// The block rotation of rotated layers (docs/quantized-model-format.md, "Rotation"): every
/// consecutive block of 32 values of `src[count]` (count a multiple of 32) becomes R·block in
/// `dst` (which may be `src`), R = H32·D/√32 with H32 the Sylvester Hadamard matrix and
/// D = diag(±1) the fixed signs (bit j of 0x6A09E667 set: column j negated). R is
/// orthogonal; `inverse` applies Rᵀ = D·H32/√32.
void mq_rotate_blocks(const float *src, float *dst, size_t count, int inverse);
/// The forward `mq_rotate_blocks` in place, in double precision (second-moment matrices at
/// quantization time).
void mq_rotate_blocks_f64(double *x, size_t count);

#endif
