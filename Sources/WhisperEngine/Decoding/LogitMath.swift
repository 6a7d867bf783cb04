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

    // Unoptimised (debug) builds run generic SIMD code very slowly, so they take the scalar
    // paths below; optimised builds take the vectorised ones. Tests check both agree.

    /// Largest value in `row[range]`, `-infinity` for an empty range.
    @inline(__always)
    static func max(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>) -> Float {
        #if DEBUG
        return maxScalar(row, range)
        #else
        return maxVectorised(row, range)
        #endif
    }

    /// `max` one entry at a time.
    static func maxScalar(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>) -> Float {
        var m = -Float.infinity
        for i in range where row[i] > m { m = row[i] }
        return m
    }

    /// `max` eight lanes at a time.
    static func maxVectorised(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>) -> Float {
        guard let base = row.baseAddress, !range.isEmpty else { return -.infinity }
        var i = range.lowerBound
        let end = range.upperBound
        var m = -Float.infinity
        if end - i >= 8 {
            var lanes = SIMD8<Float>(repeating: -.infinity)
            let raw = UnsafeRawPointer(base)
            while i + 8 <= end {
                let v = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                lanes = pointwiseMax(lanes, v)
                i += 8
            }
            m = lanes.max()
        }
        while i < end {
            if base[i] > m { m = base[i] }
            i += 1
        }
        return m
    }

    /// `exp(x)` for eight lanes of `x <= 0` (Cephes-style range reduction and polynomial,
    /// relative error about 1e-7); lanes below -87 (and `-infinity`) give exactly 0.
    @inline(__always)
    static func expNonPositive(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let clamped = pointwiseMax(x, SIMD8(repeating: -87))
        // Round to nearest with the 1.5 * 2^23 trick; the integer then sits in t's low bits.
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let t = clamped * 1.442_695_04 + magic
        let n = t - magic
        var r = clamped - n * 0.693_359_375
        r = r + n * 2.121_944_4e-4
        var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
        p = p * r + 1.398_199_950_7e-3
        p = p * r + 8.333_451_907_3e-3
        p = p * r + 4.166_579_589_4e-2
        p = p * r + 1.666_666_545_9e-1
        p = p * r + 5.000_000_120_1e-1
        let y = p * r * r + r + 1
        let bits = (unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        var result = y * unsafeBitCast(bits, to: SIMD8<Float>.self)
        result.replace(with: 0, where: x .< -87)
        return result
    }

    /// `sum(exp(row[range] - shift))` for `shift >= max(row[range])`.
    @inline(__always)
    static func sumExp(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>, shift: Float) -> Double {
        #if DEBUG
        return sumExpScalar(row, range, shift: shift)
        #else
        return sumExpVectorised(row, range, shift: shift)
        #endif
    }

    /// `sumExp` one entry at a time, in double precision.
    static func sumExpScalar(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>, shift: Float) -> Double {
        var total: Double = 0
        for i in range where row[i] > -Float.infinity { total += Foundation.exp(Double(row[i] - shift)) }
        return total
    }

    /// `sumExp` eight lanes at a time, accumulated in double precision every 512 entries.
    static func sumExpVectorised(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>, shift: Float) -> Double {
        guard let base = row.baseAddress, !range.isEmpty else { return 0 }
        var i = range.lowerBound
        let end = range.upperBound
        var total: Double = 0
        let raw = UnsafeRawPointer(base)
        let s = SIMD8<Float>(repeating: shift)
        while i + 8 <= end {
            var acc = SIMD8<Float>(repeating: 0)
            var k = 0
            while k < 64 && i + 8 <= end {
                acc += expNonPositive(raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - s)
                i += 8
                k += 1
            }
            total += Double(acc.sum())
        }
        while i < end {
            let v = base[i]
            if v > -Float.infinity { total += Double(Foundation.exp(v - shift)) }
            i += 1
        }
        return total
    }

    /// `log(sum(exp(row[range])))`, computed stably; `-infinity` when every entry is
    /// `-infinity` or the range is empty.
    static func logSumExp(_ row: UnsafeBufferPointer<Float>, _ range: Range<Int>) -> Double {
        let m = max(row, range)
        guard m > -Float.infinity else { return -.infinity }
        if m == .infinity { return .infinity }
        return Double(m) + Foundation.log(sumExp(row, range, shift: m))
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
    private var weights: [Float] = []

    /// Samples one index of `row` with probability proportional to `exp(row[i] / temperature)`.
    /// Suppressed (`-infinity`) entries are never drawn. Falls back to `argmax` when every entry
    /// is suppressed.
    mutating func sample<G: RandomNumberGenerator>(_ row: UnsafeBufferPointer<Float>, temperature: Double,
                                                    using generator: inout G) -> Int {
        let n = row.count
        if weights.count < n { weights = [Float](repeating: 0, count: n) }
        let m = LogitMath.max(row, 0..<n)
        guard m > -Float.infinity, let source = row.baseAddress else { return LogitMath.argmax(row) }
        let invT = Float(1 / temperature)
        return weights.withUnsafeMutableBufferPointer { w -> Int in
            // Unnormalised probabilities exp((x - max) / T), eight at a time in optimised builds.
            var i = 0
            #if !DEBUG
            let dst = UnsafeMutableRawPointer(w.baseAddress!)
            let src = UnsafeRawPointer(source)
            let shift = SIMD8<Float>(repeating: m), scale = SIMD8<Float>(repeating: invT)
            while i + 8 <= n {
                let x = src.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                dst.storeBytes(of: LogitMath.expNonPositive((x - shift) * scale), toByteOffset: i * 4, as: SIMD8<Float>.self)
                i += 8
            }
            #endif
            while i < n {
                let x = row[i]
                w[i] = x > -Float.infinity ? Float(Foundation.exp(Double(x - m) * Double(invT))) : 0
                i += 1
            }
            var total: Double = 0
            for j in 0..<n { total += Double(w[j]) }
            let target = Double.random(in: 0..<1, using: &generator) * total
            var running: Double = 0
            var last = -1
            for j in 0..<n where w[j] > 0 {
                running += Double(w[j])
                last = j
                if running > target { return j }
            }
            return last    // rounding left the target at the very top: the last drawable entry
        }
    }
}
