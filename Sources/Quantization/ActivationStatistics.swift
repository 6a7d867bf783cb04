import Foundation
import WhisperEngine

/// A streaming histogram of |x| over log-spaced bins, exact counts, bounded memory.
///
/// Bins are read straight off the IEEE-754 bit pattern: the exponent and the top
/// `AbsHistogram.subBitsPerOctave` mantissa bits of |x| form the bin key, so each octave
/// `[2^e, 2^(e+1))` is split into 32 equal-width bins (about 96 bins per decade, relative
/// width at most 1/32). The covered range is `[2^-27, 2^14)` (about 7.5e-9 to 16384);
/// smaller magnitudes (zeros included) fall into an underflow bin, larger ones, infinities
/// and NaNs into an overflow bin. The update costs one shift, one subtraction and a clamp.
public struct AbsHistogram: Sendable, Equatable {
    /// Mantissa bits used below the exponent: 2^5 = 32 bins per octave.
    public static let subBitsPerOctave = 5
    /// Lowest covered power of two (2^-27 ≈ 7.45e-9, below 1e-8).
    public static let lowestExponent = -27
    /// Highest covered power of two, exclusive (2^14 = 16384, above 1e4).
    public static let highestExponent = 14
    /// Number of bins strictly inside the covered range.
    public static let innerBinCount = (highestExponent - lowestExponent) << subBitsPerOctave
    /// Total bins: underflow, the inner bins, overflow.
    public static let binCount = innerBinCount + 2
    /// The bin key (bit pattern shifted right) of the lowest covered value.
    static let lowestKey = Int32((127 + lowestExponent) << subBitsPerOctave)
    static let shift = Int32(23 - subBitsPerOctave)

    /// Counts per bin: index 0 is underflow, `binCount - 1` overflow.
    public private(set) var counts: [UInt64]

    /// An empty histogram.
    public init() {
        counts = [UInt64](repeating: 0, count: AbsHistogram.binCount)
    }

    /// A histogram with the given counts (as read from a file); `nil` if the count of bins is wrong.
    public init?(counts: [UInt64]) {
        guard counts.count == AbsHistogram.binCount else { return nil }
        self.counts = counts
    }

    /// Total number of values counted.
    public var total: UInt64 { counts.reduce(0, &+) }

    /// The bin index of one value (the hot-path formula, exposed for tests).
    @inline(__always)
    public static func binIndex(_ value: Float) -> Int {
        let key = Int32(bitPattern: value.bitPattern & 0x7fff_ffff) >> shift
        let idx = key - lowestKey + 1
        return Int(min(max(idx, 0), Int32(binCount - 1)))
    }

    /// Lower edge of bin `index` (0 for the underflow bin).
    public static func lowerEdge(_ index: Int) -> Float {
        if index <= 0 { return 0 }
        let key = UInt32(Int(lowestKey) + index - 1)
        return Float(bitPattern: key << UInt32(shift))
    }

    /// Upper edge of bin `index` (infinity for the overflow bin).
    public static func upperEdge(_ index: Int) -> Float {
        if index >= binCount - 1 { return .infinity }
        return lowerEdge(index + 1)
    }

    /// Counts every |x| of `values`.
    public mutating func add(_ values: UnsafeBufferPointer<Float>) {
        guard let base = values.baseAddress, values.count > 0 else { return }
        let n = values.count
        let last = Int32(AbsHistogram.binCount - 1)
        let offset = AbsHistogram.lowestKey - 1
        let shift = AbsHistogram.shift
        counts.withUnsafeMutableBufferPointer { c in
            let cb = c.baseAddress!
            base.withMemoryRebound(to: UInt32.self, capacity: n) { bits in
                for i in 0..<n {
                    let key = Int32(bitPattern: bits[i] & 0x7fff_ffff) &>> shift
                    let idx = min(max(key &- offset, 0), last)
                    cb[Int(idx)] &+= 1
                }
            }
        }
    }

    /// Adds the counts of `other`.
    public mutating func merge(_ other: AbsHistogram) {
        for i in counts.indices { counts[i] &+= other.counts[i] }
    }

