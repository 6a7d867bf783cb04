import CKernels
import Foundation
import WhisperEngine

/// What the quantizer is asked to produce.
public struct QuantizationOptions: Sendable {
    /// How the widths are chosen.
    public enum Target: Sendable, Equatable {
        /// myQASR: the sensitivity-ordered sweep down to a byte budget (whole model, scales included).
        case budget(Int)
        /// Every layer at one width.
        case uniform(bits: Int)
    }

    /// How the widths are chosen.
    public var target: Target
    /// How a budget is shared between the layers.
    public var widths: WidthRule
    /// Calibration objective.
    public var objective: CalibrationObjective
    /// Which end of the sensitivity ranking loses bits first.
    public var order: SensitivityOrder
    /// Input features per scale (a `QuantizedMatrix.supportedGroupSizes` value); nil: the default for the target,
    /// the rounding and the model's size (`defaultGroupSize(for:rounding:uniform4Bytes:)`), settled when it is
    /// quantized.
    public var groupSize: Int?
    /// The width every layer starts the sweep at.
    public var startBits: Int
    /// Search clip ratios (`false`, the default: plain round-to-nearest with clip ratio 1, which
    /// scored better on tiny.en with the signed-scale grid, see docs/myqasr-method.md).
    public var calibrate: Bool
    /// With moments, search a clip ratio per group rather than per layer.
    public var perGroupClip: Bool
    /// Candidate clip ratios.
    public var clipGrid: [Float]
    /// How codes are chosen once the scales are set.
    public var rounding: RoundingMethod
    /// Store every layer whose inputs are whole 32-blocks rotated (`QuantizedMatrix.rotated`).
    public var rotate: Bool
    /// Threads for compensated rounding and the clip search (the daemon's background builds use 1, on its
    /// idle-priority thread).
    public var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    /// Float32 bytes of a layer's weights held at once: a larger layer (tiny.en's and base's token embedding
    /// only, 80 / 106 MB as float32) is quantized this much at a time (at least 128 rows), a bounded run of
    /// whole chunks of compensated rounding's rows (`ErrorCompensatedRounding.rowChunk`), so the codes are the
    /// same. Not with the clip search or widths by expected error, which read whole layers (offline only). 4 MiB:
    /// with 8 MiB, one chunk of the embedding with its codes made the daemon's start-up peak (tiny.en under 24 MiB:
    /// VmHWM 74-75 MiB, against 65-67 MiB with 4 MiB and 62.5-64 MiB with 2 MiB); 2 MiB splits tiny.en's 1536-wide
    /// layers too, and each chunk factorises the second moment again (about 0.4 s more per personal build).
    /// The models are the same to the byte.
    public var chunkBytes: Int = 4 << 20
    /// Compensated rounding drops each second moment from the statistics once the last layer that reads it is
    /// quantized (`InputCovariance.release`): for a caller that owns the statistics and does not read them after,
    /// as the daemon's builds do (tiny.en's moments are 11.5 MiB, which the build's peak would otherwise hold to
    /// its end). The model is the same.
    public var releasesMomentsAsUsed = false
    /// Where the quantized layers go as they are made (nil: memory of their own). With a file, a build's resident
    /// set holds none of the model it makes, only the chunk at work (`LayerFile`). The model is the same.
    public var layerFile: LayerFile?
    /// For a background build that gives way to other work (the daemon's, to its transcriptions,
    /// `BackgroundWork.givingWay`): runs each chunk of rows (its float32 rows made, quantized), when the build may
    /// go on, with the flag that stops it early (compensated rounding checks it between its row chunks; it then
    /// throws `DecodingError.cancelled`), and runs it again as it likes. The model is the same.
    public var giveWay: GiveWay?

