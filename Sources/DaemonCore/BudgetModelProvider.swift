import Foundation
import Quantization
import Units
import WhisperEngine

/// A model chosen for a memory budget, with what the daemon reports about it.
public struct ProvidedModel: Sendable {
    /// The model to transcribe with.
    public var model: WhisperModel
    /// Bits per weight of every linear layer, by layer name (32 = float).
    public var layerBits: [String: Int]
    /// Bytes the weights occupy (`weights.byteSize`).
    public var weightBytes: Int
    /// Whether `weightBytes` fits the budget asked for (always true without a budget).
    public var budgetMet: Bool
    /// The precision it was made at.
    public var plan: PrecisionPlan
    /// Personal statistics samples its widths were chosen from (0: none).
    public var statisticsSamples: Int
    /// Where a quantized build's layers live: "memory", or "an unnamed file in DIR" (`LayerFile`), with the reason
    /// when a file was asked for and could not be used.
    public var layerStorage = "memory"

    /// Creates a description of a provided model.
    public init(model: WhisperModel, layerBits: [String: Int], weightBytes: Int, budgetMet: Bool,
                plan: PrecisionPlan, statisticsSamples: Int = 0) {
        self.model = model
        self.layerBits = layerBits
        self.weightBytes = weightBytes
        self.budgetMet = budgetMet
        self.plan = plan
        self.statisticsSamples = statisticsSamples
    }

    /// "float", "4-bit", or "mixed 3-4-bit" (`Precision.describe`).
    public var precision: String { Precision.describe(layerBits) }
}

/// What the model service asks `BudgetModelProvider` for.
public struct ModelRequest: Sendable {
    /// Model name or directory, or a `.myq` file.
    public var name: String
    /// Memory budget for the weights in bytes; nil means unlimited.
    public var budgetBytes: Int?
    /// Read the model files again (a reload), rather than reuse the model in service.
    public var reloadFromDisk: Bool
    /// The model in service, made from `servingName`: reused when the plan does not change, and its float
    /// network when it is the float model.
    public var serving: ProvidedModel?
    /// The `name` `serving` was made from.
    public var servingName: String?
    /// No layer below this width, above the budget if need be, and no personal statistics (0: the budget
    /// decides). The model service asks for it when the model without statistics failed its self-check at the
    /// budget after a `forget`, which must not leave the personal model in service.
    public var lowestBits: Int

    /// Creates a request.
    public init(name: String, budgetBytes: Int?, reloadFromDisk: Bool, serving: ProvidedModel? = nil,
                servingName: String? = nil, lowestBits: Int = 0) {
        self.name = name
        self.budgetBytes = budgetBytes
        self.reloadFromDisk = reloadFromDisk
        self.serving = serving
        self.servingName = servingName
        self.lowestBits = lowestBits
    }
}

/// A model the provider made (or the one in service, reused), not yet checked.
public struct Candidate: Sendable {
    /// The model and its description.
    public var provided: ProvidedModel
    /// The full-precision network it was quantized from (nil for the float model itself, a reused model or a
    /// `.myq` file): what the self-check measures it against. Held only until the check.
    public var fullPrecision: WhisperModel?

    /// Creates a candidate.
    public init(provided: ProvidedModel, fullPrecision: WhisperModel?) {
        self.provided = provided
        self.fullPrecision = fullPrecision
    }
}

/// Why the provider cannot serve a model for a request.
public enum ModelProviderError: Error, Equatable, CustomStringConvertible {
    /// Even with every layer at the lowest width the model is larger than the budget.
    case impossibleBudget(model: String, budget: Int, smallest: Int, lowestBits: Int)
    /// The quantized weights do not take the bytes the plan promised (an internal inconsistency).
    case sizeMismatch(planned: Int, actual: Int)
    /// A quantized model file (`.myq`) is served as it is and is larger than the budget.
    case fileAboveBudget(model: String, bytes: Int, budget: Int)
    /// The personal statistics were forgotten while a personal build ran again (in memory, its layer file having
    /// failed); a build without them follows.
    case statisticsForgotten

