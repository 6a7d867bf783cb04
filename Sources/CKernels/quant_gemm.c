// The many-row int8 product of a packed matrix (include/quant.h, `mq_gemm_q8`): the encoder's
// layers multiply 1500 rows of x (3000 for conv1) by W. x is quantized to int8 per block of
// 32 (`mq_quantize_activations_sums`, as the GEMV's activations) and every block's dot with
// W's codes is an exact int32, scaled by W's group scale times x's block scale and summed in
// float: the GEMV's arithmetic, arranged so that W is unpacked once per call and each
// unpacked byte meets many rows of x in registers.
//
// One call (one thread's rows [r0, r1) of W):
//
//   for each tile of W (at most TILE_BYTES of unpacked codes, whole panels of 16 rows):
//       unpack the tile's panels (layout below)
//       for each chunk of x (about CHUNK_BYTES of codes, a multiple of 12 rows):
//           the chunk's offset corrections (below)
//           for each panel of the tile:               (the panel stays in L1)
//               for each MR rows of x in the chunk:   (the chunk stays in L2)
//                   micro-kernel -> y[MR rows][16 columns]
//
// Panels: 16 rows of W in "dot layout" (`blocks` = 32-input blocks per row):
//   codes   [blocks][8][16][4] bytes: [k][s][j][t] = code of W row j at input 32k + 4s + t
//   pscale  [blocks][16] floats:      [k][j] = W row j's scale for the group holding block k
// Four consecutive inputs of one row of x (an int32 broadcast to every lane) meet the same
// four inputs of 8 rows of W in one 32-byte vector, so a single unsigned x signed byte dot
// (vpdpbusd, or vpmaddubsw + vpmaddwd) adds 4 products in each int32 lane, one lane per row
// of W, and no horizontal sums are needed. Rows past the end of W are zero codes with scale 0.
//
// Codes: up to 6 bits the panel holds the stored unsigned codes u = q + 2^(bits-1) (< 64),
// and the product is corrected per block of x: Σ q·x = Σ u·x - 2^(bits-1)·Σ x, the
// correction `xcorr = -2^(bits-1)·xsum` being the int32 the block's dot starts from (exact).
// u·x pairs fit vpmaddubsw's int16 sums (2·63·127 = 16002). At 8 bits u reaches 255, which
// would saturate them, so the panel holds the signed codes q and the kernel multiplies |q|
// by x·sign(q) (2·128·127 = 32512, as the GEMV does), with no correction.
//
// Kernels: AVX512-VNNI (256-bit vpdpbusd), AVX-VNNI, AVX2 (quant_gemm_kernel.h, one
// instantiation each) and a portable scalar loop over the same panels, chosen by
// `mq_q8_kernel()`. Threads: the caller splits W's rows; each call uses its own scratch.
#include "quant_blocks.h"

#include <string.h>

#define PANEL_ROWS 16
#define PANEL_BLOCK_BYTES (PANEL_ROWS * 32)   // codes of one block of one panel
#define TILE_BYTES (128 * 1024)               // unpacked codes of W per tile (L2 with a chunk of x)
#define CHUNK_BYTES (64 * 1024)               // codes of x per chunk
#define CHUNK_ROW_MULTIPLE 12                 // every kernel's MR (2, 3, 4, 6) divides it

// Panels per tile and rows of x per chunk, for a matrix with `blocks` blocks per row.
static size_t tile_panels(size_t blocks) {
    size_t p = TILE_BYTES / (blocks * PANEL_BLOCK_BYTES);
    return p > 0 ? p : 1;
}

static size_t chunk_rows(size_t blocks) {
    size_t r = CHUNK_BYTES / (blocks * 32) / CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE;
    return r > 0 ? r : CHUNK_ROW_MULTIPLE;
}

// Scratch: tile codes [panels][blocks][512] | tile scales [panels][blocks][16] | xcorr [chunk][blocks].
size_t mq_gemm_q8_scratch_size(const mq_packed_matrix *m) {
    const size_t b = m->blocks, p = tile_panels(b);
    return p * b * PANEL_BLOCK_BYTES + p * b * PANEL_ROWS * sizeof(float) + chunk_rows(b) * b * sizeof(int32_t);
}

