import Audio
import Capture
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import Quantization
import Serving
import SystemdSupport
import Units
import WhisperEngine

/// Why the daemon could not start.
public enum DaemonError: Error, CustomStringConvertible {
    /// A directory the daemon needs could not be created or is not a directory.
    case directory(path: String, purpose: String, reason: String)
    /// The model could not be loaded.
    case model(name: String, reason: String)
    /// The configured memory budget cannot be met by a model that passes its check (a configuration error).
    case budget(reason: String)
    /// A socket could not be set up.
    case sockets(reason: String)
    /// The capture settings are inconsistent.
    case capture(reason: String)

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case let .directory(path, purpose, reason): return "\(purpose) \(path): \(reason)"
        case let .model(name, reason): return "cannot load model \"\(name)\": \(reason)"
        case let .budget(reason): return "model.memory_budget: \(reason)"
        case let .sockets(reason): return "cannot listen: \(reason)"
        case let .capture(reason): return "cannot set up capture: \(reason)"
        }
    }
}

/// The speech-recognition daemon, wired: the model service (which model serves and why), the transcription
/// workers and their one queue, microphone capture feeding that queue, the personal statistics, and the control
/// and Wyoming servers, with systemd notification.
///
/// Data path: microphone -> `LiveCapture` -> `TranscriptionWorkers` (one bounded queue, shared with socket
/// requests) -> transcript -> `listen` clients; beside it each live utterance -> `PersonalStatistics` -> "samples
/// grew" -> `ModelService` -> build, check, swap in `ModelStore` -> the workers' next job (idle workers let go
/// of the old model at once).
///
/// Life cycle: `start()` (model loaded and checked, sockets listening, capture started, `READY=1`), then any
/// number of `reload()` / `setBudget(bytes:)` / `forget()`, then `shutdown()`. Nothing the user says is logged:
/// only durations, counts and sizes.
public final class Daemon: TranscriptionBackend, ControlBackend, @unchecked Sendable {  // @unchecked: mutable state guarded by `lock`
    /// Where the configuration came from and what the command line overrides.
    public struct ConfigurationSource: Sendable {
        /// `--config`, if given (otherwise the search path is used at every (re)load).
        public var explicitPath: String?
        /// Flags that replace file values.
        public var overrides: ConfigurationOverrides

        /// Creates a source.
        public init(explicitPath: String?, overrides: ConfigurationOverrides) {
            self.explicitPath = explicitPath
            self.overrides = overrides
        }

        /// Locates and loads the configuration.
        public func load(environment: [String: String] = ProcessInfo.processInfo.environment) throws
            -> (DaemonConfiguration, path: String?)
        {
            let path = try DaemonConfiguration.locate(explicit: explicitPath, environment: environment)
            return (try DaemonConfiguration.load(path: path, overrides: overrides), path)
        }
    }

    private let source: ConfigurationSource
    private let logger: Logger
    private let environment: [String: String]
    private let started = Date()
    private let broadcaster = LiveBroadcaster()
    private let counters = LiveCounters()
    private let personal: PersonalStatistics?
    /// The one owner of model decisions.
    let service: ModelService
    private let workers: TranscriptionWorkers
    private let capture: LiveCapture
    /// `memory_budget = "auto"`: readings of free memory handed to the service.
    private let budgetFollower: BudgetFollower
    private let lock = NSLock()

    // Guarded by `lock`.
    private var configuration: DaemonConfiguration
    private var controlServer: ControlServer?
    private var wyomingServer: WyomingServer?
    private var watchdog: WatchdogPinger?
    private var serviceTask: Task<Void, Never>?
    private var ownSocketPaths: [String] = []
    private var isShutDown = false
    /// A release of the code pages a `status` ran is due (`releaseAfterStatus`).
    private var releaseDue = false