    /// The group size `target` gets unless told otherwise, on a model whose every layer at 4 bits in groups of
    /// `QuantizedMatrix.defaultGroupSize` (32) takes `uniform4Bytes` (the whole model): 32, except under a budget
    /// where groups of 64 save scale bytes that let the sweep keep more layers one width higher. With codes rounded
    /// to nearest they always do (226 word errors against 233 at uniform 4's size on tiny.en,
    /// docs/myqasr-method.md section 10). With compensated rounding the finer scales win where they fit every layer
    /// at 4 bits (at uniform 4's size, the larger corpus's five voices, five builds: 879.0 word errors at group 32
    /// against 885.6 at group 64; sections 14 and 21), and the coarser ones below that, where groups of 32 leave
    /// layers at 3 bits that groups of 64 keep at 4 (at uniform 3's size: 1053.4 against 1010.0, section 21).
    public static func defaultGroupSize(for target: Target, rounding: RoundingMethod, uniform4Bytes: Int) -> Int {
        switch (target, rounding) {
        case (.budget, .nearest): return 64
        case let (.budget(bytes), .compensated) where bytes < uniform4Bytes: return 64
        default: return QuantizedMatrix.defaultGroupSize
        }
    }

    /// Options with the defaults: no clip search (cosine objective when searching), descending
    /// order (measured, see docs/myqasr-method.md), the target's group size for the model
    /// (`defaultGroupSize(for:rounding:uniform4Bytes:)`), start at 8 bits, rotated layers (measured, same document).
    public init(target: Target, widths: WidthRule = .sensitivity, objective: CalibrationObjective = .cosine,
                order: SensitivityOrder = .descending,
                groupSize: Int? = nil, startBits: Int = 8, calibrate: Bool = false,
                perGroupClip: Bool = false, clipGrid: [Float] = Calibrator.defaultGrid,
                rounding: RoundingMethod = .nearest, rotate: Bool = true) {
        self.target = target
        self.widths = widths
        self.objective = objective
        self.order = order
        self.groupSize = groupSize
        self.startBits = startBits
        self.calibrate = calibrate
        self.perGroupClip = perGroupClip
        self.clipGrid = clipGrid
        self.rounding = rounding
        self.rotate = rotate
    }
}

/// Runs a chunk of a build's rows, with the flag that stops it early (`QuantizationOptions.giveWay`).
public typealias GiveWay = @Sendable (_ chunk: (Cancellation) throws -> QuantizedMatrix) throws -> QuantizedMatrix

/// How a budget is shared between the layers (`QuantizationOptions.widths`).
public enum WidthRule: Sendable, Equatable {
    /// myQASR's sweep (`BitAllocator.allocate(budget:startBits:)`): layers lowered one width at a time
    /// in order of their median |output| (`QuantizationOptions.order`).
    case sensitivity
    /// The widths that minimise the layers' summed relative expected output error on the user's
    /// activations (`ExpectedError`, `BitAllocator.allocate(budget:errors:adjacentWidths:startBits:)`);
    /// with `adjacentWidths`, on at most two adjacent widths (the uniformity constraint).
    case expectedError(adjacentWidths: Bool)
}

/// How each weight's code is chosen on its group's grid.
public enum RoundingMethod: String, Sendable, CaseIterable, Codable {
    /// Round to the nearest code.
    case nearest
    /// Error-compensated rounding from the layer's input second moment (`ErrorCompensatedRounding`,
    /// GPTQ); needs the inputs' second moments (`InputCovariance`: from calibration audio, or
    /// statistics that kept them).
    case compensated
}

/// One layer of the quantization report.
public struct QuantizedLayerReport: Sendable, Equatable {
    /// Layer name.
    public var name: String
    /// Shape `[outFeatures, inFeatures]`.
    public var outFeatures: Int, inFeatures: Int
    /// Chosen width.
    public var bits: Int
    /// Bytes of the quantized weight matrix (codes plus scales).
    public var bytes: Int
    /// Bytes the matrix had as float32.
    public var floatBytes: Int
    /// Median |output| from the statistics (nil when quantized without statistics).
    public var sensitivity: Double?
    /// Chosen clip ratio (per-layer; the mean when searched per group).
    public var clipRatio: Float
    /// Calibration objective at clip 1 and at the chosen clip (nil when not calibrated).
    public var unclippedError: Double?, calibratedError: Double?
    /// The relative expected output error at the chosen width (`ExpectedError`; nil unless widths were chosen by it).
    public var expectedError: Double?
}

