import Dispatch
import Foundation
import Logging
import SystemdSupport
import Units
import WhisperEngine

/// Why the model service did not serve what was asked.
public enum ModelServiceError: Error, Equatable, CustomStringConvertible {
    /// No model can be made for the target (impossible budget, unreadable model, file above the budget).
    case build(ModelProviderError)
    /// The model files could not be read.
    case unavailable(model: String, reason: String)
    /// The candidate was built but failed its self-check; the model in service stays.
    case checkFailed(CheckReport)
    /// A later command replaced this one before it took effect.
    case superseded(by: String)
    /// The service is shutting down (or has not started).
    case notRunning

    /// The control protocol's error code.
    public var code: String {
        switch self {
        case .build(.impossibleBudget), .build(.fileAboveBudget): return "impossible_budget"
        case .build(.sizeMismatch), .build(.statisticsForgotten), .unavailable: return "model_unavailable"
        case .checkFailed: return "check_failed"
        case .superseded: return "superseded"
        case .notRunning: return "shutting_down"
        }
    }

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case let .build(error): return "\(error)"
        case let .unavailable(model, reason): return "cannot load model \"\(model)\": \(reason)"
        case let .checkFailed(report): return "the model built for this budget failed its self-check and was not put into service: \(report)"
        case let .superseded(by): return "replaced before it took effect by \(by)"
        case .notRunning: return "the daemon is shutting down"
        }
    }
}

/// Where a candidate model comes from and how it is checked: the two stages the service runs off its actor, on
/// its build thread (idle CPU and I/O priority). `build` is `BudgetModelProvider` and `check` is `ModelCheck` in the daemon; tests give their own.
public struct ModelPipeline: Sendable {
    /// Makes the candidate for a target, given what serves now (which it may reuse: the same model object is
    /// not checked again), with no layer below `lowestBits` (0: as the budget decides; `ModelRequest.lowestBits`).
    /// Throws `ModelProviderError` or a load error.
    public var build: @Sendable (_ target: ModelTarget, _ serving: ModelStore.Entry?, _ lowestBits: Int) throws -> Candidate
    /// Judges a candidate before it may serve (nil: nothing to check, the candidate is the full-precision model).
    public var check: @Sendable (Candidate) -> CheckReport?

    /// Creates a pipeline from its two stages.
    public init(build: @escaping @Sendable (ModelTarget, ModelStore.Entry?, Int) throws -> Candidate,
                check: @escaping @Sendable (Candidate) -> CheckReport?) {
        self.build = build
        self.check = check
    }
}