    /// A one-line explanation naming the smallest reachable size.
    public var description: String {
        switch self {
        case let .impossibleBudget(model, budget, smallest, lowestBits):
            return "a budget of \(ByteSize.formatExact(budget)) cannot be met: the smallest reachable size of "
                + "\(model), with every layer at \(lowestBits) bits, is \(ByteSize.formatExact(smallest))"
        case let .sizeMismatch(planned, actual):
            return "internal error: the quantized weights take \(actual) bytes, not the \(planned) planned"
        case let .fileAboveBudget(model, bytes, budget):
            return "\(model) is served as quantized in the file and takes \(ByteSize.formatExact(bytes)), above the "
                + "budget of \(ByteSize.formatExact(budget)); raise the budget or make the file again with "
                + "`myqasr quantize --budget`"
        case .statisticsForgotten:
            return "the personal statistics were forgotten during the build"
        }
    }
}

/// The precision a model is served at.
public enum PrecisionPlan: Sendable, Equatable, CustomStringConvertible {
    /// The full-precision weights.
    case float
    /// Every linear layer at one width.
    case uniform(bits: Int)
    /// The widths of a quantized model file (`.myq`, made by `myqasr quantize`), as stored.
    case file
    /// The personal model under `budget` bytes (`Quantizer.personalise`) from the statistics of `samples`
    /// utterances (`PersonalStatistics`).
    case personalised(budget: Int, samples: Int)

    /// Whether the weights are quantized (any plan but `float`).
    public var isQuantized: Bool { self != .float }

    /// "float", "4-bit", "as in the file" or "personalised from 12 utterances".
    public var description: String {
        switch self {
        case .float: return "float"
        case let .uniform(bits): return "\(bits)-bit"
        case .file: return "as in the file"
        case let .personalised(_, samples): return "personalised from \(samples) utterance\(samples == 1 ? "" : "s")"
        }
    }
}

/// What a model's weights take at each precision the provider can serve, worked out once per load from the
/// float network's shapes (exact `QuantizedMatrix` sizes, scales and unquantized tensors included); the
/// network may hold its matrices mapped (`WhisperModel.loadMapped`): only their shapes are read.
public struct ModelFootprint: Sendable, Equatable {
    /// Bytes of the float weights (`weights.byteSize`).
    public var floatBytes: Int
    /// Bytes of the whole model with every linear layer at a width, by width.
    public var uniformBytes: [Int: Int]

    /// Creates a footprint from known sizes.
    public init(floatBytes: Int, uniformBytes: [Int: Int]) {
        self.floatBytes = floatBytes
        self.uniformBytes = uniformBytes
    }

    /// The footprint of a float network, for `widths`, with scales per `groupSize` input features.
    public init(floatWeights weights: WhisperWeights, widths: [Int], groupSize: Int) throws {
        let layers = weights.linearLayers
        let floatBytes = weights.floatByteSize
        let fixed = weights.byteSize - layers.reduce(0) { $0 + $1.weight.byteSize }
        let allocator = try BitAllocator(
            layers: layers.map { AllocationLayer(name: $0.name, outFeatures: $0.outFeatures, inFeatures: $0.inFeatures, sensitivity: 0) },
            fixedBytes: fixed, groupSize: groupSize)
        var sizes: [Int: Int] = [:]
        for bits in widths { sizes[bits] = try allocator.uniformBytes(bits: bits) }
        self.init(floatBytes: floatBytes, uniformBytes: sizes)
    }
}