/// The whole report: per layer, and the totals.
public struct QuantizationReport: Sendable, Equatable {
    /// Layers in network order.
    public var layers: [QuantizedLayerReport]
    /// Bytes of everything not quantized (norms, biases, positions).
    public var fixedBytes: Int
    /// Resident bytes of the quantized weights (`weights.byteSize` of the result).
    public var totalBytes: Int
    /// Resident bytes of the float model.
    public var floatBytes: Int
    /// The budget asked for, if any.
    public var budget: Int?
    /// Whether clip ratios came from captured activations (exact) or from moments.
    public var exactCalibration: Bool
}

/// A quantized network ready to write or use.
public struct QuantizationResult {
    /// The quantized weights (every linear layer a `QuantizedMatrix`).
    public var weights: WhisperWeights
    /// Metadata for `QuantizedModelFile.write`.
    public var metadata: QuantizedModelMetadata
    /// What was done, per layer.
    public var report: QuantizationReport
}

/// Errors of the quantization pipeline.
public enum QuantizerError: Error, Equatable, CustomStringConvertible {
    /// The statistics were gathered on another model.
    case statisticsForAnotherModel(model: String, statistics: String)
    /// The statistics never saw a layer the model has.
    case layerNotInStatistics(String)
    /// A budget or calibration from moments was asked for without statistics.
    case statisticsRequired(reason: String)
    /// The model is already quantized.
    case modelNotFloat(layer: String)
    /// Compensated rounding was asked for without input second moments.
    case covarianceRequired
    /// Compensated rounding and the clip search were both asked for.
    case compensatedWithClipSearch
    /// Internal consistency check: the allocator's accounting differs from the real bytes.
    case accountingMismatch(allocated: Int, actual: Int)

    /// A one-line explanation.
    public var description: String {
        switch self {
        case let .statisticsForAnotherModel(model, statistics):
            return "the statistics were gathered on \(statistics), not on \(model); run `myqasr stats` with this model"
        case let .layerNotInStatistics(layer):
            return "the statistics have nothing for layer \(layer); were they gathered with this model?"
        case let .statisticsRequired(reason):
            return "activation statistics are required to \(reason)"
        case let .modelNotFloat(layer):
            return "layer \(layer) is already quantized; quantize from the full-precision model"
        case .covarianceRequired:
            return "compensated rounding needs the inputs' second moments: quantize from calibration audio, "
                + "or from statistics gathered with `myqasr stats`"
        case .compensatedWithClipSearch:
            return "compensated rounding sets its own scales; it cannot be combined with the clip search"
        case let .accountingMismatch(allocated, actual):
            return "internal error: allocated \(allocated) bytes but the quantized weights hold \(actual)"
        }
    }
}

/// The myQASR pipeline: float model + statistics → per-layer widths (sensitivity sweep or
/// uniform) → calibrated clip ratios → packed weights, metadata and a report.
public enum Quantizer {
    /// Moment bytes a build releases between two trims of the C heap (`releasesMomentsAsUsed`).
    static let trimAfterReleasedBytes = 2 << 20

    /// Quantizes `model`.
    /// - Parameters:
    ///   - statistics: activation statistics of this model (required for a budget, or to calibrate
    ///     without `activations`); their model identity must match.
    ///   - activations: captured input rows for exact calibration (else the statistics' moments are used).
    ///   - covariance: the layers' input second moments, for `RoundingMethod.compensated`
    ///     (default: the statistics' own `secondMoments`, if they kept them).
    ///   - decoderSecondMoments: with compensated rounding, called once the encoder is quantized,
    ///     with the weights so far (quantized encoder, float decoder), to gather the decoder's
    ///     second moments from the calibration audio again (GPTQ's sequential mode); without it
    ///     the decoder uses `covariance` from the float model.
    ///   - progress: called with one line per layer as it is done.
    public static func quantize(model: WhisperModel, statistics: ActivationStatistics?, options: QuantizationOptions,
                                activations: ActivationReservoir? = nil, covariance: InputCovariance? = nil,
                                decoderSecondMoments: ((WhisperWeights) throws -> InputCovariance)? = nil,
                                progress: ((String) -> Void)? = nil) throws -> QuantizationResult {
        var result = try quantize(name: model.name, weights: model.weights, statistics: statistics, options: options,
                                  activations: activations, covariance: covariance,
                                  decoderSecondMoments: decoderSecondMoments, progress: progress)
        result.metadata.sourceVocabularyDigest = ModelIdentity.vocabularyDigest(model)
        return result
    }