    /// The `q`-quantile (0...1) of the counted |x|, interpolated linearly inside its bin;
    /// its error is at most the width of that bin (1/32 of its lower edge inside the range).
    /// `nil` when nothing was counted. In the overflow bin the lower edge (16384) is returned.
    public func quantile(_ q: Double) -> Double? {
        let n = total
        guard n > 0 else { return nil }
        // Rank of the quantile among the sorted values, 0-based, as a continuous position.
        let target = min(max(q, 0), 1) * Double(n)
        var below: UInt64 = 0
        for (i, c) in counts.enumerated() where c > 0 {
            if Double(below + c) >= target {
                let lo = Double(AbsHistogram.lowerEdge(i))
                if i == AbsHistogram.binCount - 1 { return lo }
                let hi = Double(AbsHistogram.upperEdge(i))
                let fraction = (target - Double(below)) / Double(c)
                return lo + (hi - lo) * min(max(fraction, 0), 1)
            }
            below += c
        }
        return Double(AbsHistogram.lowerEdge(AbsHistogram.binCount - 1))
    }

    /// The median of the counted |x| (see `quantile(_:)`).
    public var median: Double? { quantile(0.5) }

    /// The mean of x² over the counted values, each taken at its bin's midpoint (within about 3 %
    /// inside the covered range; the overflow bin counts as its lower edge); `nil` when nothing was counted.
    public var meanSquare: Double? {
        let n = total
        guard n > 0 else { return nil }
        var sum = 0.0
        for (i, c) in counts.enumerated() where c > 0 && i > 0 {
            let lo = Double(AbsHistogram.lowerEdge(i))
            let mid = i == AbsHistogram.binCount - 1 ? lo : (lo + Double(AbsHistogram.upperEdge(i))) / 2
            sum += Double(c) * mid * mid
        }
        return sum / Double(n)
    }
}

/// What the statistics keep about one linear layer: aggregates only.
public struct LayerActivationStatistics: Sendable, Equatable {
    /// Layer name (`Linear.name`).
    public let name: String
    /// Input features of the layer.
    public let inFeatures: Int
    /// Output features of the layer.
    public let outFeatures: Int
    /// Histogram of |output| over every element seen.
    public internal(set) var outputHistogram: AbsHistogram
    /// Output elements seen (rows × outFeatures, summed over calls).
    public internal(set) var outputElementCount: UInt64
    /// Input rows seen (tokens or frames).
    public internal(set) var inputRowCount: UInt64
    /// Per input feature, Σ x² over every input row seen.
    public internal(set) var inputSquareSums: [Double]
    /// Per input feature, max |x| over every input row seen.
    public internal(set) var inputAbsMax: [Float]

    /// Empty statistics for a layer of the given shape.
    public init(name: String, inFeatures: Int, outFeatures: Int) {
        self.name = name
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        outputHistogram = AbsHistogram()
        outputElementCount = 0
        inputRowCount = 0
        inputSquareSums = [Double](repeating: 0, count: inFeatures)
        inputAbsMax = [Float](repeating: 0, count: inFeatures)
    }

    /// Statistics with every field given (the file reader); `nil` if the sizes disagree.
    public init?(name: String, inFeatures: Int, outFeatures: Int, outputHistogram: AbsHistogram,
                 outputElementCount: UInt64, inputRowCount: UInt64,
                 inputSquareSums: [Double], inputAbsMax: [Float]) {
        guard inputSquareSums.count == inFeatures, inputAbsMax.count == inFeatures else { return nil }
        self.name = name
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.outputHistogram = outputHistogram
        self.outputElementCount = outputElementCount
        self.inputRowCount = inputRowCount
        self.inputSquareSums = inputSquareSums
        self.inputAbsMax = inputAbsMax
    }

    /// The layer's sensitivity as myQASR defines it: the median of |output| over all
    /// elements of all samples (from the histogram); 0 when nothing was seen.
    public var medianAbsOutput: Double { outputHistogram.median ?? 0 }

    /// E‖y‖² per row: `outFeatures` times the mean square output (from the histogram); 0 when nothing was seen.
    public var outputEnergy: Double { Double(outFeatures) * (outputHistogram.meanSquare ?? 0) }

    /// Per input feature, E[x²] (the diagonal of the input second moment); zeros when no row was seen.
    public var inputMeanSquare: [Double] {
        guard inputRowCount > 0 else { return [Double](repeating: 0, count: inFeatures) }
        let n = Double(inputRowCount)
        return inputSquareSums.map { $0 / n }
    }