    /// Creates a daemon with a loaded configuration; nothing runs until `start()`.
    /// - Parameters:
    ///   - pipeline: how candidate models are built and checked; defaults to `BudgetModelProvider` fed by the
    ///     personal statistics (float, else myQASR's widths from them, else uniform bits that fit) and `ModelCheck`.
    ///   - utteranceObserver: sees each live utterance before it is wiped; defaults (when `pipeline` is nil too)
    ///     to `PersonalStatistics` in the state directory, which feeds the default pipeline.
    ///   - memoryFiles: what `memory_budget = "auto"` reads (the process's own cgroup and /proc by default).
    public init(
        configuration: DaemonConfiguration, source: ConfigurationSource, logger: Logger,
        pipeline: ModelPipeline? = nil, utteranceObserver: UtteranceObserver? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        memoryFiles: MemoryFiles = .ofThisProcess()
    ) {
        self.configuration = configuration
        self.source = source
        self.logger = logger
        self.environment = environment
        let observer: UtteranceObserver?
        let personal: PersonalStatistics?
        let modelPipeline: ModelPipeline
        if let pipeline {
            personal = utteranceObserver as? PersonalStatistics
            observer = utteranceObserver
            modelPipeline = pipeline
        } else {
            // The default loop: statistics of the full-precision model on live utterances, kept in the state
            // directory, choose the widths whenever a budget calls for a quantized model.
            let stateDirectory = configuration.resolvedStateDirectory(environment: environment)
            let statistics = utteranceObserver as? PersonalStatistics ?? PersonalStatistics(
                directory: stateDirectory, logger: logger)
            personal = statistics
            observer = utteranceObserver ?? statistics
            modelPipeline = Self.defaultPipeline(statistics: statistics, layerDirectory: stateDirectory)
        }
        self.personal = personal
        budgetFollower = BudgetFollower(policy: AutoBudgetPolicy(reserve: configuration.memoryReserve),
                                        interval: configuration.memoryPollInterval, files: memoryFiles, logger: logger)
        service = ModelService(
            source: configuration.model, budget: Self.budget(configuration, follower: budgetFollower),
            requantizeAfter: configuration.requantizeAfter, shadowUtterances: configuration.shadowUtterances,
            pipeline: modelPipeline, logger: logger,
            forgetStatistics: { personal?.forget() })
        let (broadcaster, counters, store) = (self.broadcaster, self.counters, service.store)
        let workers = TranscriptionWorkers(
            store: store, count: configuration.workers, threads: configuration.threads,
            queueDepth: configuration.queueDepth, logger: logger, observer: observer,
            onLiveResult: { result in
                let (count, total) = counters.add(result.audioSeconds)
                logger.info("utterance transcribed", metadata: [
                    "audio_s": "\(String(format: "%.2f", result.audioSeconds))",
                    "took_s": "\(String(format: "%.2f", result.processingSeconds))",
                    "characters": "\(result.transcript.text.count)", "utterances": "\(count)",
                    "audio_total_s": "\(String(format: "%.1f", total))",
                ])
                broadcaster.publish(result.transcript)
                _ = try? SystemdNotifier.status(Self.statusLine(store.current, utterances: count))
            },
            onLivePartial: { broadcaster.publish($0) })
        self.workers = workers
        // Partial passes of live speech are for `listen` clients: while none is connected, none is run (each costs
        // a worker's time and a transcription's memory beside the statistics pass of the utterance before).
        capture = LiveCapture(logger: logger,
                              deliverPartial: { if broadcaster.subscriberCount > 0 { workers.submit(partial: $0) } },
                              deliver: { workers.submit(live: $0) })
    }

    /// Utterances the served model's drift is measured on while no candidate is in shadow.
    static let driftUtterancesWithoutCandidate = 5

    /// The budget `configuration` asks for: its own, or with `memory_budget = "auto"` a reading of free memory now.
    /// (`served`: the weights in service, which a new model replaces.)
    static func budget(_ configuration: DaemonConfiguration, follower: BudgetFollower, served: Int = 0) -> Budget {
        guard configuration.memoryBudgetAuto else { return Budget(bytes: configuration.memoryBudget, origin: .configuration) }
        return Budget(bytes: follower.initialBudget(policy: AutoBudgetPolicy(reserve: configuration.memoryReserve),
                                                    interval: configuration.memoryPollInterval, servedWeightBytes: served),
                      origin: .auto)
    }

    /// `BudgetModelProvider` reading `statistics` and writing quantized layers to an unnamed file in `layerDirectory`
    /// (the state directory: its weights are made from the user's statistics), then `ModelCheck` against the
    /// full-precision network the candidate came from.
    static func defaultPipeline(statistics: PersonalStatistics?, layerDirectory: String? = nil) -> ModelPipeline {
        defaultPipeline(personalStatistics: statistics.map { s in { s.statistics(for: $0) } }, layerDirectory: layerDirectory)
    }

