import Foundation
import Units
import WhisperEngine

/// Where a memory budget came from.
public enum BudgetOrigin: String, Sendable, Equatable {
    /// `model.memory_budget` in the configuration file, or `myqasrd --budget`.
    case configuration
    /// A `budget` command on the control socket (lasts until the next reload or restart).
    case command
    /// `memory_budget = "auto"`: the cgroup's limits and free memory (`BudgetFollower`).
    case auto
}

/// A memory budget for the model's weights and where it came from.
public struct Budget: Sendable, Equatable, CustomStringConvertible {
    /// Bytes the weights may take; nil means unlimited.
    public var bytes: Int?
    /// Where it came from.
    public var origin: BudgetOrigin

    /// Creates a budget.
    public init(bytes: Int?, origin: BudgetOrigin) {
        self.bytes = bytes
        self.origin = origin
    }

    /// "24.0 MiB (command)" or "unlimited (configuration)".
    public var description: String { "\(bytes.map(ByteSize.format) ?? "unlimited") (\(origin.rawValue))" }
}

/// The inputs of a model build: what the model service wants served. Two equal targets make the same model
/// (given the same personal statistics), so the service builds only when the target it wants differs from the
/// one the served model was built for.
public struct ModelTarget: Sendable, Equatable {
    /// The configured model: `tiny.en`, `base`, a model directory or a `.myq` file.
    public var source: String
    /// The memory budget.
    public var budget: Budget
    /// Re-quantizations asked for by the personal statistics (one more every `model.requantize_after` samples
    /// gathered behind a quantized model). A build reads the statistics as they are when it runs.
    public var statisticsRound: Int
    /// One more at every `forget`: a build for an earlier value may have read the forgotten statistics.
    public var forgetEpoch: Int
    /// One more at every reload: the model files are read again.
    public var reloadEpoch: Int

    /// A target with no statistics round, forget or reload yet.
    public init(source: String, budget: Budget, statisticsRound: Int = 0, forgetEpoch: Int = 0, reloadEpoch: Int = 0) {
        self.source = source
        self.budget = budget
        self.statisticsRound = statisticsRound
        self.forgetEpoch = forgetEpoch
        self.reloadEpoch = reloadEpoch
    }

    /// Whether a model built for `self` may serve when `other` is wanted: everything equal but possibly the
    /// statistics round (a build from older statistics is still the best model at hand; the next round follows).
    func servesInPlace(of other: ModelTarget) -> Bool {
        source == other.source && budget == other.budget && forgetEpoch == other.forgetEpoch
            && reloadEpoch == other.reloadEpoch
    }
}

/// Why a model went into service.
public enum ModelChangeReason: String, Sendable, Equatable {
    /// The first model, at start-up.
    case start
    /// A `budget` command.
    case budget
    /// Enough new personal statistics behind a quantized model.
    case statistics
    /// `forget`: the model built without the user's statistics.
    case forget
    /// A reload (SIGHUP or `reload`).
    case reload
}

/// The model in service, swapped atomically: the single record of what serves and why. Workers read it at the
/// start of each job (a running transcription finishes on the model it started with) and are told of every swap,
/// so idle ones let go of the old model at once. Only the `ModelService` swaps.
public final class ModelStore: @unchecked Sendable {  // @unchecked: `entry` and `observers` are guarded by `lock`
    /// One version of the served model.
    public struct Entry: Sendable {
        /// Increases by one at every swap (1 for the first model).
        public var generation: Int
        /// The model and its description (plan, widths, bytes, statistics it was built from).
        public var provided: ProvidedModel
        /// What it was built for: source, budget and its origin, statistics round, forget and reload epochs.
        public var target: ModelTarget
        /// Why it went into service.
        public var reason: ModelChangeReason
        /// The self-check it passed (nil when the candidate is the full-precision model itself).
        public var check: CheckReport?
        /// When it went into service.
        public var since: Date
    }