    /// Quantizes the network `weights` of the model called `name` (see the other overload).
    public static func quantize(name: String, weights floatWeights: WhisperWeights, statistics: ActivationStatistics?,
                                options: QuantizationOptions, activations: ActivationReservoir? = nil,
                                covariance: InputCovariance? = nil,
                                decoderSecondMoments: ((WhisperWeights) throws -> InputCovariance)? = nil,
                                progress: ((String) -> Void)? = nil) throws -> QuantizationResult {
        OpenBLASThreads.keepOnCallingThread()   // the clip search and the rounding split their own work
        var covariance = covariance ?? statistics?.secondMoments
        if options.rounding == .compensated {
            guard covariance != nil else { throw QuantizerError.covarianceRequired }
            guard !options.calibrate else { throw QuantizerError.compensatedWithClipSearch }
        }
        let layers = floatWeights.linearLayers
        for l in layers where !(l.weight is FloatMatrix || l.weight is HalfMatrix) {
            throw QuantizerError.modelNotFloat(layer: l.name)
        }
        let identity = ModelIdentity.of(name: name, weights: floatWeights)
        if let statistics, statistics.modelIdentity != identity {
            throw QuantizerError.statisticsForAnotherModel(model: identity, statistics: statistics.modelIdentity)
        }
        var layerStats: [String: LayerActivationStatistics] = [:]
        if let statistics {
            for l in layers {
                guard let s = statistics.layer(l.name) else { throw QuantizerError.layerNotInStatistics(l.name) }
                layerStats[l.name] = s
            }
        }
        if statistics == nil {
            if case .budget = options.target { throw QuantizerError.statisticsRequired(reason: "allocate bits under a budget") }
            if options.calibrate && activations == nil {
                throw QuantizerError.statisticsRequired(reason: "calibrate clip ratios without captured activations")
            }
        }

        let floatBytes = floatWeights.floatByteSize
        let fixedBytes = floatWeights.byteSize - layers.reduce(0) { $0 + $1.weight.byteSize }
        let allocationLayers = layers.map {
            AllocationLayer(name: $0.name, outFeatures: $0.outFeatures, inFeatures: $0.inFeatures,
                            sensitivity: layerStats[$0.name]?.medianAbsOutput ?? 0)
        }
        let groupSize = try options.groupSize ?? QuantizationOptions.defaultGroupSize(
            for: options.target, rounding: options.rounding,
            uniform4Bytes: BitAllocator(layers: allocationLayers, fixedBytes: fixedBytes,
                                        groupSize: QuantizedMatrix.defaultGroupSize).uniformBytes(bits: 4))
        let allocator = try BitAllocator(layers: allocationLayers, fixedBytes: fixedBytes, groupSize: groupSize,
                                         order: options.order)
        let allocation: BitAllocation
        var budget: Int?
        var expectedErrors: [[Double]]?
        switch options.target {
        case let .budget(bytes):
            budget = bytes
            switch options.widths {
            case .sensitivity:
                allocation = try allocator.allocate(budget: bytes, startBits: options.startBits)
            case let .expectedError(adjacentWidths):
                let errors = layers.map { layer in
                    let s = layerStats[layer.name]!
                    return ExpectedError.relative(
                        values: floatValues(of: layer), outFeatures: layer.outFeatures,
                        inFeatures: layer.inFeatures, groupSize: groupSize,
                        rotated: options.rotate && QuantizedMatrix.canRotate(inFeatures: layer.inFeatures),
                        secondMoment: covariance?.moment(of: layer.name), meanSquare: s.inputMeanSquare,
                        outputEnergy: s.outputEnergy, widths: allocator.allowedBits)
                }
                expectedErrors = errors
                allocation = try allocator.allocate(budget: bytes, errors: errors, adjacentWidths: adjacentWidths,
                                                    startBits: options.startBits)
            }
        case let .uniform(bits):
            allocation = try allocator.uniform(bits: bits)
        }

        let calibrator = try Calibrator(objective: options.objective, grid: options.clipGrid, refine: true,
                                        perGroup: options.perGroupClip && activations == nil)
        var replacements: [String: any WeightMatrix] = [:]
        var reports: [QuantizedLayerReport] = []
        // The last layer that reads each second moment (layers may share one: `InputCovariance.key(for:)`).
        var releasedMomentBytes = 0
        var lastReader: [String: Int] = [:]
        for (i, layer) in layers.enumerated() { lastReader[InputCovariance.key(for: layer.name)] = i }
        for (i, layer) in layers.enumerated() {
            if let decoderSecondMoments, options.rounding == .compensated, i > 0,
               WhisperWeights.isDecoderLayer(layer.name), !WhisperWeights.isDecoderLayer(layers[i - 1].name) {
                // The decoder's second moments again, now that the encoder it listens to is quantized.
                covariance = try decoderSecondMoments(floatWeights.replacing(replacements))
            }
            let bits = allocation.bits[i]
            let rotated = options.rotate && QuantizedMatrix.canRotate(inFeatures: layer.inFeatures)
            var calibration: LayerCalibration?
            if options.calibrate {
                // The clip search reads the whole layer as float32 (offline only).
                let floatLayer = layer.weight is FloatMatrix ? layer : layer.replacingWeight(
                    FloatMatrix(outFeatures: layer.outFeatures, inFeatures: layer.inFeatures, values: floatValues(of: layer)))
                if let activations, case let (rows, n) = activations.inputs(of: layer.name), n > 0 {
                    calibration = try calibrator.calibrate(layer: floatLayer, bits: bits, groupSize: groupSize,
                                                           inputs: rows, rows: n, rotated: rotated)
                } else if let s = layerStats[layer.name] {
                    calibration = try calibrator.calibrate(layer: floatLayer, bits: bits, groupSize: groupSize,
                                                           meanSquare: s.inputMeanSquare, rotated: rotated)
                } else {
                    throw QuantizerError.statisticsRequired(reason: "calibrate layer \(layer.name), which no activation reached")
                }
            }
            let groups = (layer.inFeatures + groupSize - 1) / groupSize
            let ratios = calibration?.clipRatios(outFeatures: layer.outFeatures, groupsPerRow: groups)
                ?? [Float](repeating: 1, count: layer.outFeatures * groups)
            let compensates = options.rounding == .compensated && (covariance?.rows(of: layer.name) ?? 0) > 0
            var compensated = false
            // Whole chunks of compensated rounding's rows, so that every row is rounded beside the same rows as in
            // one piece (the float sums of its products, and so the codes, are then the same to the bit).
            let rowChunk = ErrorCompensatedRounding.rowChunk
            let rowsPerChunk = options.calibrate ? layer.outFeatures
                : max(1, options.chunkBytes / (4 * layer.inFeatures) / rowChunk) * rowChunk
            let q = try quantizeRows(of: layer, rowsPerChunk: rowsPerChunk, bits: bits, groupSize: groupSize,
                                     rotated: rotated, into: options.layerFile) { rows in
                // A chunk's rows as float32 and the second moment's blocks are made in the chunk (again if it runs
                // again): nothing of it is held while the build waits, and no copy outlives its use.
                func chunk(_ cancellation: Cancellation?) throws -> QuantizedMatrix {
                    let values = floatValues(of: layer, rows: rows)
                    if compensates, let covariance, let matrix = try ErrorCompensatedRounding(threads: options.threads).quantize(
                        values: values, outFeatures: rows.count, inFeatures: layer.inFeatures, bits: bits,
                        groupSize: groupSize, secondMoment: covariance.moment(of: layer.name)!,
                        rows: covariance.rows(of: layer.name), rotated: rotated, cancellation: cancellation) {
                        compensated = true
                        return matrix
                    }
                    return try QuantizedMatrix(quantizing: values, outFeatures: rows.count, inFeatures: layer.inFeatures,
                                               bits: bits, groupSize: groupSize,
                                               clipRatios: Array(ratios[rows.lowerBound * groups ..< rows.upperBound * groups]),
                                               rotated: rotated)
                }
                return try options.giveWay.map { try $0(chunk) } ?? chunk(nil)
            }
            replacements[layer.name] = q
            if options.releasesMomentsAsUsed, let covariance, lastReader[InputCovariance.key(for: layer.name)] == i {
                // The moments' pages back to the system once a few MiB of them are released: the C heap would keep
                // them, and the build would stay as large as the statistics it started with. Not after each one: a
                // trim also returns the layer's scratch, which the next layer faults in again.
                releasedMomentBytes += covariance.release(layer.name)
                if releasedMomentBytes >= Self.trimAfterReleasedBytes {
                    mq_release_free_heap()
                    releasedMomentBytes = 0
                }
            }
            let meanRatio = ratios.reduce(0, +) / Float(ratios.count)
            let report = QuantizedLayerReport(
                name: layer.name, outFeatures: layer.outFeatures, inFeatures: layer.inFeatures, bits: bits,
                bytes: q.byteSize, floatBytes: layer.outFeatures * layer.inFeatures * 4, sensitivity: layerStats[layer.name]?.medianAbsOutput,
                clipRatio: calibration?.groupClipRatios == nil ? (calibration?.clipRatio ?? 1) : meanRatio,
                unclippedError: calibration?.unclippedError, calibratedError: calibration?.calibratedError,
                expectedError: expectedErrors.map { $0[i][allocator.allowedBits.firstIndex(of: bits)!] })
            reports.append(report)
            progress?(String(format: "%@: %d bits, clip %.2f%@", layer.name, bits, report.clipRatio,
                             compensated ? ", compensated" : ""))
        }
        let weights = floatWeights.replacing(replacements)
        let actual = weights.byteSize
        guard actual == allocation.totalBytes else {
            throw QuantizerError.accountingMismatch(allocated: allocation.totalBytes, actual: actual)
        }
        let metadata = QuantizedModelMetadata(
            sourceModelName: name, sourceModelDigest: identity,
            statisticsDigest: statistics.map { StatisticsFile.digest($0) } ?? "none", groupSize: groupSize,
            sensitivities: layerStats.mapValues { $0.medianAbsOutput }, rounding: options.rounding)
        let report = QuantizationReport(layers: reports, fixedBytes: fixedBytes, totalBytes: actual, floatBytes: floatBytes,
                                        budget: budget, exactCalibration: activations != nil && options.calibrate)
        return QuantizationResult(weights: weights, metadata: metadata, report: report)
    }

