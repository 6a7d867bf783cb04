import Foundation
import Quantization
import Units
import WhisperEngine

/// Why the provider cannot serve a model for a request.
public enum ModelProviderError: Error, Equatable, CustomStringConvertible {
    /// Even with every layer at the lowest width the model is larger than the budget.
    case impossibleBudget(model: String, budget: Int, smallest: Int, lowestBits: Int)
    /// The quantized weights do not take the bytes the plan promised (an internal inconsistency).
    case sizeMismatch(planned: Int, actual: Int)
    /// A quantized model file (`.myq`) is served as it is and is larger than the budget.
    case fileAboveBudget(model: String, bytes: Int, budget: Int)

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
    /// Widths per layer by myQASR's sensitivity sweep down to `budget` bytes, from the personal statistics of
    /// `samples` utterances (`PersonalStatistics`).
    case personalised(budget: Int, samples: Int)

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
/// float network's shapes (exact `QuantizedMatrix` sizes, scales and unquantized tensors included).
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
        let floatBytes = weights.byteSize
        let fixed = floatBytes - layers.reduce(0) { $0 + $1.weight.byteSize }
        let allocator = try BitAllocator(
            layers: layers.map { AllocationLayer(name: $0.name, outFeatures: $0.outFeatures, inFeatures: $0.inFeatures, sensitivity: 0) },
            fixedBytes: fixed, groupSize: groupSize)
        var sizes: [Int: Int] = [:]
        for bits in widths { sizes[bits] = try allocator.uniformBytes(bits: bits) }
        self.init(floatBytes: floatBytes, uniformBytes: sizes)
    }
}

/// The daemon's `ModelProvider`: serves the float model when it fits the budget (or there is none), else a
/// quantized model that fits: with personal statistics of this model (`PersonalStatistics`, gathered on the
/// full-precision model from live utterances), myQASR's per-layer widths from the sensitivity sweep down to the budget;
/// without, every layer at the highest uniform width whose total bytes fit. Either way round-to-nearest with
/// clip ratio 1 (compensated rounding needs input second moments, too large to keep in the daemon). A budget
/// below the all-2-bit size is refused with `ModelProviderError.impossibleBudget`. A model named by the path of a
/// quantized model file (a personalised model made by `myqasr quantize`, told by content, `ModelSource`) is
/// served as stored, when it fits the budget
/// (`ModelProviderError.fileAboveBudget`).
///
/// Memory: the float weights are kept only while they are served. When a quantized model is in service the
/// float network is released, so the budget bounds the weights the process holds; the next change of width
/// reads the model files again. Thread-safe; meant to be called off the serving path, one call at a time.
public final class BudgetModelProvider: @unchecked Sendable {
    /// The widths tried, highest first (`QuantizedMatrix` has no 7-bit format).
    public static let uniformWidths = [8, 6, 5, 4, 3, 2]

    private let groupSize: Int
    private let lock = NSLock()
    // Guarded by `lock`.
    private var float: (name: String, model: WhisperModel)?
    private var footprint: (name: String, modelName: String, identity: String, value: ModelFootprint)?
    private var served: (name: String, plan: PrecisionPlan, provided: ProvidedModel)?
    private let personalStatistics: (@Sendable (String) -> ActivationStatistics?)?

    /// Creates a provider with empty caches; quantized layers get one scale per `groupSize` input features.
    /// `personalStatistics` returns the statistics gathered on the model with the given `ModelIdentity`, if any.
    public init(groupSize: Int = QuantizedMatrix.defaultGroupSize,
                personalStatistics: (@Sendable (String) -> ActivationStatistics?)? = nil) {
        self.groupSize = groupSize
        self.personalStatistics = personalStatistics
    }

    /// The precision to serve at: float when it fits (or without a budget), else the highest uniform width that
    /// fits. Throws `impossibleBudget` (naming the smallest reachable size) when even the lowest does not.
    public static func plan(model: String, budget: Int?, footprint: ModelFootprint) throws -> PrecisionPlan {
        guard let budget, footprint.floatBytes > budget else { return .float }
        for bits in uniformWidths {
            if let bytes = footprint.uniformBytes[bits], bytes <= budget { return .uniform(bits: bits) }
        }
        let lowest = uniformWidths.last!
        throw ModelProviderError.impossibleBudget(model: model, budget: budget,
                                                  smallest: footprint.uniformBytes[lowest] ?? footprint.floatBytes,
                                                  lowestBits: lowest)
    }