/// The model service's builder: makes the float model when it fits the budget (or there is none), else a
/// quantized model that fits: with personal statistics of this model (`PersonalStatistics`, gathered on the
/// full-precision model from live utterances), the personal model `Quantizer.personalise` makes from them (what
/// `myqasr quantize --budget --stats` makes: widths under the budget, codes by compensated rounding from the
/// statistics' bounded second moments); without, every layer at the highest uniform width whose total bytes fit,
/// rounded to nearest. A budget below the all-2-bit size is refused with `ModelProviderError.impossibleBudget`. A
/// model named by the path of a quantized model file (a personalised model made by `myqasr quantize`, told by
/// content, `ModelSource`) is served as stored, when it fits the budget
/// (`ModelProviderError.fileAboveBudget`).
///
/// It keeps no model: the model in service comes with each request (`ModelRequest.serving`) and is reused when the
/// plan does not change. Memory: the float32 weights are loaded only to be served. Everything else reads the model
/// file mapped, float16 matrices in place (`WhisperModel.loadMapped`): the footprint (shapes only), the identity and
/// a quantized build, which widens one layer (at most `QuantizationOptions.chunkBytes` of it) at a time, each
/// layer's file pages leaving the resident set once read (`HalfMatrix`). The mapped network goes with the
/// candidate to the self-check, whose passes release their pages in the same way, and is then dropped; so a
/// build holds the quantized weights plus a bounded scratch (tiny.en under 24 MiB: docs/daemon.md, "Memory").
/// Thread-safe; meant to be called off the serving path.
public final class BudgetModelProvider: @unchecked Sendable {  // @unchecked: the caches are guarded by `lock`
    /// The widths tried, highest first (`QuantizedMatrix` has no 7-bit format).
    public static let uniformWidths = [8, 6, 5, 4, 3, 2]

    private let groupSize: Int
    private let lock = NSLock()
    // Guarded by `lock`: the footprint of the last model loaded (by name), worked out once per load.
    private var footprint: (name: String, modelName: String, identity: String, value: ModelFootprint)?
    private let personalStatistics: (@Sendable (String) -> ActivationStatistics?)?
    private let layerDirectory: String?
    private let giveWay: GiveWay?

    /// Creates a provider; quantized layers get one scale per `groupSize` input features.
    /// `personalStatistics` returns the statistics gathered on the model with the given `ModelIdentity`, if any: a
    /// copy the build owns (a personal build drops their second moments as it quantizes the layers that read them).
    /// With `layerDirectory` (on disk), a quantized build writes its layers to an unnamed file there and maps them
    /// (`LayerFile`); without, or where that fails, they are kept in memory. A build gives way to other work with
    /// `giveWay` (`QuantizationOptions.giveWay`; the daemon's: `BackgroundWork.givingWay`).
    public init(groupSize: Int = QuantizedMatrix.defaultGroupSize,
                personalStatistics: (@Sendable (String) -> ActivationStatistics?)? = nil, layerDirectory: String? = nil,
                giveWay: GiveWay? = nil) {
        self.groupSize = groupSize
        self.personalStatistics = personalStatistics
        self.layerDirectory = layerDirectory
        self.giveWay = giveWay
    }

    /// The precision to serve at: float when it fits (or without a budget), else the highest uniform width that
    /// fits. Throws `impossibleBudget` (naming the smallest reachable size) when even the lowest does not.
    /// With `lowestBits` above 0: the highest width that fits and is at least that, else the lowest width that is
    /// (float above 8), over the budget.
    public static func plan(model: String, budget: Int?, footprint: ModelFootprint, lowestBits: Int = 0) throws
        -> PrecisionPlan
    {
        guard let budget, footprint.floatBytes > budget else { return .float }
        for bits in uniformWidths where bits >= lowestBits {
            if let bytes = footprint.uniformBytes[bits], bytes <= budget { return .uniform(bits: bits) }
        }
        if lowestBits > 0 {
            return uniformWidths.filter { $0 >= lowestBits }.min().map { .uniform(bits: $0) } ?? .float
        }
        let lowest = uniformWidths.last!
        throw ModelProviderError.impossibleBudget(model: model, budget: budget,
                                                  smallest: footprint.uniformBytes[lowest] ?? footprint.floatBytes,
                                                  lowestBits: lowest)
    }

