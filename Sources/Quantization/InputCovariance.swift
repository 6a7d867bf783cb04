import COpenBLAS
import Foundation
import WhisperEngine

/// Per linear layer, the running sum of `x xᵀ` over every input row the layer saw: the input
/// second moment that error-compensated rounding (`ErrorCompensatedRounding`) weighs the
/// rounding error with. An aggregate, like `ActivationStatistics`: no row survives an
/// `observe` call. Memory is fixed by the model's shape (`inFeatures²` floats per layer:
/// about 115 MB for tiny.en); `ActivationStatistics` keeps one when asked to
/// (`keepSecondMoments`), and the statistics file then stores its upper triangles.
public final class InputCovariance: ActivationObserver, @unchecked Sendable {
    private struct Entry {
        var width: Int
        var rows: Int
        var sum: [Float]   // [width, width], upper triangle filled (row-major), lower left stale
    }
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]

    private let accepts: @Sendable (String) -> Bool

    /// An empty accumulator for the layers `accepts` names (all by default).
    public init(accepts: @escaping @Sendable (String) -> Bool = { _ in true }) {
        self.accepts = accepts
    }

    /// Adds the layer's input rows (the network calls this).
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        guard rows > 0, let x = input.baseAddress, input.count % rows == 0, accepts(layer) else { return }
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

    /// Layers seen, sorted by name.
    public var layerNames: [String] {
        lock.lock()
        defer { lock.unlock() }
        return entries.keys.sorted()
    }

    /// The raw sums of `layer`: its input width, rows seen and the upper triangle of `Σ x xᵀ`
    /// row by row (`width · (width + 1) / 2` floats), or `nil` if never seen.
    public func upperTriangle(of layer: String) -> (width: Int, rows: Int, sums: [Float])? {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries[layer] else { return nil }
        var packed: [Float] = []
        packed.reserveCapacity(e.width * (e.width + 1) / 2)
        for i in 0..<e.width { packed += e.sum[(i * e.width + i)..<((i + 1) * e.width)] }
        return (e.width, e.rows, packed)
    }

    /// Sets `layer`'s sums from `upperTriangle(of:)`'s form (the file reader); `false` if
    /// `sums` does not have `width · (width + 1) / 2` values.
    @discardableResult
    public func setUpperTriangle(of layer: String, width: Int, rows: Int, sums: [Float]) -> Bool {
        guard width > 0, rows >= 0, sums.count == width * (width + 1) / 2 else { return false }
        var full = [Float](repeating: 0, count: width * width)
        var k = 0
        for i in 0..<width {
            for j in i..<width { full[i * width + j] = sums[k]; k += 1 }
        }
        lock.lock()
        entries[layer] = Entry(width: width, rows: rows, sum: full)
        lock.unlock()
        return true
    }

    /// Adds `other`'s sums layer by layer; a layer whose width differs is left as it is.
    public func merge(_ other: InputCovariance) {
        guard other !== self else { return }
        for name in other.layerNames {
            guard let theirs = other.upperTriangle(of: name) else { continue }
            lock.lock()
            var e = entries[name] ?? Entry(width: theirs.width, rows: 0, sum: [Float](repeating: 0, count: theirs.width * theirs.width))
            if e.width == theirs.width {
                entries[name] = nil
                var k = 0
                for i in 0..<e.width {
                    for j in i..<e.width { e.sum[i * e.width + j] += theirs.sums[k]; k += 1 }
                }
                e.rows += theirs.rows
            }
            entries[name] = e
            lock.unlock()
        }
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
