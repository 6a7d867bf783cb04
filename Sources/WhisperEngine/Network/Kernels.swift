import CKernels
import COpenBLAS
import Dispatch
import Foundation

/// OpenBLAS runs on its caller's thread, in every part of the process that calls it (the network,
/// the quantizer): each caller splits its own work across the threads it is given, never through a
/// global. OpenBLAS's own workers spin on `sched_yield` between calls, which on two cores took time
/// from the decoder's threads (12 % of `perf` samples in a whole-file transcription), and made the
/// quantizer's row chunks (already run in parallel) 4x slower. A product's float sums also depend on
/// how many threads OpenBLAS split it across, so a model quantized before and after the first network
/// was built differed; with one setting for the whole process the codes do not.
public enum OpenBLASThreads {
    private static let once: Void = openblas_set_num_threads(1)

    /// Sets OpenBLAS to one thread, once per process; every entry point that calls OpenBLAS calls this.
    public static func keepOnCallingThread() { once }
}

/// Which of OpenBLAS's kernel sets the process runs. Debian 12's OpenBLAS (0.3.21, `DYNAMIC_ARCH`) picks its
/// kernels by CPU model when the library loads, and takes a model it does not know for a Pentium 4: on an Intel
/// Xeon of family 6 model 207 (Emerald Rapids, 2023) it ran the SSE3 "Prescott" kernels, and `sgemm` was 43 % of a
/// re-quantization's `perf` samples. It reads `OPENBLAS_CORETYPE` only as it loads, so `chooseForThisCPU` runs
/// the executable again with it set: the AVX-512 ("SkylakeX") or AVX2 ("Haswell") kernels the CPU can run
/// (what that saves: docs/evaluation.md, "OpenBLAS's kernels on a CPU it does not know").
public enum OpenBLASCore {
    /// The kernel set OpenBLAS runs in this process ("SkylakeX", "Haswell", "Prescott", ...).
    public static var name: String { String(cString: openblas_get_corename()) }

    /// The kernel set to run instead of the one OpenBLAS chose at load (nil: keep it), on this CPU.
    public static var replacement: String? { replacement(detected: name, vectorWidth: Int(mq_cpu_vector_width())) }

    /// The kernel set to ask for instead of `detected` on a CPU whose widest vectors are `vectorWidth` bits
    /// (`mq_cpu_vector_width`): only when OpenBLAS fell back to "Prescott", its choice for a CPU it does not know.
    static func replacement(detected: String, vectorWidth: Int) -> String? {
        guard detected.lowercased() == "prescott" else { return nil }
        switch vectorWidth {
        case 512...: return "SkylakeX"
        case 256..<512: return "Haswell"
        default: return nil
        }
    }

    /// Called first in an executable's `main`, before any other thread exists: when OpenBLAS fell back to its
    /// Prescott kernels on a CPU with AVX2 or AVX-512, runs this executable again (same process, arguments and
    /// descriptors) with `OPENBLAS_CORETYPE` naming the kernels to use. A `OPENBLAS_CORETYPE` already set is left
    /// as it is (the user's choice, and the second run's), and where the executable cannot be run again (no
    /// /proc, or its file replaced meanwhile) the process goes on with the kernels it has.
    public static func chooseForThisCPU() {
        guard getenv("OPENBLAS_CORETYPE") == nil, let core = replacement, let path = executablePath else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        execv(path, CommandLine.unsafeArgv)
        unsetenv("OPENBLAS_CORETYPE")   // not run again: this process keeps what it has
    }

    /// This executable's file, by its own name: exec'd as /proc/self/exe the process would be called "exe" in
    /// `ps`, `top` and the journal. Nil when it cannot be read, or the file was deleted (replaced by an upgrade).
    private static var executablePath: String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        let path = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasSuffix(" (deleted)") ? nil : path
    }
}

/// Float kernels of the network. Matrix products go to OpenBLAS (Debian's libopenblas, kept on the
/// calling thread: `OpenBLASThreads`); the element-wise passes are the C kernels of `CKernels`.
/// Every buffer is row-major; `ld*` are row strides in elements.
///
/// Threads: the network splits its products itself (rows of x across the `threads` each call is
/// given, Dispatch's pool).
enum Kernels {

    /// Rows of x each part of a split product gets at least: below this, one sgemm call.
    static let minRowsPerPart = 32

    /// y[m, n] = x[m, k] · w[n, k]ᵀ for few rows (the decoder's beams): reads w once,
    /// splitting its rows across the threads when it is large.
    static func gemmFewRows(m: Int, n: Int, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                            y: UnsafeMutablePointer<Float>, threads: Int) {
        let parts = n * k >= 1 << 17 ? threads : 1
        parallelRows(n, threads: parts) { r in
            mq_gemm_nt_small(x, m, k, w + r.lowerBound * k, r.count, k, k, 1, y + r.lowerBound, n)
        }
    }