    /// Returns the model for `request`: the model in service (`request.serving`) when the plan does not change
    /// and the files need not be read again, else a new one. An impossible budget is refused before any work.
    public func provide(_ request: ModelRequest) throws -> ProvidedModel {
        try candidate(for: request).provided
    }

    /// The model for `request` with the full-precision network it came from (for the self-check).
    public func candidate(for request: ModelRequest) throws -> Candidate {
        let name = request.name
        if try ModelLocator().source(for: name).isQuantized { return try provideFile(request) }
        let fresh = request.reloadFromDisk
        let serving = request.servingName == name && !fresh ? request.serving : nil
        // The float network in service is the source; otherwise the files are read (once per build).
        let floatModel = serving?.plan == .float ? serving?.model : nil
        // The source network with its float16 matrices left in the file's mapping, mapped at most once per call, and
        // the position tables of the model in service (a quantized build keeps them as they are).
        var mappedModel: WhisperModel?
        func mapped() throws -> WhisperModel {
            if let mappedModel { return mappedModel }
            let model = try WhisperModel.loadMapped(name, sharingWith: request.serving?.model)
            mappedModel = model
            return model
        }
        var knownFootprint = locked { self.footprint }
        if knownFootprint?.name != name || fresh { knownFootprint = nil }

        // The footprint (and so the plan) needs the network's shapes once per load (and its identity, a pass over
        // every weight, when there may be statistics).
        if knownFootprint == nil {
            let model = try floatModel ?? mapped()
            // The identity (a pass over every weight) only matters when there may be statistics for it.
            knownFootprint = (name, model.name, personalStatistics == nil ? "" : ModelIdentity.of(model),
                              try ModelFootprint(floatWeights: model.weights, widths: Self.uniformWidths, groupSize: groupSize))
            locked { self.footprint = knownFootprint }
        }
        let sizes = knownFootprint!.value
        var plan = try Self.plan(model: knownFootprint!.modelName, budget: request.budgetBytes, footprint: sizes,
                                 lowestBits: request.lowestBits)
        let statistics = plan == .float || request.lowestBits > 0 ? nil : personalStatistics?(knownFootprint!.identity)
        if case .uniform = plan, let statistics, let budget = request.budgetBytes {
            plan = .personalised(budget: budget, samples: statistics.sampleCount)
        }

        if var provided = serving, provided.plan == plan {
            provided.budgetMet = request.budgetBytes.map { provided.weightBytes <= $0 } ?? true
            return Candidate(provided: provided, fullPrecision: nil)
        }

        var provided: ProvidedModel
        switch plan {
        case .file:   // `plan` never returns it: files take `provideFile`.
            return try provideFile(request)
        case .float:
            let source = try floatModel ?? WhisperModel.load(name)
            var bits: [String: Int] = [:]
            for layer in source.weights.linearLayers { bits[layer.name] = 32 }
            provided = ProvidedModel(model: source, layerBits: bits, weightBytes: source.weights.byteSize,
                                     budgetMet: request.budgetBytes.map { sizes.floatBytes <= $0 } ?? true, plan: plan)
            return Candidate(provided: provided, fullPrecision: nil)
        case let .uniform(bits):
            let source = try floatModel ?? mapped()
            let (result, storage) = try quantizeWithLayerFile { file in
                var options = QuantizationOptions(target: .uniform(bits: bits), groupSize: groupSize, calibrate: false)
                options.layerFile = file
                options.giveWay = giveWay
                return try Quantizer.quantize(model: source, statistics: nil, options: options)
            }
            let planned = sizes.uniformBytes[bits] ?? 0
            let actual = result.weights.byteSize
            guard actual == planned else { throw ModelProviderError.sizeMismatch(planned: planned, actual: actual) }
            var layerBits: [String: Int] = [:]
            for layer in result.report.layers { layerBits[layer.name] = layer.bits }
            provided = ProvidedModel(model: source.withWeights(result.weights), layerBits: layerBits, weightBytes: actual,
                                     budgetMet: request.budgetBytes.map { actual <= $0 } ?? true, plan: plan)
            provided.layerStorage = storage
        case let .personalised(budget, samples):
            let source = try floatModel ?? mapped()
            // One thread: the build runs on the model service's idle-priority thread and stays there. The statistics
            // are this build's own copy: their moments go as the layers are done (so a second try, after the layer
            // file failed, asks for them again).
            var unused = statistics
            let (result, storage) = try quantizeWithLayerFile { file in
                guard let own = unused ?? personalStatistics?(knownFootprint!.identity) else {
                    throw ModelProviderError.statisticsForgotten
                }
                unused = nil
                return try Quantizer.personalise(model: source, statistics: own, budget: budget, threads: 1,
                                                 releasingMoments: true, layerFile: file, giveWay: giveWay)
            }
            let actual = result.weights.byteSize
            guard actual <= budget else { throw ModelProviderError.sizeMismatch(planned: budget, actual: actual) }
            var layerBits: [String: Int] = [:]
            for layer in result.report.layers { layerBits[layer.name] = layer.bits }
            provided = ProvidedModel(model: source.withWeights(result.weights), layerBits: layerBits, weightBytes: actual,
                                     budgetMet: true, plan: plan, statisticsSamples: samples)
            provided.layerStorage = storage
        }
        // The full-precision network (mapped, or the float model in service) is kept only as long as the check needs it.
        return Candidate(provided: provided, fullPrecision: try floatModel ?? mapped())
    }