    /// Folds one call's activations in.
    mutating func add(input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int,
                      scratch: inout [Float]) {
        outputHistogram.add(output)
        outputElementCount &+= UInt64(output.count)
        guard rows > 0, let x = input.baseAddress else { return }
        inputRowCount &+= UInt64(rows)
        let k = inFeatures
        // Per-call sums in Float (at most a few thousand rows), then folded into Double.
        if scratch.count < 2 * k { scratch = [Float](repeating: 0, count: 2 * k) }
        scratch.withUnsafeMutableBufferPointer { s in
            let sq = s.baseAddress!, mx = s.baseAddress! + k
            sq.update(repeating: 0, count: k)
            inputAbsMax.withUnsafeBufferPointer { m in mx.update(from: m.baseAddress!, count: k) }
            for r in 0..<rows {
                let row = x + r * k
                for i in 0..<k {
                    let v = row[i]
                    sq[i] += v * v
                    mx[i] = max(mx[i], abs(v))
                }
            }
            inputSquareSums.withUnsafeMutableBufferPointer { d in
                for i in 0..<k { d[i] += Double(sq[i]) }
            }
            inputAbsMax.withUnsafeMutableBufferPointer { m in m.baseAddress!.update(from: mx, count: k) }
        }
    }

    /// Adds the counts and moments of `other` (same layer, same shape).
    mutating func merge(_ other: LayerActivationStatistics) {
        outputHistogram.merge(other.outputHistogram)
        outputElementCount &+= other.outputElementCount
        inputRowCount &+= other.inputRowCount
        for i in 0..<inFeatures {
            inputSquareSums[i] += other.inputSquareSums[i]
            inputAbsMax[i] = max(inputAbsMax[i], other.inputAbsMax[i])
        }
    }
}

/// Errors of the statistics collector.
public enum ActivationStatisticsError: Error, Equatable, CustomStringConvertible {
    /// Two statistics sets disagree on a layer's shape.
    case shapeMismatch(layer: String, expected: [Int], found: [Int])
    /// Two statistics sets come from different source models.
    case modelMismatch(expected: String, found: String)
    /// One statistics set keeps second moments and the other does not.
    case secondMomentsMismatch(expected: Bool)
    /// The two sets keep second moments on blocks of different sizes.
    case momentBlockMismatch(expected: Int, found: Int)

    /// A one-line explanation.
    public var description: String {
        switch self {
        case let .shapeMismatch(layer, expected, found):
            return "statistics for layer \(layer) have shape \(found), expected \(expected)"
        case let .modelMismatch(expected, found):
            return "statistics were gathered on model \(found), not on \(expected)"
        case let .secondMomentsMismatch(expected):
            return expected ? "these statistics keep second moments; the others do not"
                : "the other statistics keep second moments; these do not"
        case let .momentBlockMismatch(expected, found):
            return "these statistics keep second moments on blocks of \(expected) features (0: whole), the others on \(found)"
        }
    }
}

/// The personalisation statistics: an `ActivationObserver` that keeps, per linear layer,
/// a histogram of |output| (for the median, the layer's sensitivity) and the diagonal
/// second moment and max |x| of each input feature (for calibration without audio), and,
/// when asked, each layer's input second moment (`InputCovariance`, for compensated rounding).
///
/// Aggregates only: no audio, feature, token or text survives an `observe` call. Memory is
/// bounded by the model's shape (about 10.5 KB per layer plus 12 bytes per input feature,
/// and what `InputCovariance.keptByteCount(widths:blockSize:)` states for the second
/// moments), whatever the amount of audio seen. Every element is counted (no subsampling):
/// the histogram update is a shift and a clamp per element. Thread-safe (one lock).
public final class ActivationStatistics: ActivationObserver, @unchecked Sendable {
    /// Identity of the model the activations come from (see `ModelIdentity`).
    public let modelIdentity: String
    /// Each layer's input second moment, for compensated rounding, when kept.
    public let secondMoments: InputCovariance?
    private let lock = NSLock()
    private var layerTable: [String: LayerActivationStatistics] = [:]
    private var order: [String] = []
    private var samples = 0
    private var scratch: [Float] = []
    private var shapeError: ActivationStatisticsError?

    /// Empty statistics for activations of the model identified by `modelIdentity`; with a
    /// `momentBlockSize`, each layer's input second moment is gathered too, on diagonal blocks
    /// of that many features (0: whole matrices; see `InputCovariance`).
    public init(modelIdentity: String, momentBlockSize: Int? = nil) {
        self.modelIdentity = modelIdentity
        secondMoments = momentBlockSize.map { InputCovariance(blockSize: $0) }
    }

    /// Statistics with the given layers and sample count (the file reader).
    public init(modelIdentity: String, sampleCount: Int, layers: [LayerActivationStatistics],
                secondMoments: InputCovariance? = nil) {
        self.modelIdentity = modelIdentity
        self.secondMoments = secondMoments
        samples = sampleCount
        for l in layers {
            layerTable[l.name] = l
            order.append(l.name)
        }
    }

