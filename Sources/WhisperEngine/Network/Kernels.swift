import COpenBLAS
import Dispatch
import Foundation

/// Float kernels of the network. Matrix products go to OpenBLAS (Debian's libopenblas);
/// the element-wise passes are plain loops the optimiser vectorises.
/// Every buffer is row-major; `ld*` are row strides in elements.
enum Kernels {
    /// Sets the threads OpenBLAS may use for one product.
    static func setThreads(_ n: Int) {
        openblas_set_num_threads(Int32(max(1, n)))
    }

    /// C[m, n] = alpha * A[m, k] · B[n, k]ᵀ + beta * C.
    @inline(__always)
    static func gemmABt(m: Int, n: Int, k: Int, alpha: Float = 1,
                        a: UnsafePointer<Float>, lda: Int,
                        b: UnsafePointer<Float>, ldb: Int,
                        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C[m, n] = alpha * A[m, k] · B[k, n] + beta * C.
    @inline(__always)
    static func gemmAB(m: Int, n: Int, k: Int, alpha: Float = 1,
                       a: UnsafePointer<Float>, lda: Int,
                       b: UnsafePointer<Float>, ldb: Int,
                       beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// y[rows] = alpha * A[rows, cols] · x[cols] + beta * y (A with row stride lda).
    @inline(__always)
    static func gemv(rows: Int, cols: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                     x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), alpha, a, Int32(lda),
                    x, 1, beta, y, 1)
    }

    /// y[cols] = alpha * A[rows, cols]ᵀ · x[rows] + beta * y (A with row stride lda).
    @inline(__always)
    static func gemvT(rows: Int, cols: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                      x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        cblas_sgemv(CblasRowMajor, CblasTrans, Int32(rows), Int32(cols), alpha, a, Int32(lda),
                    x, 1, beta, y, 1)
    }

    /// out[r, :] = LayerNorm(x[r, :]) * gamma + beta over `cols` features, eps 1e-5.
    static func layerNorm(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                          gamma: [Float], beta: [Float], into out: UnsafeMutablePointer<Float>) {
        gamma.withUnsafeBufferPointer { g in
            beta.withUnsafeBufferPointer { b in
                for r in 0..<rows {
                    let xr = x + r * cols
                    let orow = out + r * cols
                    var mean: Float = 0
                    for i in 0..<cols { mean += xr[i] }
                    mean /= Float(cols)
                    var variance: Float = 0
                    for i in 0..<cols {
                        let d = xr[i] - mean
                        variance += d * d
                    }
                    variance /= Float(cols)
                    let inv = 1 / (variance + 1e-5).squareRoot()
                    for i in 0..<cols { orow[i] = (xr[i] - mean) * inv * g[i] + b[i] }
                }
            }
        }
    }

    /// x = GELU(x), the exact form 0.5·x·(1 + erf(x/√2)) Whisper uses.
    static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let invSqrt2: Float = 0.70710678118654752
        for i in 0..<count {
            let v = x[i]
            x[i] = 0.5 * v * (1 + erff(v * invSqrt2))
        }
    }

    /// Softmax of each row over its first `cols` entries (row stride `ld`).
    static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int) {
        for r in 0..<rows {
            let row = x + r * ld
            var maxValue = -Float.infinity
            for i in 0..<cols where row[i] > maxValue { maxValue = row[i] }
            var sum: Float = 0
            for i in 0..<cols {
                let e = expf(row[i] - maxValue)
                row[i] = e
                sum += e
            }
            let inv = 1 / sum
            for i in 0..<cols { row[i] *= inv }
        }
    }

    /// a[i] += b[i].
    @inline(__always)
    static func add(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { a[i] += b[i] }
    }

    /// Runs `body(i)` for i in 0..<n on up to `threads` threads.
    static func parallelFor(_ n: Int, threads: Int, _ body: (Int) -> Void) {
        if threads <= 1 || n <= 1 {
            for i in 0..<n { body(i) }
        } else {
            DispatchQueue.concurrentPerform(iterations: n, execute: body)
        }
    }
}
