import Foundation

/// Allocation-free reductions over one row of logits, used by the logit filters and the
/// token selectors. All of them treat `-infinity` as a suppressed token.
enum LogitMath {
    /// Index of the first largest value (ties go to the lowest index, like `argmax`).
    @inline(__always)
    static func argmax(_ row: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        var found = false
        for i in 0..<row.count {
            let v = row[i]
            if !found || v > bestValue { best = i; bestValue = v; found = true }
        }
        return best
    }

    /// Largest value in `row[range]`, `-infinity` for an empty range.
    @inline(__always)
    static func max(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>) -> Float {
        var m = -Float.infinity
        for i in range where row[i] > m { m = row[i] }
        return m
    }

    /// `log(sum(exp(row[range])))`, computed stably in double precision; `-infinity` when every
    /// entry is `-infinity` or the range is empty.
    static func logSumExp(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>) -> Double {
        let m = max(row, range)
        guard m > -Float.infinity else { return -.infinity }
        if m == .infinity { return .infinity }
        var sum: Double = 0
        for i in range { sum += Double(Foundation.exp(row[i] - m)) }
        return Double(m) + Foundation.log(sum)
    }

    /// `log_softmax(row)[index]` for one entry.
    static func logProbability(_ row: UnsafeBufferPointer<Float>, at index: Int, logSumExp lse: Double) -> Double {
        let v = row[index]
        guard v > -Float.infinity, lse > -.infinity else { return -.infinity }
        return Double(v) - lse
    }

    /// Replaces `row` by `log_softmax(row)` in place; returns the log-normaliser.
    @discardableResult
    static func logSoftmaxInPlace(_ row: UnsafeMutableBufferPointer<Float>) -> Double {
        let lse = logSumExp(UnsafeBufferPointer(row), 0..<row.count)
        if lse == -.infinity { return lse }
        let shift = Float(lse)
        for i in 0..<row.count { row[i] -= shift }
        return lse
    }

    /// The `k` largest entries of `row`, best first, ties in index order (a single pass with a
    /// small insertion-sorted buffer; `k` is the beam width plus one).
    static func topK(_ row: UnsafeBufferPointer<Float>, _ k: Int) -> [(index: Int, value: Float)] {
        let k = Swift.min(k, row.count)
        var top: [(index: Int, value: Float)] = []
        top.reserveCapacity(k + 1)
        guard k > 0 else { return top }
        for i in 0..<row.count {
            let v = row[i]
            if top.count == k {
                // Strictly greater than the current worst; equal values keep the earlier index.
                guard v > top[k - 1].value || (top[k - 1].value.isNaN && !v.isNaN) else { continue }
                top.removeLast()
            }
            var pos = top.count
            while pos > 0 && !(top[pos - 1].value >= v) { pos -= 1 }
            top.insert((i, v), at: pos)
        }
        return top
    }
}

/// A small, fast, seedable generator (SplitMix64) so that sampling is reproducible.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    /// Creates a generator whose output is fully determined by `seed`.
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Draws tokens from `softmax(logits / temperature)` with a reusable scratch buffer.
struct TemperatureSampler {
    private var weights: [Double] = []

    /// Samples one index of `row` with probability proportional to `exp(row[i] / temperature)`.
    /// Suppressed (`-infinity`) entries are never drawn. Falls back to `argmax` when every entry
    /// is suppressed.
    mutating func sample<G: RandomNumberGenerator>(_ row: UnsafeBufferPointer<Float>, temperature: Double,
                                                    using generator: inout G) -> Int {
        let n = row.count
        if weights.count < n { weights = [Double](repeating: 0, count: n) }
        let m = LogitMath.max(row, 0..<n)
        guard m > -Float.infinity else { return LogitMath.argmax(row) }
        let invT = 1 / temperature
        var total: Double = 0
        weights.withUnsafeMutableBufferPointer { w in
            for i in 0..<n {
                let v = row[i]
                let e = v > -Float.infinity ? Foundation.exp((Double(v) - Double(m)) * invT) : 0
                total += e
                w[i] = total
            }
        }
        let target = Double.random(in: 0..<1, using: &generator) * total
        return weights.withUnsafeBufferPointer { w -> Int in
            // First cumulative weight strictly above the target (binary search).
            var lo = 0, hi = n - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if w[mid] > target { hi = mid } else { lo = mid + 1 }
            }
            // Never return a zero-weight entry (possible only through rounding at the edges).
            var i = lo
            while i > 0 && row[i] == -Float.infinity { i -= 1 }
            while i < n - 1 && row[i] == -Float.infinity { i += 1 }
            return i
        }
    }
}