    /// Returns the model for `request`: reuses what is loaded unless `reloadFromDisk` or the name changed, and
    /// quantizes only when the width changes. An impossible budget is refused before any work is done.
    public func provide(_ request: ModelRequest) throws -> ProvidedModel {
        let name = request.name
        if try ModelLocator().source(for: name).isQuantized { return try provideFile(request) }
        let fresh = request.reloadFromDisk
        var (floatModel, knownFootprint, current) = locked { (self.float, self.footprint, self.served) }
        if floatModel?.name != name || fresh { floatModel = nil }
        if knownFootprint?.name != name || fresh { knownFootprint = nil }
        if current?.name != name || fresh { current = nil }

        // The footprint (and so the plan) needs the float network once per load.
        if knownFootprint == nil {
            let model = try floatModel?.model ?? WhisperModel.load(name)
            floatModel = (name, model)
            // The identity (a pass over every weight) only matters when there may be statistics for it.
            knownFootprint = (name, model.name, personalStatistics == nil ? "" : ModelIdentity.of(model),
                              try ModelFootprint(floatWeights: model.weights, widths: Self.uniformWidths, groupSize: groupSize))
        }
        let sizes = knownFootprint!.value
        var plan = try Self.plan(model: knownFootprint!.modelName, budget: request.budgetBytes, footprint: sizes)
        let statistics = personalStatistics?(knownFootprint!.identity)
        if case .uniform = plan, let statistics, let budget = request.budgetBytes {
            plan = .personalised(budget: budget, samples: statistics.sampleCount)
        }

        if let current, current.plan == plan {
            var provided = current.provided
            provided.budgetMet = request.budgetBytes.map { provided.weightBytes <= $0 } ?? true
            locked { self.footprint = knownFootprint }
            return provided
        }

        let source = try floatModel?.model ?? WhisperModel.load(name)
        let provided: ProvidedModel
        switch plan {
        case .file:   // `plan` never returns it: files take `provideFile`.
            return try provideFile(request)
        case .float:
            var bits: [String: Int] = [:]
            for layer in source.weights.linearLayers { bits[layer.name] = 32 }
            provided = ProvidedModel(model: source, layerBits: bits, weightBytes: source.weights.byteSize,
                                     budgetMet: request.budgetBytes.map { sizes.floatBytes <= $0 } ?? true)
        case let .uniform(bits):
            let result = try Quantizer.quantize(
                model: source, statistics: nil,
                options: QuantizationOptions(target: .uniform(bits: bits), groupSize: groupSize, calibrate: false))
            let planned = sizes.uniformBytes[bits] ?? 0
            let actual = result.weights.byteSize
            guard actual == planned else { throw ModelProviderError.sizeMismatch(planned: planned, actual: actual) }
            var layerBits: [String: Int] = [:]
            for layer in result.report.layers { layerBits[layer.name] = layer.bits }
            provided = ProvidedModel(model: source.withWeights(result.weights), layerBits: layerBits, weightBytes: actual,
                                     budgetMet: request.budgetBytes.map { actual <= $0 } ?? true)
        case let .personalised(budget, _):
            let result = try Quantizer.quantize(
                model: source, statistics: statistics,
                options: QuantizationOptions(target: .budget(budget), groupSize: groupSize, calibrate: false))
            let actual = result.weights.byteSize
            guard actual <= budget else { throw ModelProviderError.sizeMismatch(planned: budget, actual: actual) }
            var layerBits: [String: Int] = [:]
            for layer in result.report.layers { layerBits[layer.name] = layer.bits }
            provided = ProvidedModel(model: source.withWeights(result.weights), layerBits: layerBits, weightBytes: actual,
                                     budgetMet: true)
        }
        locked {
            // Keep the float network only while it is the one served.
            float = plan == .float ? (name, source) : nil
            self.footprint = knownFootprint
            served = (name, plan, provided)
        }
        return provided
    }

    /// A `.myq` file, loaded once (again on `reloadFromDisk`) and served as stored when it fits the budget.
    private func provideFile(_ request: ModelRequest) throws -> ProvidedModel {
        let current = locked { served }
        var provided: ProvidedModel
        if let current, current.name == request.name, current.plan == .file, !request.reloadFromDisk {
            provided = current.provided
        } else {
            let model = try QuantizedModelFile.loadModel(path: request.name)
            var bits: [String: Int] = [:]
            for layer in model.weights.linearLayers { bits[layer.name] = (layer.weight as? QuantizedMatrix)?.bits ?? 32 }
            provided = ProvidedModel(model: model, layerBits: bits, weightBytes: model.weights.byteSize, budgetMet: true)
        }
        if let budget = request.budgetBytes, provided.weightBytes > budget {
            throw ModelProviderError.fileAboveBudget(model: provided.model.name, bytes: provided.weightBytes, budget: budget)
        }
        locked {
            float = nil
            footprint = nil
            served = (request.name, .file, provided)
        }
        return provided
    }

    /// This provider as the daemon's `ModelProvider`.
    public var asModelProvider: ModelProvider {
        { [self] request in try self.provide(request) }
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}