    /// Runs `quantize` with the layer file for this build (`layerDirectory`), or with none when there is no
    /// directory, it is in memory, or the file cannot be made; a build whose writes fail (a full disk) runs again in
    /// memory. Returns the result and where its layers are (`ProvidedModel.layerStorage`).
    private func quantizeWithLayerFile(_ quantize: (LayerFile?) throws -> QuantizationResult) throws
        -> (QuantizationResult, String)
    {
        guard let layerDirectory else { return (try quantize(nil), "memory") }
        let file: LayerFile?
        do {
            file = try LayerFile.open(directory: layerDirectory)
        } catch {
            return (try quantize(nil), "memory (\(error))")
        }
        guard let file else { return (try quantize(nil), "memory (\(layerDirectory) is in memory itself)") }
        do {
            return (try quantize(file), "an unnamed file in \(layerDirectory)")
        } catch let error as LayerFileError {
            return (try quantize(nil), "memory (\(error))")
        }
    }

    /// A `.myq` file (read again on `reloadFromDisk`), served as stored when it fits the budget.
    private func provideFile(_ request: ModelRequest) throws -> Candidate {
        if var serving = request.serving, request.servingName == request.name, serving.plan == .file, !request.reloadFromDisk {
            if let budget = request.budgetBytes, serving.weightBytes > budget {
                throw ModelProviderError.fileAboveBudget(model: serving.model.name, bytes: serving.weightBytes, budget: budget)
            }
            serving.budgetMet = true
            return Candidate(provided: serving, fullPrecision: nil)
        }
        let model = try QuantizedModelFile.loadModel(path: request.name)
        var bits: [String: Int] = [:]
        for layer in model.weights.linearLayers { bits[layer.name] = (layer.weight as? QuantizedMatrix)?.bits ?? 32 }
        let provided = ProvidedModel(model: model, layerBits: bits, weightBytes: model.weights.byteSize, budgetMet: true,
                                     plan: .file)
        if let budget = request.budgetBytes, provided.weightBytes > budget {
            throw ModelProviderError.fileAboveBudget(model: provided.model.name, bytes: provided.weightBytes, budget: budget)
        }
        locked { footprint = nil }
        // The check measures the file against its source, mapped (page cache, not a float32 copy); a file whose
        // source is not installed cannot be served at all (its vocabulary comes from there).
        let source = try QuantizedModelFile.load(path: request.name).metadata.sourceModelName
        return Candidate(provided: provided, fullPrecision: try WhisperModel.loadMapped(source, sharingWith: model))
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}