// MARK: - Unpacking panels

// One block's 32 codes of W row j into the panel's dot layout at pk (= codes + k * 512).
static inline void scatter_block(const uint8_t u[32], size_t j, uint8_t *pk) {
    for (int s = 0; s < 8; s++) memcpy(pk + 64 * s + 4 * j, u + 4 * s, 4);
}

typedef void (*unpack_block_fn)(const uint8_t *p, int bits, uint8_t u[32]);

static void unpack_block_u_scalar(const uint8_t *p, int bits, uint8_t u[32]) { unpack_block_u(p, bits, u); }

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) static void unpack_block_u_avx2(const uint8_t *p, int bits, uint8_t u[32]) {
    _mm256_storeu_si256((__m256i *)u, unpack_u_avx2(p, bits));
}
#endif

// Rows [r, r + nr) of W (nr <= 16) into one panel: codes (u, or q = u ^ 0x80 at 8 bits) and
// per-block scales; rows nr..15 are zero codes with scale 0.
static void unpack_panel(const mq_packed_matrix *m, size_t r, size_t nr, unpack_block_fn unpack, uint8_t *codes,
                         float *pscale) {
    const size_t blocks = m->blocks, bb = block_bytes(m->bits), groups = blocks / m->blocksPerGroup;
    const int bits = m->bits;
    if (nr < PANEL_ROWS) {
        memset(codes, 0, blocks * PANEL_BLOCK_BYTES);
        memset(pscale, 0, blocks * PANEL_ROWS * sizeof(float));
    }
    for (size_t j = 0; j < nr; j++) {
        const uint8_t *p = m->packed + (r + j) * blocks * bb;
        const uint16_t *sc = m->scales + (r + j) * groups;
        for (size_t k = 0; k < blocks; k++) {
            uint8_t u[32];
            unpack(p + k * bb, bits, u);
            if (bits == 8)
                for (int i = 0; i < 32; i++) u[i] ^= 0x80;   // u - 128 as a signed byte
            scatter_block(u, j, codes + k * PANEL_BLOCK_BYTES);
            pscale[k * PANEL_ROWS + j] = half_to_float(sc[k / m->blocksPerGroup]);
        }
    }
}

// MARK: - Micro-kernels

// Scalar: the same arithmetic as the SIMD kernels, one row of x at a time.
static void panel_rows_scalar(const uint8_t *panel, const float *pscale, const int8_t *xq, const float *xs,
                              const int32_t *xcorr, size_t blocks, size_t rows, int bits, float *y,
                              size_t ldy, int ncols) {
    const int signedCodes = bits == 8;
    const size_t ldq = blocks * 32;
    for (size_t i = 0; i < rows; i++) {
        float acc[PANEL_ROWS] = {0};
        for (size_t k = 0; k < blocks; k++) {
            const uint8_t *pk = panel + k * PANEL_BLOCK_BYTES;
            const int8_t *xk = xq + i * ldq + 32 * k;
            int32_t d[PANEL_ROWS];
            for (int j = 0; j < PANEL_ROWS; j++) d[j] = xcorr[i * blocks + k];
            for (int s = 0; s < 8; s++)
                for (int j = 0; j < PANEL_ROWS; j++)
                    for (int t = 0; t < 4; t++) {
                        const uint8_t c = pk[64 * s + 4 * j + t];
                        d[j] += (signedCodes ? (int32_t)(int8_t)c : (int32_t)c) * (int32_t)xk[4 * s + t];
                    }
            for (int j = 0; j < PANEL_ROWS; j++) acc[j] += (float)d[j] * (pscale[k * PANEL_ROWS + j] * xs[i * blocks + k]);
        }
        for (int j = 0; j < ncols; j++) y[i * ldy + (size_t)j] = acc[j];
    }
}

#if defined(__x86_64__)

#define GEMM_NAME(f) f##_avx2
#define GEMM_TARGET "avx2,fma,f16c"
#define GEMM_MR 2
#define GEMM_VNNI 0
#include "quant_gemm_kernel.h"
#undef GEMM_NAME
#undef GEMM_TARGET
#undef GEMM_MR
#undef GEMM_VNNI

