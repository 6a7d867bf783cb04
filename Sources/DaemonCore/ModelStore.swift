import Foundation
import WhisperEngine

/// A model chosen for a memory budget, with what the daemon reports about it.
public struct ProvidedModel: @unchecked Sendable {
    /// The model to transcribe with.
    public var model: WhisperModel
    /// Bits per weight of every linear layer, by layer name (32 = float).
    public var layerBits: [String: Int]
    /// Bytes the weights occupy.
    public var weightBytes: Int
    /// Whether `weightBytes` fits the budget asked for (always true without a budget).
    public var budgetMet: Bool

    /// Creates a description of a provided model.
    public init(model: WhisperModel, layerBits: [String: Int], weightBytes: Int, budgetMet: Bool) {
        self.model = model
        self.layerBits = layerBits
        self.weightBytes = weightBytes
        self.budgetMet = budgetMet
    }
}

/// What the daemon asks its `ModelProvider` for.
public struct ModelRequest: Sendable, Equatable {
    /// Model name or directory.
    public var name: String
    /// Memory budget for the weights in bytes; nil means unlimited.
    public var budgetBytes: Int?
    /// Read the model files again (a `reload`), rather than reuse a model already loaded.
    public var reloadFromDisk: Bool

    /// Creates a request.
    public init(name: String, budgetBytes: Int?, reloadFromDisk: Bool) {
        self.name = name
        self.budgetBytes = budgetBytes
        self.reloadFromDisk = reloadFromDisk
    }
}

/// The one seam between the daemon and model precision: given a model name and a memory budget, returns the
/// model to serve, or throws (`ModelProviderError.impossibleBudget` when no precision fits). The daemon's
/// default is `BudgetModelProvider` (float, else myQASR's widths from the personal statistics, else the highest
/// uniform width that fits). Called off the event loops and the workers, one call at a time.
public typealias ModelProvider = @Sendable (ModelRequest) throws -> ProvidedModel

/// The model in service, swapped atomically. Workers read it at the start of each job, so a swap never
/// interrupts a transcription: the running one finishes on the old model and the next uses the new one.
public final class ModelStore: @unchecked Sendable {
    /// One version of the served model.
    public struct Entry: @unchecked Sendable {
        /// Increases by one at every swap.
        public var generation: Int
        /// The model and its description.
        public var provided: ProvidedModel
        /// The budget it was chosen for.
        public var budgetBytes: Int?
        /// When it went into service.
        public var since: Date
    }

    private let lock = NSLock()
    private var entry: Entry

    /// Starts with `provided` as generation 1.
    public init(_ provided: ProvidedModel, budgetBytes: Int?) {
        entry = Entry(generation: 1, provided: provided, budgetBytes: budgetBytes, since: Date())
    }

    /// The model in service now.
    public var current: Entry {
        lock.lock()
        defer { lock.unlock() }
        return entry
    }

    /// Puts `provided` into service; returns the new generation.
    @discardableResult
    public func swap(to provided: ProvidedModel, budgetBytes: Int?) -> Int {
        lock.lock()
        defer { lock.unlock() }
        entry = Entry(generation: entry.generation + 1, provided: provided, budgetBytes: budgetBytes, since: Date())
        return entry.generation
    }
}