    /// C[m, n] = alpha * A[m, k] · B[n, k]ᵀ + beta * C, rows of A split across `threads`.
    static func gemmABt(m: Int, n: Int, k: Int, alpha: Float = 1,
                        a: UnsafePointer<Float>, lda: Int,
                        b: UnsafePointer<Float>, ldb: Int,
                        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, threads: Int) {
        parallelRows(m, threads: Swift.min(threads, m / minRowsPerPart)) { r in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(r.count), Int32(n), Int32(k),
                        alpha, a + r.lowerBound * lda, Int32(lda), b, Int32(ldb), beta, c + r.lowerBound * ldc, Int32(ldc))
        }
    }

    /// C[m, n] = alpha * A[m, k] · B[k, n] + beta * C on the calling thread (the callers
    /// split their rows themselves).
    @inline(__always)
    static func gemmAB(m: Int, n: Int, k: Int, alpha: Float = 1,
                       a: UnsafePointer<Float>, lda: Int,
                       b: UnsafePointer<Float>, ldb: Int,
                       beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C[m, n] = alpha * A[m, k] · B[n, k]ᵀ for few rows m (B rows `ldb` apart): reads B
    /// once instead of packing it as sgemm does.
    @inline(__always)
    static func gemmFewRowsABt(m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                               b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
        mq_gemm_nt_small(a, m, lda, b, n, ldb, k, alpha, c, ldc)
    }

    /// `gemmFewRowsABt` with B in half precision (bit patterns), widened as it is read.
    @inline(__always)
    static func gemmFewRowsABtHalf(m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                                   b: UnsafePointer<UInt16>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
        mq_gemm_nt_small_h(a, m, lda, b, n, ldb, k, alpha, c, ldc)
    }

    /// C[m, n] += A[m, k] · B[k, n] for few rows m and narrow n, B in half precision (bit patterns),
    /// widened as it is read once.
    @inline(__always)
    static func gemmFewRowsABHalf(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                                  b: UnsafePointer<UInt16>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
        mq_gemm_nn_small_h(a, m, lda, b, k, n, ldb, c, ldc)
    }

    /// `gemmFewRowsABt` with B in int8 codes and one scale per row of B (`bScales[n]`).
    @inline(__always)
    static func gemmFewRowsABtInt8(m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                                   b: UnsafePointer<Int8>, bScales: UnsafePointer<Float>, ldb: Int,
                                   c: UnsafeMutablePointer<Float>, ldc: Int) {
        mq_gemm_nt_small_q8(a, m, lda, b, bScales, n, ldb, k, alpha, c, ldc)
    }

    /// `gemmFewRowsABHalf` with B in int8 codes and one scale per row of B (`bScales[k]`).
    @inline(__always)
    static func gemmFewRowsABInt8(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                                  b: UnsafePointer<Int8>, bScales: UnsafePointer<Float>, ldb: Int,
                                  c: UnsafeMutablePointer<Float>, ldc: Int) {
        mq_gemm_nn_small_q8(a, m, lda, b, bScales, k, n, ldb, c, ldc)
    }

    /// out[r, :] = LayerNorm(x[r, :]) * gamma + beta over `cols` features, eps 1e-5; `out` may be `x`.
    static func layerNorm(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                          gamma: [Float], beta: [Float], into out: UnsafeMutablePointer<Float>) {
        mq_layer_norm(x, rows, cols, gamma, beta, out)
    }

    /// x = GELU(x), the erf form 0.5·x·(1 + erf(x/√2)) Whisper uses.
    static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        mq_gelu(x, count)
    }

    /// Softmax of each row over its first `cols` entries (row stride `ld`).
    static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int) {
        mq_softmax_rows(x, rows, cols, ld)
    }

    /// a[i] += b[i].
    @inline(__always)
    static func add(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        mq_add(a, b, count)
    }

    /// Runs `body(part)` for `part` in `0..<parts`, on as many threads (the caller's among them).
    static func parallelParts(_ parts: Int, _ body: (Int) -> Void) {
        if parts <= 1 { return body(0) }
        DispatchQueue.concurrentPerform(iterations: parts, execute: body)
    }

    /// Splits `0..<rows` into one contiguous range per thread and runs `body` on each.
    static func parallelRows(_ rows: Int, threads: Int, _ body: (Range<Int>) -> Void) {
        let parts = Swift.min(threads, rows)
        guard parts > 1 else { return body(0..<rows) }
        let chunk = (rows + parts - 1) / parts
        parallelParts(parts) { part in
            let start = part * chunk
            let end = Swift.min(rows, start + chunk)
            if start < end { body(start..<end) }
        }
    }
}
