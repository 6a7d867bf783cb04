import Foundation
import WhisperEngine

/// The distance between a layer's float and quantized outputs that calibration minimises.
public enum CalibrationObjective: String, Sendable, CaseIterable, Codable {
    /// Cosine distance `1 - cos(y, ŷ)` (the paper's best variant; the default).
    case cosine
    /// Mean squared error `‖y - ŷ‖²`.
    case mse
}

/// Errors of calibration.
public enum CalibrationError: Error, Equatable, CustomStringConvertible {
    /// The input moments or activations do not match the layer's input width.
    case inputWidthMismatch(layer: String, expected: Int, found: Int)
    /// No input was ever seen for the layer.
    case noInputs(layer: String)
    /// The clip-ratio grid is empty or holds a ratio outside (0, 1].
    case badGrid([Float])
    /// The layer's weights are not float (calibration needs the full-precision weights).
    case notFloat(layer: String)

    /// A one-line explanation.
    public var description: String {
        switch self {
        case let .inputWidthMismatch(layer, expected, found):
            return "calibration inputs of layer \(layer) have \(found) features, the layer takes \(expected)"
        case let .noInputs(layer):
            return "no calibration inputs were seen for layer \(layer)"
        case let .badGrid(grid):
            return "clip-ratio grid \(grid) must be non-empty with every ratio in (0, 1]"
        case let .notFloat(layer):
            return "layer \(layer) is already quantized; calibrate from the full-precision model"
        }
    }
}

/// The calibrated clipping of one layer.
public struct LayerCalibration: Sendable, Equatable {
    /// Layer name.
    public var name: String
    /// Bits the layer is quantized to.
    public var bits: Int
    /// The best single clip ratio for the whole layer.
    public var clipRatio: Float
    /// Per-group clip ratios `[outFeatures * groupsPerRow]` when searched per group, else `nil`.
    public var groupClipRatios: [Float]?
    /// Objective value at clip ratio 1 (no clipping).
    public var unclippedError: Double
    /// Objective value of the chosen clipping.
    public var calibratedError: Double
    /// Whether the score came from real activations (`true`) or the diagonal moments.
    public var exact: Bool

    /// The clip ratios to hand to `QuantizedMatrix(quantizing:...clipRatios:)`.
    public func clipRatios(outFeatures: Int, groupsPerRow: Int) -> [Float] {
        groupClipRatios ?? [Float](repeating: clipRatio, count: outFeatures * groupsPerRow)
    }
}

/// Searches each layer's quantization scale (the clip ratio: |scale| = ratio · max|w_group| / 2^(bits-1))
/// that minimises the distance between the float and the quantized layer outputs. Weights
/// never change beyond rounding: only the scales move.
///
/// Two ways to score a candidate:
/// - from the statistics' diagonal input moments m_i = E[x_i²], no audio needed:
///   MSE ≈ Σ_o Σ_i m_i (W − Ŵ)²_oi and cosine ≈ 1 − Σ m W Ŵ / √(Σ m W² · Σ m Ŵ²)
///   (the expectation under E[x xᵀ] ≈ diag(m), bias left out);
/// - exactly, on input rows captured while the calibration audio ran through the float
///   network (`ActivationReservoir`): y = x Wᵀ + b against ŷ = x Ŵᵀ + b; cosine is averaged
///   over rows (tokens or frames), MSE over elements.
public struct Calibrator: Sendable {
    /// The default grid: 1.00, 0.98, …, 0.50.
    public static let defaultGrid: [Float] = (0...25).map { 1 - Float($0) * 0.02 }

    /// The objective.
    public var objective: CalibrationObjective
    /// Candidate clip ratios.
    public var grid: [Float]
    /// After the grid, also try the midpoints on either side of the best ratio.
    public var refine: Bool
    /// With moments, choose a ratio per group (each group's own error) instead of per layer.
    public var perGroup: Bool

