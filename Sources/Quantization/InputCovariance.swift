import COpenBLAS
import Foundation
import WhisperEngine

/// Per linear layer, the running sum of `x xᵀ` over every input row the layer saw: the input
/// second moment that error-compensated rounding (`ErrorCompensatedRounding`) weighs the
/// rounding error with. An aggregate, like `ActivationStatistics`: no row survives an
/// `observe` call. Memory is fixed by the model's shape (`inFeatures²` floats per layer:
/// about 115 MB for tiny.en), so it is kept in memory for one quantize run, not in the
/// statistics file.
public final class InputCovariance: ActivationObserver, @unchecked Sendable {
    private struct Entry {
        var width: Int
        var rows: Int
        var sum: [Float]   // [width, width], upper triangle filled (row-major), lower left stale
    }
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]

    /// An empty accumulator.
    public init() {}

    /// Adds the layer's input rows (the network calls this).
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        guard rows > 0, let x = input.baseAddress, input.count % rows == 0 else { return }
        let width = input.count / rows
        lock.lock()
        defer { lock.unlock() }
        var entry = entries[layer] ?? Entry(width: width, rows: 0, sum: [Float](repeating: 0, count: width * width))
        guard entry.width == width else { return }
        entries[layer] = nil   // keep the array uniquely referenced while it is updated
        entry.sum.withUnsafeMutableBufferPointer { s in
            // sum[width, width] += xᵀ x with x[rows, width] row-major: upper triangle only.
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(width), Int32(rows), 1, x, Int32(width),
                        1, s.baseAddress!, Int32(width))
        }
        entry.rows += rows
        entries[layer] = entry
    }

    /// Rows `layer` has seen (0 if never).
    public func rows(of layer: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return entries[layer]?.rows ?? 0
    }

    /// `E[x xᵀ]` of `layer`'s inputs as a full symmetric `[inFeatures, inFeatures]` matrix in
    /// double precision, or `nil` if the layer saw no input.
    public func secondMoment(of layer: String) -> [Double]? {
        lock.lock()
        let entry = entries[layer]
        lock.unlock()
        guard let entry, entry.rows > 0 else { return nil }
        let n = entry.width
        let scale = 1 / Double(entry.rows)
        var m = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in i..<n {
                let v = Double(entry.sum[i * n + j]) * scale
                m[i * n + j] = v
                m[j * n + i] = v
            }
        }
        return m
    }

    /// Forgets everything.
    public func reset() {
        lock.lock()
        entries = [:]
        lock.unlock()
    }
}