    /// The default pipeline with statistics from `personalStatistics` (by model identity).
    static func defaultPipeline(personalStatistics: (@Sendable (String) -> ActivationStatistics?)?,
                                layerDirectory: String? = nil) -> ModelPipeline {
        let provider = BudgetModelProvider(personalStatistics: personalStatistics, layerDirectory: layerDirectory,
                                           giveWay: { try BackgroundWork.givingWay($0) })
        let check = ModelCheck()
        return ModelPipeline(
            build: { target, serving, lowestBits in
                try provider.candidate(for: ModelRequest(
                    name: target.source, budgetBytes: target.budget.bytes,
                    reloadFromDisk: serving.map { $0.target.reloadEpoch != target.reloadEpoch } ?? true,
                    serving: serving?.provided, servingName: serving?.target.source, lowestBits: lowestBits))
            },
            // The self-check gives way to transcriptions (`BackgroundWork.givingWay`; a transcription stopping it is the
            // only error `check` throws).
            check: { candidate in
                try? BackgroundWork.givingWay { try check.check(candidate, cancellation: $0) }
            })
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    // MARK: - Start and stop

    /// What a model service that could not start means for start-up (and `--check-config`): a budget that no
    /// model meets, or whose model fails its self-check, is a configuration error; anything else is the model's.
    static func startFailure(_ error: Error, model: String) -> Error {
        guard let error = error as? ModelServiceError else { return error }
        switch error {
        case .build(.impossibleBudget), .build(.fileAboveBudget), .checkFailed: return DaemonError.budget(reason: "\(error)")
        default: return DaemonError.model(name: model, reason: "\(error)")
        }
    }

    /// Loads and checks the model, starts the workers, the sockets and capture, then tells systemd `READY=1`.
    public func start() async throws {
        let config = locked { configuration }
        let stateDirectory = config.resolvedStateDirectory(environment: environment)
        try Self.ensureDirectory(stateDirectory, mode: 0o700, purpose: "state directory")

        // Wiring: statistics arrivals go to the service; every swap is reported and names the source mapped for
        // the statistics passes.
        let service = self.service
        personal?.setSourceModel(config.model)
        personal?.whenSamplesGrow { count in Task { await service.statisticsGrew(to: count) } }
        // While a quantized model serves, each statistics pass also measures its drift on the utterance (and a
        // candidate's, while one is in shadow); the service decides with the aggregates.
        personal?.duringPass { [logger] samples, fullPrecision, served, cancellation in
            guard let entry = service.store.current, entry.provided.model === served, entry.provided.plan.isQuantized
            else { return }
            let shadow = service.store.shadow
            // Without a candidate, the served model's figure settles after a few utterances; measuring it on every
            // utterance would halve how many the statistics gather (the measurement costs three encoder passes).
            if shadow == nil, let own = service.store.ownDrift, own.utterances >= Self.driftUtterancesWithoutCandidate {
                return
            }
            do {
                let drift = try OwnSpeechDrift.measure(samples: samples, fullPrecision: fullPrecision, served: served,
                                                       candidate: shadow?.provided.model, cancellation: cancellation)
                let candidate = shadow.flatMap { s in drift.candidate.map { (id: s.id, drift: $0) } }
                Task { await service.measured(generation: entry.generation, served: drift.served, candidate: candidate) }
            } catch DecodingError.cancelled {
                throw DecodingError.cancelled   // a transcription started: the pass measures again after it
            } catch {
                logger.error("drift measurement failed: \(error)")
            }
        }
        service.store.onSwap { [weak self] entry in
            self?.personal?.setSourceModel(entry.target.source)
            self?.notifyStatus()
        }
        do {
            try await service.start()
        } catch {
            throw Self.startFailure(error, model: config.model)
        }
        locked { serviceTask = Task { await service.run() } }
        if config.memoryBudgetAuto { budgetFollower.start(service: service) }

        try await startServers(config)
        if config.captureEnabled { try capture.start(config.capturePipeline) }

        _ = try? SystemdNotifier.ready(status: statusLine())
        if let interval = try? SystemdNotifier.watchdogInterval() {
            // Ping only while the socket servers' event loops answer: if they are wedged the daemon serves
            // nobody, and a missed ping lets systemd restart it.
            let pinger = WatchdogPinger(watchdogInterval: interval, ping: { [weak self, logger] in
                guard let self else { return }
                if self.eventLoopsRespond(within: .seconds(2)) {
                    _ = try? SystemdNotifier.watchdog()
                } else {
                    logger.error("watchdog: the socket event loops do not respond; withholding WATCHDOG=1")
                }
            })
            pinger.start()
            locked { watchdog = pinger }
            logger.info("watchdog pings every \(pinger.pingInterval)")
        }
        logger.info("ready", metadata: [
            "control": "\(locked { ownSocketPaths }.first ?? "activated")",
            "capture": "\(config.captureEnabled ? config.captureDevice : "off")",
        ])
        // Start-up's code (configuration, the servers' set-up) does not run again: its pages go back.
        WhisperModel.releaseFreedMemory()
    }

    /// Whether every event loop of the socket servers runs a task within `timeout`.
    func eventLoopsRespond(within timeout: DispatchTimeInterval) -> Bool {
        let group = DispatchGroup()
        for loop in MultiThreadedEventLoopGroup.singleton.makeIterator() {
            group.enter()
            loop.execute { group.leave() }
        }
        return group.wait(timeout: .now() + timeout) == .success
    }

    /// Ordered shutdown: capture stops (its audio zeroed), `listen` streams end, the servers let requests in
    /// progress finish, the model service stops, then the workers.
    public func shutdown() async {
        let alreadyDown = locked { () -> Bool in
            defer { isShutDown = true }
            return isShutDown
        }
        if alreadyDown { return }
        _ = try? SystemdNotifier.stopping(status: "stopping")
        logger.info("stopping")
        let (pinger, control, wyoming, task) = locked { (watchdog, controlServer, wyomingServer, serviceTask) }
        pinger?.stop()
        budgetFollower.stop()
        await Self.offThePool { self.capture.stop() }
        broadcaster.finish()
        await control?.shutdown()
        await wyoming?.shutdown()
        await service.shutdown()
        // Not awaited: a build under way (about 9 s of one idle-priority core for tiny.en, 18 s for base)
        // is dropped; its result would serve nobody, and it ends with the process.
        task?.cancel()
        await Self.offThePool { self.workers.shutdown() }
        logger.info("stopped", metadata: ["uptime_s": "\(Int(Date().timeIntervalSince(started)))"])
    }

    /// Runs blocking work (waiting for threads) on a Dispatch thread, not on Swift's cooperative pool.
    private static func offThePool(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                body()
                done.resume()
            }
        }
    }

    static func ensureDirectory(_ path: String, mode: mode_t, purpose: String) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw DaemonError.directory(path: path, purpose: purpose, reason: "exists and is not a directory")
            }
            return
        }
        do {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: Int(mode)])
        } catch {
            throw DaemonError.directory(path: path, purpose: purpose, reason: "cannot create it: \(error.localizedDescription)")
        }
    }

    // MARK: - Sockets

    private func startServers(_ config: DaemonConfiguration) async throws {
        let endpoints = try DaemonEndpoints(configuration: config, environment: environment, logger: logger)
        let groupID: UInt32?
        do { groupID = try config.socketGroupID() } catch { throw DaemonError.sockets(reason: "\(error)") }
        let connection = config.connectionOptions(socketGroup: groupID)
        let control = ControlServer(
            endpoints: endpoints.control, control: self, transcription: self,
            configuration: ControlServerConfiguration(
                connection: connection, maxRequestBytes: config.maxRequestBytes, maxAudioSeconds: config.maxAudioSeconds),
            logger: logger)
        let wyoming = endpoints.wyoming.isEmpty ? nil : WyomingServer(
            endpoints: endpoints.wyoming, backend: self,
            configuration: WyomingServerConfiguration(
                connection: connection, maxAudioSeconds: config.maxAudioSeconds,
                serviceInfo: { [weak self] in self?.serviceInfo() ?? WyomingServiceInfo(modelName: "whisper", languages: ["en"]) }),
            logger: logger)
        do {
            try await control.start()
        } catch {
            throw DaemonError.sockets(reason: "control socket: \(error)")
        }
        do {
            try await wyoming?.start()
        } catch {
            await control.shutdown()
            throw DaemonError.sockets(reason: "Wyoming socket: \(error)")
        }
        locked {
            controlServer = control
            wyomingServer = wyoming
            ownSocketPaths = endpoints.ownPaths
        }
    }

    private func serviceInfo() -> WyomingServiceInfo {
        guard let model = service.store.current?.provided.model else {
            return WyomingServiceInfo(modelName: "whisper", languages: ["en"])
        }
        let tokenizer = model.tokenizer
        let languages = tokenizer.isMultilingual
            ? tokenizer.languageTokens.compactMap { tokenizer.languageCode(forToken: $0) } : ["en"]
        return WyomingServiceInfo(modelName: model.name, modelDescription: "Whisper \(model.name)", languages: languages)
    }

    private func notifyStatus() {
        _ = try? SystemdNotifier.status(statusLine())
    }

    private func statusLine() -> String { Self.statusLine(service.store.current, utterances: counters.utterances) }

    /// "model tiny.en, mixed 4-5-bit, weights 23.9 MiB (budget 24.0 MiB), 1 utterance": the sd_notify STATUS= line.
    private static func statusLine(_ entry: ModelStore.Entry?, utterances count: Int) -> String {
        guard let entry else { return "starting" }
        var line = "model \(entry.provided.model.name), \(entry.provided.precision), "
            + "weights \(ByteSize.format(entry.provided.weightBytes))"
        if let budget = entry.target.budget.bytes {
            line += entry.provided.budgetMet ? " (budget \(ByteSize.format(budget)))" : " (over budget \(ByteSize.format(budget)))"
        }
        return line + ", \(count) utterance\(count == 1 ? "" : "s")"
    }

    // MARK: - TranscriptionBackend

    /// Transcribes a socket request on a worker, in turn with the other clients' requests (refused as `busy`
    /// when the queue is full); stops when the calling task is cancelled (the client went away).
    public func transcribe(samples: [Float], language: String?, origin: RequestOrigin) async throws -> TranscriptResult {
        let transcript: Transcript
        do {
            transcript = try await workers.transcribe(samples: samples, language: language, client: origin.fairnessKey)
        } catch let error as TranscriptionQueueError {
            switch error {
            case .busy: throw ControlError(code: "busy", message: error.description)
            case .shuttingDown: throw ControlError(code: "shutting_down", message: error.description)
            case .notReady: throw ControlError(code: "not_ready", message: error.description)
            }
        }
        return TranscriptResult(
            text: transcript.text.trimmingCharacters(in: .whitespacesAndNewlines), language: transcript.language,
            segments: transcript.segments.map { TranscriptSegment(start: $0.start, end: $0.end, text: $0.text) })
    }

    /// `capture.partial_interval`, which also paces a streamed Wyoming request's partial transcripts.
    public var partialInterval: Double {
        lock.lock()
        defer { lock.unlock() }
        return configuration.partialInterval
    }

    /// A partial pass over a streamed request's audio so far, on an idle worker only (nil when it was dropped).
    public func transcribePartial(samples: [Float], language: String?, origin: RequestOrigin) async -> TranscriptResult? {
        guard let transcript = await workers.transcribePartial(samples: samples, language: language,
                                                               source: "connection \(origin.connection)")
        else { return nil }
        return TranscriptResult(text: transcript.text.trimmingCharacters(in: .whitespacesAndNewlines),
                                language: transcript.language)
    }

    // MARK: - ControlBackend

    /// A snapshot: the model in service and why, weights against the budget, the job queue, uptime, utterances,
    /// statistics, capture state.
    public func status() async -> DaemonStatus {
        let seen = counters.utterances
        let entry = service.store.current
        let queue = workers.statistics
        var status = DaemonStatus(
            modelName: entry?.provided.model.name ?? "(loading)", layerBits: entry?.provided.layerBits,
            memoryBytes: entry?.provided.weightBytes ?? 0, budgetBytes: entry?.target.budget.bytes,
            uptimeSeconds: Date().timeIntervalSince(started), utterancesSeen: seen,
            statisticsSamples: personal?.statisticsSamples ?? 0,
            lastRequantization: entry.flatMap { $0.generation > 1 ? $0.since : nil }, captureState: capture.state)
        if let entry {
            status.model = ModelStatus(
                generation: entry.generation, reason: entry.reason.rawValue, plan: "\(entry.provided.plan)",
                budgetOrigin: entry.target.budget.bytes == nil && entry.target.budget.origin != .auto
                    ? nil : entry.target.budget.origin.rawValue,
                statisticsSamples: entry.provided.statisticsSamples, since: entry.since,
                checkDivergence: entry.check?.divergence)
            if let own = service.store.ownDrift, own.utterances > 0 {
                status.model?.ownSpeechDrift = own.divergence.meanKL
                status.model?.ownSpeechUtterances = own.utterances
            }
            if let shadow = service.store.shadow {
                status.model?.candidateUtterances = shadow.utterances
                if shadow.utterances > 0 { status.model?.candidateDrift = shadow.drift.meanKL }
            }
        }
        status.queue = QueueStatus(waiting: queue.waiting, running: queue.running, depth: queue.depth,
                                   droppedUtterances: queue.droppedUtterances, refusedRequests: queue.refusedRequests,
                                   cancelledRequests: queue.cancelledRequests)
        releaseAfterStatus()
        return status
    }

    /// A `status` and its answer run code nothing else at rest runs (JSON, dates, ICU): one took the resident set
    /// from 23.6 to 37.3 MiB here, nearly all of it library code pages (libswiftCore, FoundationEssentials,
    /// FoundationICU). As after a job, those pages leave the resident set once no job runs or waits
    /// (`TranscriptionWorkers.releaseIfIdle`; the next `status` maps them again with minor faults): a second after
    /// the first `status` of a quiet moment, so that a client that polls often pays for it once a second at most.
    private func releaseAfterStatus() {
        let schedule = locked { () -> Bool in
            if releaseDue { return false }
            releaseDue = true
            return true
        }
        guard schedule else { return }
        DispatchQueue.global(qos: .utility).asyncAfter(deadline: .now() + 1) { [weak self] in
            guard let self else { return }
            self.locked { self.releaseDue = false }
            self.workers.releaseIfIdle()
        }
    }

    /// Applies a new memory budget (nil: unlimited) and returns once the model for it serves; a budget no model
    /// meets, or whose model fails its self-check, is refused with the reason and the model in service stays.
    /// Lasts until the next reload or restart.
    public func setBudget(bytes: Int?) async throws {
        if let bytes, bytes < 1024 * 1024 {
            throw ControlError(code: "impossible_budget", message: "a budget below 1 MiB cannot hold any model")
        }
        do {
            try await service.setBudget(Budget(bytes: bytes, origin: .command))
        } catch let error as ModelServiceError {
            throw ControlError(code: error.code, message: error.description)
        }
    }

    /// Re-reads the configuration and the model (also what SIGHUP does). An invalid file, or a model or budget
    /// the service refuses, is refused with the reason; the configuration in force stays and serving continues.
    public func reload() async throws {
        _ = try? SystemdNotifier.reloading(status: "reloading configuration")
        defer { _ = try? SystemdNotifier.ready(status: statusLine()) }
        let new: DaemonConfiguration
        let path: String?
        do {
            (new, path) = try source.load(environment: environment)
        } catch {
            logger.error("configuration rejected; keeping the one in force: \(error)")
            throw ControlError(code: "bad_config", message: "\(error)")
        }
        do {
            try await service.reload(source: new.model, budget: Self.budget(
                new, follower: budgetFollower, served: service.store.current?.provided.weightBytes ?? 0))
        } catch let error as ModelServiceError {
            logger.error("configuration rejected; keeping the one in force: model: \(error)")
            throw ControlError(code: error.code, message: error.description)
        }
        let old = locked { () -> DaemonConfiguration in
            defer { configuration = new }
            return configuration
        }
        if new.memoryBudgetAuto { budgetFollower.start(service: service) } else { budgetFollower.stop() }
        if old.capturePipeline != new.capturePipeline || old.captureEnabled != new.captureEnabled {
            try await Self.offThrowing {
                self.capture.stop()
                if new.captureEnabled { try self.capture.start(new.capturePipeline) }
            }
            logger.info("capture restarted with the new settings")
        }
        let restartOnly = Self.restartOnlyChanges(old, new)
        if !restartOnly.isEmpty {
            logger.notice("these settings take effect at the next restart: \(restartOnly.joined(separator: ", "))")
        }
        logger.info("configuration reloaded", metadata: ["file": "\(path ?? "(defaults)")"])
    }

    private static func offThrowing(_ body: @escaping @Sendable () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, Error>) in
            DispatchQueue.global().async { done.resume(with: Result { try body() }) }
        }
    }

    private static func restartOnlyChanges(_ a: DaemonConfiguration, _ b: DaemonConfiguration) -> [String] {
        var keys: [String] = []
        if a.threads != b.threads { keys.append("model.threads") }
        if a.workers != b.workers { keys.append("model.workers") }
        if a.requantizeAfter != b.requantizeAfter { keys.append("model.requantize_after") }
        if a.shadowUtterances != b.shadowUtterances { keys.append("model.shadow_utterances") }
        if a.runtimeDirectory != b.runtimeDirectory || a.controlSocketName != b.controlSocketName
            || a.wyomingSocketName != b.wyomingSocketName || a.socketMode != b.socketMode || a.socketGroup != b.socketGroup
        { keys.append("sockets") }
        if a.wyomingTCPEnabled != b.wyomingTCPEnabled || a.wyomingTCPAddress != b.wyomingTCPAddress
            || a.wyomingTCPPort != b.wyomingTCPPort
        { keys.append("wyoming_tcp") }
        if a.maxConnections != b.maxConnections || a.maxAudioSeconds != b.maxAudioSeconds
            || a.maxRequestBytes != b.maxRequestBytes || a.queueDepth != b.queueDepth || a.idleTimeout != b.idleTimeout
            || a.maxConnectionsPerUser != b.maxConnectionsPerUser || a.maxBufferedBytes != b.maxBufferedBytes
            || a.maxConnectionBytes != b.maxConnectionBytes || a.requestTimeout != b.requestTimeout
        { keys.append("limits") }
        if a.logLevel != b.logLevel { keys.append("log.level") }
        if a.stateDirectory != b.stateDirectory { keys.append("state.directory") }
        return keys
    }

    /// Deletes personal data and returns once none is left: the counters, the live utterances waiting and all
    /// buffered audio (capture restarts, zeroing its ring buffer), the statistics in memory and on disk, and the
    /// personalised weights (the model service serves the source model at the budget without statistics).
    public func forget() async throws {
        let config = locked { configuration }
        // Capture restarts first: once it has, no utterance heard before this point can still arrive (the old
        // pipeline's are wiped, `LiveCapture`), so when the live epoch moves every earlier one is either waiting
        // (wiped unheard) or running (transcribed, never observed for the statistics).
        if config.captureEnabled {
            try await Self.offThrowing { try self.capture.start(config.capturePipeline) }
        }
        counters.reset()
        workers.forgetLive()
        do {
            try await service.forget()
        } catch let error as ModelServiceError {
            throw ControlError(code: error.code, message: error.description)
        }
        logger.info("personal data forgotten (statistics, counters, buffered audio, personalised weights)")
    }

    /// A fresh bounded stream of live transcripts for one `listen` client.
    public func liveTranscripts() -> AsyncStream<LiveTranscript> {
        broadcaster.subscribe()
    }

    /// Paths of the Unix sockets this daemon created itself (empty under socket activation).
    public var socketPaths: [String] { locked { ownSocketPaths } }
}

/// Live utterances transcribed since start (or the last `forget`) and their seconds of audio.
private final class LiveCounters: @unchecked Sendable {  // @unchecked: guarded by `lock`
    private let lock = NSLock()
    private var count = 0
    private var seconds = 0.0

    var utterances: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }

    /// Counts one utterance of `audioSeconds`; returns the new totals.
    func add(_ audioSeconds: Double) -> (Int, Double) {
        lock.lock()
        defer { lock.unlock() }
        count += 1
        seconds += audioSeconds
        return (count, seconds)
    }

    func reset() {
        lock.lock()
        count = 0
        seconds = 0
        lock.unlock()
    }
}