    /// A calibrator; the grid must hold ratios in (0, 1].
    public init(objective: CalibrationObjective = .cosine, grid: [Float] = Calibrator.defaultGrid,
                refine: Bool = true, perGroup: Bool = false) throws {
        guard !grid.isEmpty, grid.allSatisfy({ $0 > 0 && $0 <= 1 }) else { throw CalibrationError.badGrid(grid) }
        self.objective = objective
        self.grid = grid
        self.refine = refine
        self.perGroup = perGroup
    }

    /// Calibrates `layer` at `bits` from the diagonal input moments `meanSquare[inFeatures]`;
    /// `rotated`: the candidates are rotated matrices (`QuantizedMatrix.rotated`).
    public func calibrate(layer: Linear, bits: Int, groupSize: Int, meanSquare: [Double],
                          rotated: Bool = false) throws -> LayerCalibration {
        guard let w = layer.weight as? FloatMatrix else { throw CalibrationError.notFloat(layer: layer.name) }
        return try calibrate(name: layer.name, weights: w.values, outFeatures: w.outFeatures, inFeatures: w.inFeatures,
                             bits: bits, groupSize: groupSize, meanSquare: meanSquare, rotated: rotated)
    }

    /// Calibrates raw weights `[outFeatures, inFeatures]` from diagonal input moments.
    public func calibrate(name: String, weights: [Float], outFeatures: Int, inFeatures: Int, bits: Int,
                          groupSize: Int, meanSquare: [Double], rotated: Bool = false) throws -> LayerCalibration {
        guard meanSquare.count == inFeatures else {
            throw CalibrationError.inputWidthMismatch(layer: name, expected: inFeatures, found: meanSquare.count)
        }
        let groups = (inFeatures + groupSize - 1) / groupSize
        let m = meanSquare.map(Float.init)
        // Per group, for one candidate: Σ m W Ŵ, Σ m W², Σ m Ŵ², Σ m (W − Ŵ)².
        func groupSums(_ ratios: [Float]) throws -> [SIMD4<Double>] {
            let q = try QuantizedMatrix(quantizing: weights, outFeatures: outFeatures, inFeatures: inFeatures,
                                        bits: bits, groupSize: groupSize, clipRatios: ratios, rotated: rotated).dequantized()
            var sums = [SIMD4<Double>](repeating: .zero, count: outFeatures * groups)
            weights.withUnsafeBufferPointer { wb in
                q.withUnsafeBufferPointer { qb in
                    m.withUnsafeBufferPointer { mb in
                        for r in 0..<outFeatures {
                            for g in 0..<groups {
                                let c0 = g * groupSize, c1 = min(inFeatures, c0 + groupSize)
                                var s = SIMD4<Float>.zero
                                for c in c0..<c1 {
                                    let a = wb[r * inFeatures + c], b = qb[r * inFeatures + c], mm = mb[c]
                                    let d = a - b
                                    s += SIMD4(mm * a * b, mm * a * a, mm * b * b, mm * d * d)
                                }
                                sums[r * groups + g] = SIMD4<Double>(Double(s[0]), Double(s[1]), Double(s[2]), Double(s[3]))
                            }
                        }
                    }
                }
            }
            return sums
        }
        func score(_ s: SIMD4<Double>) -> Double {
            switch objective {
            case .mse: return s[3]
            case .cosine:
                let denominator = (s[1] * s[2]).squareRoot()
                return denominator > 0 ? 1 - s[0] / denominator : (s[1] == s[2] ? 0 : 1)
            }
        }
        var bestGroup = [Float](repeating: 1, count: outFeatures * groups)
        var bestGroupScore = [Double](repeating: .infinity, count: outFeatures * groups)
        let best = try searchRatios { ratio in
            let sums = try groupSums([Float](repeating: ratio, count: outFeatures * groups))
            if perGroup {
                for i in sums.indices {
                    let s = score(sums[i])
                    if s < bestGroupScore[i] { bestGroupScore[i] = s; bestGroup[i] = ratio }
                }
            }
            return score(sums.reduce(SIMD4<Double>.zero, +)) / (objective == .mse ? Double(outFeatures) : 1)
        }
        var result = LayerCalibration(name: name, bits: bits, clipRatio: best.ratio, groupClipRatios: nil,
                                      unclippedError: best.unclipped, calibratedError: best.score, exact: false)
        if perGroup {
            result.groupClipRatios = bestGroup
            let sums = try groupSums(bestGroup)
            result.calibratedError = score(sums.reduce(SIMD4<Double>.zero, +)) / (objective == .mse ? Double(outFeatures) : 1)
        }
        return result
    }

