// Hot element-wise kernels of the network, in C so that they vectorise and build at -O3
// even in debug builds. On x86-64 each function is compiled twice (AVX2+FMA and baseline)
// and the loader picks the variant the CPU supports.
#ifndef MYQASR_CKERNELS_H
#define MYQASR_CKERNELS_H

#include <stddef.h>

/// Softmax of each of `rows` rows over their first `cols` entries; rows are `ld` apart.
void mq_softmax_rows(float *x, size_t rows, size_t cols, size_t ld);

/// out[r, :] = (x[r, :] - mean) / sqrt(var + 1e-5) * gamma + beta for `rows` rows of `cols`; `out` may be `x`
/// (each row is read whole before it is written).
void mq_layer_norm(const float *x, size_t rows, size_t cols, const float *gamma,
                   const float *beta, float *out);

/// x = 0.5·x·(1 + erf(x/√2)) in place (Whisper's GELU), absolute error below 1e-6.
void mq_gelu(float *x, size_t count);

/// a[i] += b[i].
void mq_add(float *a, const float *b, size_t count);

/// y[i, j] = alpha · Σ_t x[i, t] · w[j, t] for i < m, j < n, t < k: x is [m, k] with rows
/// `ldx` apart, w is [n, k] with rows `ldw` apart, y rows are `ldy` apart. For few rows
/// (m up to about 8); reads w from memory once, eight of its rows at a time.
void mq_gemm_nt_small(const float *x, size_t m, size_t ldx, const float *w, size_t n, size_t ldw,
                      size_t k, float alpha, float *y, size_t ldy);

/// mq_gemm_nt_small with w in IEEE half precision (bit patterns).
void mq_gemm_nt_small_h(const float *x, size_t m, size_t ldx, const unsigned short *w, size_t n, size_t ldw,
                        size_t k, float alpha, float *y, size_t ldy);

/// y[i, j] += Σ_t x[i, t] · v[t, j] for i < m, j < n, t < k, with v in IEEE half precision (bit
/// patterns): x is [m, k] with rows `ldx` apart, v is [k, n] with rows `ldv` apart, y rows are
/// `ldy` apart. For few rows and narrow n (one attention head's features); reads v once.
void mq_gemm_nn_small_h(const float *x, size_t m, size_t ldx, const unsigned short *v, size_t k, size_t n,
                        size_t ldv, float *y, size_t ldy);

/// mq_gemm_nt_small with w in int8 codes, one scale per row of w: w[j, t] = codes[j, t] · scale[j].
void mq_gemm_nt_small_q8(const float *x, size_t m, size_t ldx, const signed char *w, const float *wscale, size_t n,
                         size_t ldw, size_t k, float alpha, float *y, size_t ldy);

/// mq_gemm_nn_small_h with v in int8 codes, one scale per row of v: v[t, j] = codes[t, j] · scale[t].
void mq_gemm_nn_small_q8(const float *x, size_t m, size_t ldx, const signed char *v, const float *vscale, size_t k,
                         size_t n, size_t ldv, float *y, size_t ldy);

/// Each of `rows` rows of `width` floats as int8 codes with one scale, its largest magnitude / 127
/// (0 for a row of zeros): codes[r, t] = round(x[r, t] / scale[r]).
void mq_quantize_rows_q8(const float *x, size_t rows, size_t width, signed char *codes, float *scales);

/// dst[i] = (float)src[i] for IEEE half-precision bit patterns (model loading).
void mq_f16_to_f32(const unsigned short *src, float *dst, size_t count);

/// Returns the free pages of the C heap to the system (glibc malloc_trim(0)); for a process that
/// has just dropped a large model.
void mq_release_free_heap(void);

/// Takes the pages of every loaded object's read-only segments (code and constants, the program's and
/// its shared libraries') out of the process's resident set (madvise MADV_DONTNEED): for a
/// long-running process after a phase whose code it will not run again. The page cache keeps them;
/// code still in use maps back with minor faults.
void mq_release_code_pages(void);

/// Has the C heap keep the memory freed between windows for reuse instead of returning it to
/// the system at once (glibc mallopt: mmap threshold 32 MiB, trim threshold 256 MiB).
void mq_keep_freed_heap(void);

/// Keeps every thread's allocations in the main heap (glibc M_ARENA_MAX 1), so that
/// mq_release_free_heap reaches all free memory; for a long-running process, called before its
/// threads allocate.
void mq_use_one_heap(void);

/// Takes the pages of [start, start + length) of a read-only *file* mapping [mapping, mapping +
/// mappingLength), and the rest of the 2 MiB spans of the file it lies in (what the kernel's fault-around or a
/// large page-cache folio maps with them),
/// out of the process's resident set (madvise MADV_DONTNEED; the page cache keeps them and a later
/// read maps them again). Never call it on anonymous memory: its contents would be lost.
void mq_release_mapped_pages(const void *start, size_t length, const void *mapping, size_t mappingLength);

/// Opens a new file with no name in `directory` for reading and writing (O_TMPFILE; where the filesystem has
/// no O_TMPFILE, a file made with mkostemp and unlinked at once): it is gone when its last descriptor and
/// mapping are. Returns the descriptor (close-on-exec), or -1 with errno set.
int mq_open_unnamed_file(const char *directory);

/// 1 if the file behind `fd` lives in memory (tmpfs or ramfs), 0 if not, -1 with errno set on error.
int mq_is_in_memory_file(int fd);

/// The spans of a file `mq_release_mapped_pages` releases whole, in bytes: the largest folio the page cache
/// maps at once on x86-64 (2 MiB).
#define MQ_RELEASE_SPAN 2097152

#endif