    /// A candidate compared with the model in service on the user's own live utterances before it may serve
    /// (`ModelService`, issue 20): it serves nobody meanwhile.
    public struct Shadow: Sendable {
        /// One more for every candidate put in shadow (measurements name the one they were made for).
        public var id: Int
        /// The candidate and what it was built for.
        public var provided: ProvidedModel
        public var target: ModelTarget
        /// The self-check it passed.
        public var check: CheckReport?
        /// Its next-token divergence from the full-precision model on the user's utterances measured so far.
        public var drift = NextTokenDivergence()
        /// The served model's, on the same utterances.
        public var servedDrift = NextTokenDivergence()
        /// Utterances measured.
        public var utterances = 0
    }

    /// The served model's next-token divergence from the full-precision model on the user's own live utterances
    /// (teacher-forced on the full-precision model's tokens), since it went into service: aggregates only.
    public struct OwnDrift: Sendable, Equatable {
        /// The generation it was measured on.
        public var generation: Int
        public var divergence = NextTokenDivergence()
        public var utterances = 0
    }

    private let lock = NSLock()
    private var entry: Entry?
    private var shadowEntry: Shadow?
    private var drift: OwnDrift?
    private var observers: [@Sendable (Entry) -> Void] = []

    /// An empty store: nothing serves until the first `swap`.
    public init() {}

    /// The model in service now (nil before the first model).
    public var current: Entry? {
        lock.lock()
        defer { lock.unlock() }
        return entry
    }

    /// The candidate in shadow, if any.
    public var shadow: Shadow? {
        lock.lock()
        defer { lock.unlock() }
        return shadowEntry
    }

    /// The served model's drift on the user's speech (nil: not measured since it went into service).
    public var ownDrift: OwnDrift? {
        lock.lock()
        defer { lock.unlock() }
        return drift.flatMap { $0.generation == entry?.generation ? $0 : nil }
    }

    /// Puts a candidate in shadow (nil: none). Only the `ModelService` calls this.
    func setShadow(_ shadow: Shadow?) {
        lock.lock()
        shadowEntry = shadow
        lock.unlock()
    }

    /// Adds one utterance's measurement of the served model of `generation` (ignored if another serves now) and,
    /// when `candidate` is given, of the shadow candidate `candidate.id` on the same utterance. Returns the shadow
    /// with the measurement added, if it was the one measured.
    func record(generation: Int, served: NextTokenDivergence, candidate: (id: Int, drift: NextTokenDivergence)?) -> Shadow? {
        lock.lock()
        defer { lock.unlock() }
        guard generation == entry?.generation else { return nil }
        var own = drift.flatMap { $0.generation == generation ? $0 : nil } ?? OwnDrift(generation: generation)
        own.divergence.merge(served)
        own.utterances += 1
        drift = own
        guard let candidate, var shadow = shadowEntry, shadow.id == candidate.id else { return nil }
        shadow.drift.merge(candidate.drift)
        shadow.servedDrift.merge(served)
        shadow.utterances += 1
        shadowEntry = shadow
        return shadow
    }

    /// Calls `observer` after every swap (on the swapping thread; it must return quickly).
    public func onSwap(_ observer: @escaping @Sendable (Entry) -> Void) {
        lock.lock()
        observers.append(observer)
        lock.unlock()
    }

    /// Puts `provided` into service and tells the observers; returns the new entry. The model leaving service hands
    /// its layer pages back where they are a file's (`WhisperWeights.releaseResidentPages`): a transcription or a
    /// statistics pass that still holds it reads them again from the page cache, and two models are not both
    /// resident meanwhile.
    @discardableResult
    public func swap(to provided: ProvidedModel, target: ModelTarget, reason: ModelChangeReason, check: CheckReport?) -> Entry {
        lock.lock()
        let new = Entry(generation: (entry?.generation ?? 0) + 1, provided: provided, target: target, reason: reason,
                        check: check, since: Date())
        let old = entry
        entry = new
        let observers = self.observers
        lock.unlock()
        if let leaving = old?.provided.model, leaving !== provided.model { leaving.weights.releaseResidentPages() }
        for observer in observers { observer(new) }
        return new
    }
}