    /// Folds one linear layer's activations in (the network calls this).
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>,
                        rows: Int) {
        guard rows > 0 else { return }
        secondMoments?.observe(layer: layer, input: input, output: output, rows: rows)
        let inFeatures = input.count / rows, outFeatures = output.count / rows
        lock.lock()
        defer { lock.unlock() }
        if layerTable[layer] == nil {
            layerTable[layer] = LayerActivationStatistics(name: layer, inFeatures: inFeatures, outFeatures: outFeatures)
            order.append(layer)
        }
        guard layerTable[layer]!.inFeatures == inFeatures, layerTable[layer]!.outFeatures == outFeatures else {
            if shapeError == nil {
                shapeError = .shapeMismatch(layer: layer,
                                            expected: [layerTable[layer]!.outFeatures, layerTable[layer]!.inFeatures],
                                            found: [outFeatures, inFeatures])
            }
            return
        }
        layerTable[layer]!.add(input: input, output: output, rows: rows, scratch: &scratch)
    }

    /// Counts one more utterance (call after each utterance has been run through the network).
    public func finishSample() {
        lock.lock()
        samples += 1
        lock.unlock()
    }

    /// Utterances folded in.
    public var sampleCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return samples
    }

    /// Layer statistics in the order the layers were first seen (network order).
    public var layers: [LayerActivationStatistics] {
        lock.lock()
        defer { lock.unlock() }
        return order.map { layerTable[$0]! }
    }

    /// The statistics of one layer, if it was seen.
    public func layer(_ name: String) -> LayerActivationStatistics? {
        lock.lock()
        defer { lock.unlock() }
        return layerTable[name]
    }

    /// Per layer, the median of |output| (the myQASR sensitivity).
    public var sensitivities: [String: Double] {
        lock.lock()
        defer { lock.unlock() }
        return layerTable.mapValues { $0.medianAbsOutput }
    }

    /// The first shape inconsistency seen by `observe` (a layer called with two shapes), if any.
    public var observationError: ActivationStatisticsError? {
        lock.lock()
        defer { lock.unlock() }
        return shapeError
    }

    /// Adds everything `other` holds (another utterance, another session) to this set.
    /// Throws if `other` comes from another model, disagrees on a layer's shape, or keeps
    /// second moments when this set does or the other way round (nothing is merged then).
    /// `other`'s second moments move here (`InputCovariance.merge`): it holds none afterwards.
    public func merge(_ other: ActivationStatistics) throws {
        guard other.modelIdentity == modelIdentity else {
            throw ActivationStatisticsError.modelMismatch(expected: modelIdentity, found: other.modelIdentity)
        }
        guard (other.secondMoments == nil) == (secondMoments == nil) else {
            throw ActivationStatisticsError.secondMomentsMismatch(expected: secondMoments != nil)
        }
        if let mine = secondMoments?.blockSize, let theirs = other.secondMoments?.blockSize, mine != theirs {
            throw ActivationStatisticsError.momentBlockMismatch(expected: mine, found: theirs)
        }
        let theirs = other.layers, theirSamples = other.sampleCount
        lock.lock()
        defer { lock.unlock() }
        for l in theirs {
            if let mine = layerTable[l.name],
               mine.inFeatures != l.inFeatures || mine.outFeatures != l.outFeatures {
                throw ActivationStatisticsError.shapeMismatch(layer: l.name, expected: [mine.outFeatures, mine.inFeatures],
                                                              found: [l.outFeatures, l.inFeatures])
            }
        }
        for l in theirs {
            if layerTable[l.name] == nil {
                layerTable[l.name] = l
                order.append(l.name)
            } else {
                layerTable[l.name]!.merge(l)
            }
        }
        samples += theirSamples
        if let theirs = other.secondMoments { secondMoments?.merge(theirs) }
    }

    /// An independent copy (arrays shared until either side changes).
    public func copy() -> ActivationStatistics {
        lock.lock()
        let layers = order.map { layerTable[$0]! }, samples = self.samples
        lock.unlock()
        return ActivationStatistics(modelIdentity: modelIdentity, sampleCount: samples, layers: layers,
                                    secondMoments: secondMoments?.copy())
    }

    /// Forgets everything seen.
    public func reset() {
        lock.lock()
        layerTable = [:]
        order = []
        samples = 0
        shapeError = nil
        lock.unlock()
        secondMoments?.reset()
    }
}