    /// Calibrates `layer` at `bits` exactly, on captured input rows `inputs[rows, inFeatures]`;
    /// `rotated` as in the moments form.
    public func calibrate(layer: Linear, bits: Int, groupSize: Int, inputs: [Float], rows: Int,
                          rotated: Bool = false) throws -> LayerCalibration {
        guard let w = layer.weight as? FloatMatrix else { throw CalibrationError.notFloat(layer: layer.name) }
        guard rows > 0 else { throw CalibrationError.noInputs(layer: layer.name) }
        guard inputs.count == rows * layer.inFeatures else {
            throw CalibrationError.inputWidthMismatch(layer: layer.name, expected: layer.inFeatures,
                                                      found: inputs.count / rows)
        }
        let out = layer.outFeatures, inF = layer.inFeatures
        func outputs(_ matrix: any WeightMatrix) -> [Float] {
            var y = [Float](repeating: 0, count: rows * out)
            inputs.withUnsafeBufferPointer { x in
                y.withUnsafeMutableBufferPointer { yb in
                    matrix.multiply(x.baseAddress!, rows: rows, threads: ProcessInfo.processInfo.activeProcessorCount,
                                    into: yb.baseAddress!)
                    if let bias = layer.bias {
                        for r in 0..<rows { for o in 0..<out { yb[r * out + o] += bias[o] } }
                    }
                }
            }
            return y
        }
        let reference = outputs(w)
        func score(_ ratio: Float) throws -> Double {
            let q = try QuantizedMatrix(quantizing: w.values, outFeatures: out, inFeatures: inF, bits: bits,
                                        groupSize: groupSize, clipRatio: ratio, rotated: rotated).dequantized()
            let y = outputs(FloatMatrix(outFeatures: out, inFeatures: inF, values: q))
            return Self.distance(reference, y, rows: rows, width: out, objective: objective)
        }
        let best = try searchRatios(score)
        return LayerCalibration(name: layer.name, bits: bits, clipRatio: best.ratio, groupClipRatios: nil,
                                unclippedError: best.unclipped, calibratedError: best.score, exact: true)
    }

    /// The clip-ratio search both forms share: ratio 1 (unclipped), each grid ratio, then with `refine`
    /// half a grid step either side of the best so far, each ratio in (0, 1] scored once by `score`.
    private func searchRatios(_ score: (Float) throws -> Double) throws
        -> (ratio: Float, score: Double, unclipped: Double) {
        var bestRatio: Float = 1, bestScore = Double.infinity, unclipped = Double.nan
        var tried = Set<Float>()
        func tryRatio(_ ratio: Float) throws {
            guard ratio > 0, ratio <= 1, tried.insert(ratio).inserted else { return }
            let s = try score(ratio)
            if ratio == 1 { unclipped = s }
            if s < bestScore { bestScore = s; bestRatio = ratio }
        }
        try tryRatio(1)
        for r in grid { try tryRatio(r) }
        if refine, let step = Self.gridStep(grid) {
            let center = bestRatio
            try tryRatio(center - step / 2)
            try tryRatio(center + step / 2)
        }
        return (bestRatio, bestScore, unclipped)
    }