    /// Rows `rows` (all by default) of a full-precision layer's weights as float32, `[rows.count, inFeatures]` (a
    /// `HalfMatrix` widened, its pages released: a copy; a whole `FloatMatrix`: its array, shared).
    private static func floatValues(of layer: Linear, rows: Range<Int>? = nil) -> [Float] {
        let rows = rows ?? 0..<layer.outFeatures, k = layer.inFeatures
        if let f = layer.weight as? FloatMatrix {
            return rows.count == layer.outFeatures ? f.values : Array(f.values[rows.lowerBound * k ..< rows.upperBound * k])
        }
        return (layer.weight as! HalfMatrix).floats(rows: rows)
    }

    /// Quantizes `layer` `rowsPerChunk` rows at a time: `quantize` returns each run of rows quantized (it reads them
    /// with `floatValues(of:rows:)`); their codes and scales are laid one after the other (rows are stored in order,
    /// `QuantizedMatrix`), so only one chunk's float32 rows are held at a time. One chunk: its matrix as returned.
    /// With `file`, the codes and scales go to it (each chunk's as it is made) and the matrix maps them.
    private static func quantizeRows(of layer: Linear, rowsPerChunk: Int, bits: Int, groupSize: Int, rotated: Bool,
                                     into file: LayerFile?, _ quantize: (_ rows: Range<Int>) throws -> QuantizedMatrix)
        throws -> QuantizedMatrix
    {
        let out = layer.outFeatures, k = layer.inFeatures
        if out <= rowsPerChunk {
            let matrix = try quantize(0..<out)
            return try file?.place(matrix) ?? matrix
        }
        let packedPerRow = QuantizedMatrix.packedByteCount(outFeatures: 1, inFeatures: k, bits: bits, groupSize: groupSize)
        let scalesPerRow = QuantizedMatrix.scaleByteCount(outFeatures: 1, inFeatures: k, groupSize: groupSize)
        // Each chunk quantized in turn and handed to `store` with its first row.
        func eachChunk(_ store: (_ chunk: QuantizedMatrix, _ firstRow: Int) throws -> Void) throws {
            for r0 in stride(from: 0, to: out, by: rowsPerChunk) {
                let range = r0 ..< min(out, r0 + rowsPerChunk)
                try store(try quantize(range), r0)
            }
        }
        if let file {
            return try file.matrix(outFeatures: out, inFeatures: k, bits: bits, groupSize: groupSize,
                                   rotated: rotated) { packedOffset, scalesOffset in
                try eachChunk { chunk, r0 in
                    try chunk.packed.withUnsafeBytes { try file.write($0, at: packedOffset + r0 * packedPerRow) }
                    try chunk.scales.withUnsafeBytes { try file.write($0, at: scalesOffset + r0 * scalesPerRow) }
                }
            }
        }
        var scales = [UInt8](repeating: 0, count: out * scalesPerRow)
        let packed = try ByteStorage(count: out * packedPerRow) { packedBytes in
            try scales.withUnsafeMutableBytes { scaleBytes in
                try eachChunk { chunk, r0 in
                    chunk.packed.withUnsafeBytes {
                        (packedBytes.baseAddress! + r0 * packedPerRow).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
                    }
                    chunk.scales.withUnsafeBytes {
                        (scaleBytes.baseAddress! + r0 * scalesPerRow).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
                    }
                }
            }
        }
        return try QuantizedMatrix(outFeatures: out, inFeatures: k, bits: bits, groupSize: groupSize, packed: packed,
                                   scales: ByteStorage(scales), rotated: rotated)
    }
}