/// The one owner of every decision about which model serves: the memory budget (configuration or `budget`
/// command), personal-statistics arrivals, `forget`, reload, building a candidate, checking it, swapping it in
/// (`ModelStore`, whose swap also makes idle workers let go of the old model).
///
/// Reconciliation, so that no command can undo another: the service holds the *desired* `ModelTarget`; commands
/// only change it and wake the loop in `run()`. The loop builds one candidate at a time for the latest desired
/// target, off the actor on a dedicated thread at idle priority (candidate -> check -> swap), and when the build ends it is
/// swapped in only if the desired target still wants it; otherwise it is dropped and the next build starts from
/// whatever is desired by then. Commands that arrive during a build coalesce into the next one. A `budget`,
/// `reload` or `forget` returns when its own outcome is known: served, refused with the reason (impossible budget,
/// a failed self-check: the model in service stays and so does its budget), or superseded by a later command.
///
/// An actor rather than locks and a serial queue: the desired state, the waiting commands and the record of the
/// last failure are touched only by its methods, so the compiler checks that nothing else reads them, and the one
/// `await` in the loop (the build) is the only place where commands interleave with a build. Life cycle, as in
/// swift-service-lifecycle's services: `start` (the first model, built and checked before anything serves), `run`
/// (until `shutdown`), `shutdown` (waiting commands fail with `notRunning`; a build in progress is dropped).
public actor ModelService {
    /// Life-cycle states.
    public enum State: Sendable, Equatable {
        /// Created; no model yet.
        case idle
        /// Serving; `run()` reconciles.
        case running
        /// `shutdown()` was called.
        case stopped
    }

    /// A command waiting for its outcome.
    private struct Waiter {
        enum Request {
            case budget(Budget)
            case reload(source: String, epoch: Int)
            case forget(epoch: Int)
        }

        let request: Request
        let revision: Int
        let continuation: CheckedContinuation<ModelStore.Entry, Error>

        /// Whether a model built for `target` is what this command asked for.
        func isMet(by target: ModelTarget) -> Bool {
            switch request {
            case let .budget(budget): return target.budget == budget
            case let .reload(source, epoch): return target.reloadEpoch >= epoch && target.source == source
            case let .forget(epoch): return target.forgetEpoch >= epoch
            }
        }
    }

    /// The served model, read by the workers and by `status` without going through the actor.
    public nonisolated let store: ModelStore
    private let pipeline: ModelPipeline
    private let requantizeAfter: Int
    private let logger: Logger
    /// Builds and checks run here, one at a time, at idle CPU and I/O priority.
    private let buildThread = IdleThread(name: "myqasr-model-build")
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    private(set) var state = State.idle
    private var desired: ModelTarget
    /// Bumped by every command; a build carries the revision it started from.
    private var revision = 0
    /// The target the served model was built for, and the revision of that build.
    private var built: (target: ModelTarget, revision: Int)?
    /// The last refused target and why (not built again until something changes).
    private var refused: (target: ModelTarget, error: ModelServiceError)?
    private var waiters: [Waiter] = []
    /// Personal statistics samples gathered (published by `PersonalStatistics`), and the count at which a
    /// statistics round was last refused.
    private var samples = 0
    private var samplesAtRefusal = 0
    /// Live utterances a statistics round's candidate is compared on before it may serve (0: it serves at once).
    private let shadowUtterances: Int
    /// The candidate in shadow and what its swap needs (`store.shadow` has its measurements).
    private var shadowSlot: (candidate: Candidate, report: CheckReport?, target: ModelTarget, revision: Int,
                             started: DispatchTime, id: Int)?
    private var shadowsMade = 0
    /// Called when the service decides statistics must go (`forget`), before the model without them is built.
    private let forgetStatistics: @Sendable () -> Void

    /// A service for `source` at `budget` that builds with `pipeline`. After `requantizeAfter` samples gathered
    /// behind a quantized model it quantizes again (0: never on its own). `forgetStatistics` deletes the personal
    /// statistics (run off the actor; it may wait for a statistics pass to end).
    /// A candidate built from grown statistics behind a quantized model is first compared with the served model
    /// on `shadowUtterances` live utterances (`measured`) and serves only if it drifts no more (0: at once).
    public init(source: String, budget: Budget, requantizeAfter: Int, shadowUtterances: Int = 0, pipeline: ModelPipeline,
                logger: Logger, store: ModelStore = ModelStore(), forgetStatistics: @escaping @Sendable () -> Void = {}) {
        self.store = store
        self.shadowUtterances = shadowUtterances
        self.pipeline = pipeline
        self.requantizeAfter = requantizeAfter
        self.logger = logger
        self.forgetStatistics = forgetStatistics
        desired = ModelTarget(source: source, budget: budget)
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    deinit {
        buildThread.finish()
    }

    // MARK: - Life cycle

    /// Builds, checks and serves the first model; throws (and serves nothing) when it cannot.
    @discardableResult
    public func start() async throws -> ModelStore.Entry {
        precondition(state == .idle, "ModelService.start: called twice")
        let target = desired
        let started = DispatchTime.now()
        // The first model at normal priority: nothing serves until it is built, and at idle priority a busy
        // machine would starve start-up (81 s under two busy-looping processes).
        switch await buildAndCheck(target, serving: nil, atIdlePriority: false) {
        case let .failure(error):
            state = .stopped
            throw error
        case let .success((candidate, report)):
            state = .running
            let entry = swap(candidate, report, target: target, revision: revision, reason: .start, started: started)
            // Ready once short windows are: the first commands, made while the window was, added its pass to theirs.
            await Self.prepareShortWindows(of: entry.provided.model)
            return entry
        }
    }

    /// Reconciles until `shutdown()`: builds the desired model whenever it differs from the one serving.
    public func run() async {
        for await _ in wakeups {
            while state == .running, let (target, buildRevision) = nextBuild() {
                let started = DispatchTime.now()
                let outcome = await buildAndCheck(target, serving: store.current, atIdlePriority: isBackground(target),
                                                  mustReplace: onlyForgets(target))
                guard state == .running else { break }
                settle(target, revision: buildRevision, outcome: outcome, started: started)
            }
            if state != .running { break }
            settleWaitersIdle()
        }
    }

    /// Stops reconciling: waiting commands fail with `notRunning`; a build in progress finishes unused.
    public func shutdown() {
        state = .stopped
        shadowSlot = nil
        store.setShadow(nil)
        wake.finish()
        buildThread.finish()
        let waiting = waiters
        waiters.removeAll()
        for waiter in waiting { waiter.continuation.resume(throwing: ModelServiceError.notRunning) }
    }

    // MARK: - Commands

    /// Serves a model within `budget` (nil bytes: unlimited) and returns it, or throws why not (the model in
    /// service and its budget stay). Lasts until the next reload or restart.
    @discardableResult
    public func setBudget(_ budget: Budget) async throws -> ModelStore.Entry {
        try await change(.budget(budget)) { $0.budget = budget }
    }

    /// A budget from `memory_budget = "auto"` (`BudgetFollower`): served as a `budget` command's would be, but only
    /// while the budget wanted is itself automatic; after a `budget` command the user's word stands until the next
    /// reload, and this returns nil without changing anything.
    @discardableResult
    public func followMemory(_ bytes: Int?) async throws -> ModelStore.Entry? {
        guard desired.budget.origin == .auto else { return nil }
        let budget = Budget(bytes: bytes, origin: .auto)
        return try await change(.budget(budget)) { $0.budget = budget }
    }

    /// Serves `source` at `budget` read from the files again (a reload); throws why not (nothing changes then).
    @discardableResult
    public func reload(source: String, budget: Budget) async throws -> ModelStore.Entry {
        let epoch = desired.reloadEpoch + 1
        return try await change(.reload(source: source, epoch: epoch)) {
            $0.source = source
            $0.budget = budget
            $0.reloadEpoch = epoch
        }
    }

    /// Deletes the personal statistics and returns once the model in service was built without them.
    @discardableResult
    public func forget() async throws -> ModelStore.Entry {
        guard state == .running else { throw ModelServiceError.notRunning }
        // The statistics go before the target moves on, so that the build for the new target cannot read them;
        // a build that read them earlier has the old epoch and is dropped (or replaced before this returns).
        let forget = forgetStatistics
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                forget()
                done.resume()
            }
        }
        samples = 0
        samplesAtRefusal = 0
        let epoch = desired.forgetEpoch + 1
        return try await change(.forget(epoch: epoch)) { $0.forgetEpoch = epoch }
    }

    /// The personal statistics now hold `count` samples. Behind a quantized model, every `requantizeAfter`
    /// samples since the one in service was built ask for a new build from them.
    public func statisticsGrew(to count: Int) {
        samples = count
        guard state == .running, requantizeAfter > 0, let entry = store.current, entry.provided.plan.isQuantized,
              entry.provided.plan != .file, desired.statisticsRound == built?.target.statisticsRound
        else { return }
        let since = max(entry.provided.statisticsSamples, samplesAtRefusal)
        guard count - since >= requantizeAfter else { return }
        revision += 1
        desired.statisticsRound += 1
        logger.info("personal statistics grew; quantizing again", metadata: [
            "samples": "\(count)", "model_built_from": "\(entry.provided.statisticsSamples)",
        ])
        wake.yield()
    }

    /// One live utterance measured by the statistics pass (`OwnSpeechDrift`): the divergence of the model of
    /// `generation` from the full-precision model, and of the candidate in shadow `candidate.id` if there was one.
    /// Once the candidate has been measured on `shadowUtterances` utterances it replaces the served model if its
    /// mean divergence is no larger; otherwise it is discarded (logged with both figures) and the next statistics
    /// round waits for `requantizeAfter` more samples.
    public func measured(generation: Int, served: NextTokenDivergence, candidate: (id: Int, drift: NextTokenDivergence)?) {
        guard let shadow = store.record(generation: generation, served: served, candidate: candidate),
              let slot = shadowSlot, slot.id == shadow.id, shadow.utterances >= shadowUtterances, state == .running
        else { return }
        let figures: Logger.Metadata = [
            "candidate_drift": "\(String(format: "%.4f", shadow.drift.meanKL))",
            "served_drift": "\(String(format: "%.4f", shadow.servedDrift.meanKL))",
            "utterances": "\(shadow.utterances)", "positions": "\(shadow.drift.positions)",
        ]
        guard slot.target.servesInPlace(of: desired) else {
            dropShadow(because: "what is wanted changed")
            return
        }
        shadowSlot = nil
        store.setShadow(nil)
        if shadow.drift.meanKL <= shadow.servedDrift.meanKL {
            logger.info("candidate promoted: no worse than the model in service on your speech", metadata: figures)
            swap(slot.candidate, slot.report, target: slot.target, revision: slot.revision, reason: .statistics,
                 started: slot.started)
        } else {
            logger.notice("candidate discarded: it drifts further from the full-precision model on your speech than the model in service",
                          metadata: figures)
            if let built, desired.statisticsRound == slot.target.statisticsRound {
                desired.statisticsRound = built.target.statisticsRound
            }
            samplesAtRefusal = samples
            WhisperModel.releaseFreedMemory()
        }
    }

    private func dropShadow(because reason: String) {
        shadowSlot = nil
        store.setShadow(nil)
        logger.info("candidate in shadow dropped: \(reason)")
        WhisperModel.releaseFreedMemory()
    }

    /// What is wanted now (for `status` and tests).
    public var desiredTarget: ModelTarget { desired }

    private func change(_ request: Waiter.Request, _ update: (inout ModelTarget) -> Void) async throws -> ModelStore.Entry {
        guard state == .running else { throw ModelServiceError.notRunning }
        revision += 1
        update(&desired)
        let revision = self.revision
        return try await withCheckedThrowingContinuation { continuation in
            waiters.append(Waiter(request: request, revision: revision, continuation: continuation))
            wake.yield()
        }
    }

    // MARK: - Reconciliation

    /// The next target to build, or nil when the served model is what is wanted (or what is wanted was just
    /// refused: then the commands that asked for it are answered, and the target reverts).
    private func nextBuild() -> (ModelTarget, Int)? {
        if let slot = shadowSlot {
            if slot.target == desired { return nil }   // waiting for the user's utterances
            dropShadow(because: "what is wanted changed (\(reason(for: desired).rawValue))")
        }
        guard let built, desired != built.target else { return nil }
        if let refused, refused.target == desired {
            refuse(desired, revision: revision, error: refused.error)
            guard desired != built.target, desired != refused.target else { return nil }
        }
        return (desired, revision)
    }

    /// Whether `target` differs from the served model's only by a `forget` (and perhaps a statistics round): then
    /// the personal model must leave service even if no model without statistics passes its check at the budget.
    private func onlyForgets(_ target: ModelTarget) -> Bool {
        guard let built = built?.target else { return false }
        return target.forgetEpoch != built.forgetEpoch && target.budget == built.budget && target.source == built.source
            && target.reloadEpoch == built.reloadEpoch
    }

    /// Builds and checks a candidate for `target`. With `mustReplace` (a `forget`), a uniform candidate that fails
    /// its check is built again one width higher, above the budget if need be, until one passes: the model in
    /// service holds the user's statistics and may not stay (its budget shows as not met until statistics
    /// gathered again make a personal model within it).
    private func buildAndCheck(_ target: ModelTarget, serving: ModelStore.Entry?, atIdlePriority: Bool,
                               mustReplace: Bool = false) async -> Result<(Candidate, CheckReport?), ModelServiceError>
    {
        let pipeline = self.pipeline
        let buildThread = self.buildThread
        let logger = self.logger
        return await withCheckedContinuation { continuation in
            let run = { (job: @escaping () -> Void) in
                if atIdlePriority { buildThread.async(job) } else { DispatchQueue.global(qos: .userInitiated).async(execute: job) }
            }
            run { BackgroundWork.inTurn {
                // What the daemon ran since it last went idle (its code pages), and the served model's layer pages,
                // which a build does not read (a transcription meanwhile maps what it reads again, from the page
                // cache), go back before the build's peak.
                serving?.provided.model.weights.releaseResidentPages()
                WhisperModel.releaseFreedMemory()
                // Candidate -> check.
                var candidate: Candidate
                var report: CheckReport?
                var lowestBits = 0
                while true {
                    do {
                        candidate = try pipeline.build(target, serving, lowestBits)
                    } catch let error as ModelProviderError {
                        continuation.resume(returning: .failure(.build(error)))
                        return
                    } catch {
                        continuation.resume(returning: .failure(.unavailable(model: target.source, reason: "\(error)")))
                        return
                    }
                    // Loading and quantizing are over: what they leave resident (their code pages) goes back before
                    // the check's passes.
                    WhisperModel.releaseFreedMemory()
                    // The model already in service was checked when it went in.
                    report = candidate.provided.model === serving?.provided.model ? serving?.check : pipeline.check(candidate)
                    // The full-precision network the candidate came from is not needed any more: its pages go back now.
                    if candidate.fullPrecision != nil {
                        candidate.fullPrecision = nil
                        WhisperModel.releaseFreedMemory()
                    }
                    guard mustReplace, let failed = report, !failed.passed, case let .uniform(bits) = candidate.provided.plan
                    else { break }
                    logger.warning("forget: the model without your statistics fails its self-check at this budget; trying a wider one, above the budget",
                                   metadata: ["precision": "\(bits)-bit", "check": "\(failed)"])
                    lowestBits = bits + 1
                }
                if let report, !report.passed {
                    continuation.resume(returning: .failure(.checkFailed(report)))
                    return
                }
                continuation.resume(returning: .success((candidate, report)))
            } }
        }
    }

    private func settle(_ target: ModelTarget, revision buildRevision: Int,
                        outcome: Result<(Candidate, CheckReport?), ModelServiceError>, started: DispatchTime) {
        switch outcome {
        case let .success((candidate, report)):
            guard target.servesInPlace(of: desired) else {
                logger.info("candidate dropped: what is wanted changed while it was built", metadata: [
                    "precision": "\(candidate.provided.plan)", "budget": "\(target.budget)",
                ])
                WhisperModel.releaseFreedMemory()
                return
            }
            let why = reason(for: target)
            if shadowUtterances > 0, why == .statistics, store.current?.provided.plan.isQuantized == true {
                shadowsMade += 1
                shadowSlot = (candidate, report, target, buildRevision, started, shadowsMade)
                store.setShadow(ModelStore.Shadow(id: shadowsMade, provided: candidate.provided, target: target, check: report))
                logger.info("candidate in shadow: compared with the model in service on the next live utterances", metadata: [
                    "precision": "\(candidate.provided.precision)", "plan": "\(candidate.provided.plan)",
                    "utterances": "\(shadowUtterances)",
                ])
                return
            }
            swap(candidate, report, target: target, revision: buildRevision, reason: why, started: started)
        case let .failure(error):
            refuse(target, revision: buildRevision, error: error)
        }
    }

    @discardableResult
    private func swap(_ candidate: Candidate, _ report: CheckReport?, target: ModelTarget, revision buildRevision: Int,
                      reason: ModelChangeReason, started: DispatchTime) -> ModelStore.Entry {
        let entry = store.swap(to: candidate.provided, target: target, reason: reason, check: report)
        built = (target, buildRevision)
        refused = nil
        // The float network the quantization read is freed by now; its pages go back to the system.
        WhisperModel.releaseFreedMemory()
        // Short windows' silent window is made now (at start-up, before the daemon is ready), so that the first
        // command served does not wait for it (one that comes first makes it itself). Not before the swap: made
        // beside the model it replaces, its 30 s encoder pass (15 MiB of scratch for tiny.en) was a
        // re-quantization's peak.
        if reason != .start {
            let model = entry.provided.model
            Task { await Self.prepareShortWindows(of: model) }
        }
        var metadata: Logger.Metadata = [
            "reason": "\(reason.rawValue)", "model": "\(entry.provided.model.name)", "generation": "\(entry.generation)",
            "weights": "\(ByteSize.format(entry.provided.weightBytes))", "precision": "\(entry.provided.precision)",
            "plan": "\(entry.provided.plan)", "budget": "\(target.budget)", "layers": "\(entry.provided.layerStorage)",
            "took_s": "\(String(format: "%.2f", Self.seconds(since: started)))",
        ]
        if let report { metadata["check"] = "\(report)" }
        logger.info("model in service", metadata: metadata)
        if let bytes = target.budget.bytes, !entry.provided.budgetMet {
            logger.warning("memory budget not met by the model in service", metadata: ["budget": "\(ByteSize.format(bytes))"])
        }
        answerWaiters(upTo: buildRevision, served: target)
        return entry
    }

    /// Makes `model`'s silent window (`WhisperModel.prepareShortWindows`) in its turn with other background work, at
    /// normal priority as a command would make it: a worker that needs the window waits for its maker, and on the
    /// idle-priority build thread a busy machine starved the maker and so the worker (a request stalled 163 s under
    /// two busy loops in `testWorkOfADisconnectedClientIsDropped`).
    private static func prepareShortWindows(of model: WhisperModel) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global(qos: .userInitiated).async {
                BackgroundWork.inTurn {
                    model.prepareShortWindows()
                    WhisperModel.releaseFreedMemory()
                }
                continuation.resume()
            }
        }
    }

    /// `target` was refused. What it changed in the model (the source, a reload, the budget) goes back to what the
    /// served model was built for, and the commands that asked for those changes fail with `error`; a `forget` or
    /// statistics round that came in the same build is kept and built again with the model in service's settings.
    /// When nothing but those changed, they are what failed: a forget's command fails (its epoch cannot go back;
    /// the next change builds it again), a statistics round waits for more samples.
    private func refuse(_ target: ModelTarget, revision buildRevision: Int, error: ModelServiceError) {
        refused = (target, error)
        logger.error("model change refused; the model in service stays: \(error)")
        guard let built else { return }
        let settingsChanged = target.budget != built.target.budget || target.source != built.target.source
            || target.reloadEpoch != built.target.reloadEpoch
        let waiting = waiters
        waiters.removeAll()
        for waiter in waiting {
            guard waiter.revision <= buildRevision else {
                waiters.append(waiter)
                continue
            }
            if waiter.isMet(by: built.target) {
                waiter.continuation.resume(returning: store.current!)
            } else if case .forget = waiter.request, settingsChanged {
                waiters.append(waiter)   // built again below, with the settings in force
            } else if waiter.isMet(by: target) {
                waiter.continuation.resume(throwing: error)
            } else {
                waiter.continuation.resume(throwing: ModelServiceError.superseded(by: Self.describe(built.target)))
            }
        }
        if settingsChanged {
            if desired.budget == target.budget { desired.budget = built.target.budget }
            if desired.source == target.source && desired.reloadEpoch == target.reloadEpoch {
                desired.source = built.target.source
                desired.reloadEpoch = built.target.reloadEpoch
            }
        } else if desired.statisticsRound == target.statisticsRound && target.statisticsRound != built.target.statisticsRound {
            desired.statisticsRound = built.target.statisticsRound
            samplesAtRefusal = samples
        }
    }

    /// Whether the build for `target` is background work, run at idle CPU and I/O priority: a statistics round,
    /// or a budget that followed free memory. A build someone waits for (start-up, a reload, `forget`, a `budget`
    /// command) runs at normal priority on one thread: at SCHED_IDLE a busy machine starved a reload for
    /// minutes, and `systemctl reload` waits for its READY=1.
    private func isBackground(_ target: ModelTarget) -> Bool {
        switch reason(for: target) {
        case .statistics: return true
        case .budget: return target.budget.origin == .auto
        case .start, .reload, .forget: return false
        }
    }

    /// Why a model built for `target` replaces the one serving, the weightiest change first.
    private func reason(for target: ModelTarget) -> ModelChangeReason {
        guard let built else { return .start }
        if target.reloadEpoch != built.target.reloadEpoch || target.source != built.target.source { return .reload }
        if target.forgetEpoch != built.target.forgetEpoch { return .forget }
        if target.budget != built.target.budget { return .budget }
        return .statistics
    }

    /// After a swap: the commands up to `buildRevision` learn whether they got what they asked for.
    private func answerWaiters(upTo buildRevision: Int, served: ModelTarget) {
        let entry = store.current!
        let waiting = waiters
        waiters.removeAll()
        for waiter in waiting {
            if waiter.revision > buildRevision {
                waiters.append(waiter)
            } else if waiter.isMet(by: served) {
                waiter.continuation.resume(returning: entry)
            } else {
                waiter.continuation.resume(throwing: ModelServiceError.superseded(by: Self.describe(served)))
            }
        }
    }

    /// "a later command: tiny.en at 24.0 MiB (command)".
    private static func describe(_ target: ModelTarget) -> String {
        "a later command: \(target.source) at \(target.budget)"
    }

    /// Nothing to build: every command has its answer in the model that serves.
    private func settleWaitersIdle() {
        guard let built else { return }
        answerWaiters(upTo: revision, served: built.target)
    }

    static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}