    /// The distance between float outputs `a` and quantized outputs `b`, both `[rows, width]`:
    /// mean over rows of the cosine distance, or the mean squared error per element.
    public static func distance(_ a: [Float], _ b: [Float], rows: Int, width: Int,
                                objective: CalibrationObjective) -> Double {
        precondition(a.count == rows * width && b.count == rows * width)
        var total = 0.0
        for r in 0..<rows {
            var dot = 0.0, na = 0.0, nb = 0.0, se = 0.0
            for c in 0..<width {
                let x = Double(a[r * width + c]), y = Double(b[r * width + c])
                dot += x * y; na += x * x; nb += y * y; se += (x - y) * (x - y)
            }
            switch objective {
            case .mse: total += se
            case .cosine:
                let den = (na * nb).squareRoot()
                total += den > 0 ? 1 - dot / den : (na == nb ? 0 : 1)
            }
        }
        return objective == .mse ? total / Double(rows * width) : total / Double(rows)
    }

    /// The smallest gap between neighbouring grid ratios, if the grid has two or more.
    static func gridStep(_ grid: [Float]) -> Float? {
        let s = Set(grid + [1]).sorted()
        guard s.count >= 2 else { return nil }
        return zip(s.dropFirst(), s).map { $0 - $1 }.min()
    }
}

/// Keeps, per linear layer, a bounded uniform sample (reservoir sampling, Algorithm R) of
/// the input rows the layer saw: the exact calibration data. Memory only, for the length of
/// one quantize run; it is never written anywhere. At most `capacity` rows per layer.
public final class ActivationReservoir: ActivationObserver, @unchecked Sendable {
    /// Rows kept per layer at most.
    public let capacity: Int
    private let lock = NSLock()
    private var rng: UInt64
    private var store: [String: (width: Int, seen: Int, rows: [Float])] = [:]

    /// A reservoir of at most `capacity` rows per layer; `seed` fixes which rows are kept.
    public init(capacity: Int = 256, seed: UInt64 = 0x6d79_7161_7372) {
        precondition(capacity > 0, "ActivationReservoir capacity must be positive")
        self.capacity = capacity
        rng = seed
    }

    private func next() -> UInt64 {
        // SplitMix64.
        rng &+= 0x9e37_79b9_7f4a_7c15
        var z = rng
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// Samples the layer's input rows (the network calls this).
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        guard rows > 0, let x = input.baseAddress else { return }
        let width = input.count / rows
        lock.lock()
        defer { lock.unlock() }
        var entry = store[layer] ?? (width: width, seen: 0, rows: [])
        guard entry.width == width else { return }
        store[layer] = nil   // keep the array uniquely referenced while it is edited
        for r in 0..<rows {
            let row = UnsafeBufferPointer(start: x + r * width, count: width)
            if entry.seen < capacity {
                entry.rows.append(contentsOf: row)
            } else {
                let j = Int(next() % UInt64(entry.seen + 1))
                if j < capacity {
                    entry.rows.withUnsafeMutableBufferPointer { dst in
                        (dst.baseAddress! + j * width).update(from: row.baseAddress!, count: width)
                    }
                }
            }
            entry.seen += 1
        }
        store[layer] = entry
    }

    /// The kept rows of `layer`, `[rows, inFeatures]`, and their count (0 if never seen).
    public func inputs(of layer: String) -> (values: [Float], rows: Int) {
        lock.lock()
        defer { lock.unlock() }
        guard let e = store[layer], e.width > 0 else { return ([], 0) }
        return (e.rows, e.rows.count / e.width)
    }

    /// Rows the layer has seen in total (kept or not).
    public func rowsSeen(by layer: String) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return store[layer]?.seen ?? 0
    }

    /// Floats held across all layers (the memory bound is `capacity` rows per layer).
    public var storedFloatCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return store.values.reduce(0) { $0 + $1.rows.count }
    }

    /// Drops every kept row.
    public func reset() {
        lock.lock()
        store = [:]
        lock.unlock()
    }
}

/// Forwards every observation to several observers (statistics and a reservoir at once).
public final class ObserverGroup: ActivationObserver {
    /// The observers, called in order.
    public let observers: [ActivationObserver]

    /// Groups `observers`.
    public init(_ observers: [ActivationObserver]) {
        self.observers = observers
    }

    /// Passes the call to each observer.
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        for o in observers { o.observe(layer: layer, input: input, output: output, rows: rows) }
    }
}