extension Quantizer {
    /// The options of the model the daemon serves under `budget` from `statistics`: the defaults of
    /// `QuantizationOptions` for a budget, with compensated rounding when the statistics keep second
    /// moments (else rounded to nearest). `myqasr quantize --budget B --stats FILE` uses the same.
    public static func personalOptions(budget: Int, statistics: ActivationStatistics) -> QuantizationOptions {
        QuantizationOptions(target: .budget(budget), rounding: statistics.secondMoments == nil ? .nearest : .compensated)
    }

    /// The daemon's personal model: `model` (full precision) quantized under `budget` bytes from the
    /// user's `statistics` (gathered on this model) with `personalOptions(budget:statistics:)`, on `threads`
    /// threads (the codes do not depend on it), its layers written to `layerFile` when one is given, giving way to
    /// other work with `giveWay` (`QuantizationOptions.giveWay`).
    public static func personalise(model: WhisperModel, statistics: ActivationStatistics, budget: Int,
                                   threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                                   releasingMoments: Bool = false, layerFile: LayerFile? = nil,
                                   giveWay: GiveWay? = nil,
                                   progress: ((String) -> Void)? = nil) throws -> QuantizationResult {
        var options = personalOptions(budget: budget, statistics: statistics)
        options.threads = threads
        options.releasesMomentsAsUsed = releasingMoments
        options.layerFile = layerFile
        options.giveWay = giveWay
        return try quantize(model: model, statistics: statistics, options: options, progress: progress)
    }
}