#define GEMM_NAME(f) f##_avxvnni
#define GEMM_TARGET "avx2,fma,f16c,avxvnni"
#define GEMM_MR 3
#define GEMM_VNNI 1
#define GEMM_DPBUSD _mm256_dpbusd_avx_epi32
#include "quant_gemm_kernel.h"
#undef GEMM_NAME
#undef GEMM_TARGET
#undef GEMM_MR
#undef GEMM_VNNI
#undef GEMM_DPBUSD

// AVX-512 has 32 vector registers: more rows of x per call.
#define GEMM_NAME(f) f##_avx512vnni
#define GEMM_TARGET "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
#define GEMM_MR 6
#define GEMM_VNNI 1
#define GEMM_DPBUSD _mm256_dpbusd_epi32
#include "quant_gemm_kernel.h"
#undef GEMM_NAME
#undef GEMM_TARGET
#undef GEMM_MR
#undef GEMM_VNNI
#undef GEMM_DPBUSD

#endif  // __x86_64__

typedef void (*panel_rows_fn)(const uint8_t *panel, const float *pscale, const int8_t *xq, const float *xs,
                              const int32_t *xcorr, size_t blocks, size_t rows, int bits, float *y,
                              size_t ldy, int ncols);

// MARK: - The product

void mq_gemm_q8(const mq_packed_matrix *m, size_t rowStart, size_t rowEnd, const int8_t *xq,
                const float *xscale, const int32_t *xsum, size_t n, float *y, size_t ldy, void *scratch) {
    const int kernel = mq_q8_kernel();
    panel_rows_fn rows_fn = panel_rows_scalar;
    unpack_block_fn unpack = unpack_block_u_scalar;
#if defined(__x86_64__)
    if (kernel >= 1) unpack = unpack_block_u_avx2;
    if (kernel == 3) rows_fn = panel_rows_avx512vnni;
    else if (kernel == 2) rows_fn = panel_rows_avxvnni;
    else if (kernel == 1) rows_fn = panel_rows_avx2;
#endif
    const size_t blocks = m->blocks, panels = tile_panels(blocks), chunk = chunk_rows(blocks);
    const int signedCodes = m->bits == 8;
    const int32_t offset = signedCodes ? 0 : 1 << (m->bits - 1);
    uint8_t *codes = scratch;                                                  // [panels][blocks][512]
    float *pscale = (float *)(codes + panels * blocks * PANEL_BLOCK_BYTES);   // [panels][blocks][16]
    int32_t *xcorr = (int32_t *)(pscale + panels * blocks * PANEL_ROWS);      // [chunk][blocks]

    for (size_t t0 = rowStart; t0 < rowEnd; t0 += panels * PANEL_ROWS) {
        const size_t t1 = rowEnd - t0 < panels * PANEL_ROWS ? rowEnd : t0 + panels * PANEL_ROWS;
        const size_t tp = (t1 - t0 + PANEL_ROWS - 1) / PANEL_ROWS;   // panels in this tile
        for (size_t p = 0; p < tp; p++) {
            const size_t r = t0 + p * PANEL_ROWS, nr = t1 - r < PANEL_ROWS ? t1 - r : PANEL_ROWS;
            uint8_t *pc = codes + p * blocks * PANEL_BLOCK_BYTES;
            float *ps = pscale + p * blocks * PANEL_ROWS;
            unpack_panel(m, r, nr, unpack, pc, ps);
        }
        for (size_t i0 = 0; i0 < n; i0 += chunk) {
            const size_t rows = n - i0 < chunk ? n - i0 : chunk;
            for (size_t i = 0; i < rows * blocks; i++) xcorr[i] = -offset * xsum[i0 * blocks + i];
            for (size_t p = 0; p < tp; p++) {
                const size_t r = t0 + p * PANEL_ROWS, nr = t1 - r < PANEL_ROWS ? t1 - r : PANEL_ROWS;
                rows_fn(codes + p * blocks * PANEL_BLOCK_BYTES, pscale + p * blocks * PANEL_ROWS,
                        xq + i0 * blocks * 32, xscale + i0 * blocks, xcorr, blocks, rows, m->bits,
                        y + i0 * ldy + r, ldy, (int)nr);
            }
        }
    }
}
