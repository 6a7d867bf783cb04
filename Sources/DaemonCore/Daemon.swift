import Audio
import Capture
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
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
    /// The configured memory budget cannot be met by any precision (a configuration error).
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

/// The speech-recognition daemon: model, transcription workers, microphone capture and the control and
/// Wyoming servers, with reload, budget changes and systemd notification.
///
/// Life cycle: `start()` (model loaded, sockets listening, capture started, `READY=1`), then any number of
/// `reload()` / `setBudget(bytes:)` / `forget()`, then `shutdown()`. Nothing the user says is logged: only
/// durations, counts and sizes.
public final class Daemon: TranscriptionBackend, ControlBackend, @unchecked Sendable {
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
    private let modelProvider: ModelProvider
    private let personal: PersonalStatistics?
    private let environment: [String: String]
    private let controlQueue = DispatchQueue(label: "myqasr.control")
    private let lock = NSLock()
    private let started = Date()
    private let broadcaster = LiveBroadcaster()

    // Guarded by `lock`.
    private var configuration: DaemonConfiguration
    private var budgetBytes: Int?
    private var store: ModelStore?
    private var workers: TranscriptionWorkers?
    private var pipeline: CapturePipeline?
    private var captureTasks: [Task<Void, Never>] = []
    private var captureState: CaptureState = .disabled
    private var utterancesSeen = 0
    private var audioSecondsSeen = 0.0
    private var lastModelChange: Date?
    private var observer: UtteranceObserver?
    private var controlServer: ControlServer?
    private var wyomingServer: WyomingServer?
    private var watchdog: WatchdogPinger?
    private var ownSocketPaths: [String] = []
    private var isShutDown = false

    /// Creates a daemon with a loaded configuration; nothing runs until `start()`.
    /// - Parameters:
    ///   - modelProvider: budget -> model; defaults to `BudgetModelProvider` (float, else myQASR widths from the
    ///     personal statistics, else uniform bits that fit).
    ///   - utteranceObserver: sees each live utterance before it is wiped; defaults (when neither this nor
    ///     `modelProvider` is given) to `PersonalStatistics` in the state directory, feeding the default provider.
    public init(
        configuration: DaemonConfiguration, source: ConfigurationSource, logger: Logger,
        modelProvider: ModelProvider? = nil, utteranceObserver: UtteranceObserver? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) {
        self.configuration = configuration
        self.source = source
        self.logger = logger
        if modelProvider == nil && utteranceObserver == nil {
            // The default loop: statistics of the float model on live utterances, kept in the state directory,
            // choose the widths whenever a budget calls for a quantized model.
            let personal = PersonalStatistics(directory: configuration.resolvedStateDirectory(environment: environment),
                                              requantizeAfter: configuration.requantizeAfter, logger: logger)
            self.modelProvider = BudgetModelProvider(personalStatistics: { personal.statistics(for: $0) }).asModelProvider
            self.observer = personal
            self.personal = personal
        } else {
            self.modelProvider = modelProvider ?? BudgetModelProvider().asModelProvider
            self.observer = utteranceObserver
            self.personal = nil
        }
        self.environment = environment
        budgetBytes = configuration.memoryBudget
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Runs blocking work on the control queue: model loads, capture restarts. One at a time.
    private func serially<T>(_ body: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            controlQueue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    // MARK: - Start and stop

    /// Loads the model, starts the workers, the sockets and capture, then tells systemd `READY=1`.
    public func start() async throws {
        let config = locked { configuration }
        let runtimeDirectory = config.resolvedRuntimeDirectory(environment: environment)
        let stateDirectory = config.resolvedStateDirectory(environment: environment)
        try Self.ensureDirectory(stateDirectory, mode: 0o700, purpose: "state directory")

        personal?.setSourceModel(config.model)
        personal?.whenNewSamples { [weak self] in
            Task { await self?.requantizeFromStatistics() }
        }
        let loadStart = DispatchTime.now()
        let provided: ProvidedModel
        do {
            provided = try await serially { [modelProvider] in
                try modelProvider(ModelRequest(name: config.model, budgetBytes: config.memoryBudget, reloadFromDisk: false))
            }
        } catch let error as ModelProviderError {
            throw DaemonError.budget(reason: "\(error)")
        } catch {
            throw DaemonError.model(name: config.model, reason: "\(error)")
        }
        logger.info("model loaded", metadata: [
            "model": "\(provided.model.name)", "weights": "\(ByteSize.format(provided.weightBytes))",
            "precision": "\(Precision.describe(provided.layerBits))",
            "took_s": "\(String(format: "%.2f", TranscriptionWorkers.seconds(since: loadStart)))",
        ])
        reportBudget(provided, budget: config.memoryBudget)
        let store = ModelStore(provided, budgetBytes: config.memoryBudget)
        let workers = TranscriptionWorkers(
            store: store, count: config.workers, threads: config.threads, queueDepth: config.queueDepth,
            logger: logger, onLiveResult: { [weak self] in self?.liveResult($0) })
        workers.utteranceObserver = locked { observer }
        locked {
            self.store = store
            self.workers = workers
        }

        try await startServers(config, runtimeDirectory: runtimeDirectory)
        if config.captureEnabled {
            try await serially { try self.startCapture(config) }
        }

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

    /// Stops capture, ends `listen` streams, lets requests in progress finish, stops the workers.
    public func shutdown() async {
        let alreadyDown = locked { () -> Bool in
            defer { isShutDown = true }
            return isShutDown
        }
        if alreadyDown { return }
        _ = try? SystemdNotifier.stopping(status: "stopping")
        logger.info("stopping")
        let (pinger, control, wyoming) = locked { (watchdog, controlServer, wyomingServer) }
        pinger?.stop()
        _ = try? await serially { self.stopCapture() }
        broadcaster.finish()
        await control?.shutdown()
        await wyoming?.shutdown()
        locked { workers }?.shutdown()
        logger.info("stopped", metadata: ["uptime_s": "\(Int(Date().timeIntervalSince(started)))"])
    }

    private static func ensureDirectory(_ path: String, mode: mode_t, purpose: String) throws {
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

    private func startServers(_ config: DaemonConfiguration, runtimeDirectory: String) async throws {
        let activated: [ActivatedSocket]
        do {
            activated = try SocketActivation.sockets()
        } catch {
            throw DaemonError.sockets(reason: "\(error)")
        }
        var controlEndpoints: [ListenerEndpoint] = []
        var wyomingEndpoints: [ListenerEndpoint] = []
        var ownPaths: [String] = []
        if activated.isEmpty {
            try Self.ensureDirectory(runtimeDirectory, mode: 0o755, purpose: "runtime directory")
            let controlPath = config.controlSocketPath(environment: environment)
            controlEndpoints.append(.unix(path: controlPath))
            ownPaths.append(controlPath)
            if let wyomingPath = config.wyomingSocketPath(environment: environment) {
                wyomingEndpoints.append(.unix(path: wyomingPath))
                ownPaths.append(wyomingPath)
            }
            if config.wyomingTCPEnabled {
                wyomingEndpoints.append(.tcp(host: config.wyomingTCPAddress, port: config.wyomingTCPPort))
            }
        } else {
            for socket in activated {
                guard socket.isStreamListener else {
                    throw DaemonError.sockets(reason: "activated socket \"\(socket.name)\" (fd \(socket.fileDescriptor)) is not a listening stream socket")
                }
                switch Self.role(of: socket, configuration: config) {
                case .control: controlEndpoints.append(.fileDescriptor(socket.fileDescriptor))
                case .wyoming: wyomingEndpoints.append(.fileDescriptor(socket.fileDescriptor))
                case nil:
                    throw DaemonError.sockets(reason: "activated socket \"\(socket.name)\" (fd \(socket.fileDescriptor)) is neither \(config.controlSocketName) nor \(config.wyomingSocketName) nor TCP, and its FileDescriptorName= is not control, wyoming or wyoming-tcp")
                }
            }
            guard !controlEndpoints.isEmpty else {
                throw DaemonError.sockets(reason: "socket activation passed no socket named \"control\" (have: \(activated.map(\.name).joined(separator: ", ")))")
            }
            logger.info("using \(activated.count) socket(s) from systemd")
        }

        let groupID: UInt32?
        do { groupID = try config.socketGroupID() } catch { throw DaemonError.sockets(reason: "\(error)") }
        let connection = ConnectionOptions(
            maxConnections: config.maxConnections, idleTimeout: .milliseconds(Int64(config.idleTimeout * 1000)),
            socketMode: config.socketMode, socketGroup: groupID, peerPolicy: PeerPolicy(allowedGroup: groupID))
        let resampler: Serving.Resampler = { samples, rate in
            (try? Audio.Resampler.resample(samples, from: rate, to: 16000)) ?? AudioConversion.resampleTo16k(samples, rate: rate)
        }
        let control = ControlServer(
            endpoints: controlEndpoints, control: self, transcription: self,
            configuration: ControlServerConfiguration(
                connection: connection, maxRequestBytes: config.maxRequestBytes, maxAudioSeconds: config.maxAudioSeconds,
                resampler: resampler,
                wavDecoder: { data in try decodeAudio(data: data, targetRate: 16000, name: "request") }),
            logger: logger)
        let wyoming = wyomingEndpoints.isEmpty ? nil : WyomingServer(
            endpoints: wyomingEndpoints, backend: self,
            configuration: WyomingServerConfiguration(
                connection: connection, maxAudioSeconds: config.maxAudioSeconds, resampler: resampler,
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
            ownSocketPaths = ownPaths
        }
    }

    private enum SocketRole { case control, wyoming }

    /// Which server an activated socket belongs to. systemd gives every socket of one .socket unit the same
    /// FileDescriptorName=, so a Unix socket is recognised by its file name (sockets.control / sockets.wyoming)
    /// and a TCP socket serves Wyoming; names control, wyoming and wyoming-tcp (separate units) also work.
    private static func role(of socket: ActivatedSocket, configuration: DaemonConfiguration) -> SocketRole? {
        switch socket.name {
        case "control": return .control
        case "wyoming", "wyoming-tcp": return .wyoming
        default: break
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket.fileDescriptor, $0, &length) == 0 }
        }
        guard ok else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET, AF_INET6:
            return .wyoming
        case AF_UNIX:
            let path = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { address in
                    withUnsafeBytes(of: address.pointee.sun_path) { raw in
                        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                    }
                }
            }
            let name = (path as NSString).lastPathComponent
            if name == configuration.controlSocketName { return .control }
            if !configuration.wyomingSocketName.isEmpty && name == configuration.wyomingSocketName { return .wyoming }
            return nil
        default:
            return nil
        }
    }

    private func serviceInfo() -> WyomingServiceInfo {
        guard let model = locked({ store })?.current.provided.model else {
            return WyomingServiceInfo(modelName: "whisper", languages: ["en"])
        }
        let tokenizer = model.tokenizer
        let languages = tokenizer.isMultilingual
            ? tokenizer.languageTokens.compactMap { tokenizer.languageCode(forToken: $0) } : ["en"]
        return WyomingServiceInfo(modelName: model.name, modelDescription: "Whisper \(model.name)", languages: languages)
    }

    // MARK: - Capture

    /// Starts a capture pipeline (on the control queue).
    private func startCapture(_ config: DaemonConfiguration) throws {
        let pipeline: CapturePipeline
        do {
            pipeline = try CapturePipeline(configuration: config.capturePipeline, logger: logger)
            try pipeline.start()
        } catch {
            throw DaemonError.capture(reason: "\(error)")
        }
        let workers = locked { self.workers }
        let utteranceTask = Task.detached { [logger] in
            for await utterance in pipeline.utterances {
                if let workers {
                    workers.submit(live: utterance)
                } else {
                    utterance.wipe()
                    logger.warning("utterance wiped: no transcription workers")
                }
            }
        }
        let eventTask = Task.detached { [weak self, logger] in
            var failuresInARow = 0  // only the first failure of a streak is a warning; retries are debug
            for await event in pipeline.events {
                let state: CaptureState?
                switch event {
                case .opened:
                    state = .capturing
                    failuresInARow = 0
                    logger.debug("capture \(event)")
                case .unavailable, .lost:
                    state = .failed
                    failuresInARow += 1
                    if failuresInARow == 1 {
                        logger.warning("capture \(event); retrying while the sockets keep serving")
                    } else {
                        logger.debug("capture \(event)")
                    }
                case .retrying: state = nil; logger.debug("capture \(event)")
                case .overrun: state = nil; logger.notice("capture \(event)")
                case .stopped: state = nil
                }
                if let state, let self { self.locked { self.captureState = state } }
            }
        }
        locked {
            self.pipeline = pipeline
            captureTasks = [utteranceTask, eventTask]
            captureState = .paused  // until the device opens
        }
    }

    /// Stops capture; audio not yet cut into utterances is zeroed and dropped (on the control queue).
    private func stopCapture() {
        let (pipeline, tasks) = locked { () -> (CapturePipeline?, [Task<Void, Never>]) in
            defer {
                self.pipeline = nil
                captureTasks = []
                captureState = .disabled
            }
            return (self.pipeline, captureTasks)
        }
        guard let pipeline else { return }
        let statistics = pipeline.statistics
        // stop() waits for the capture thread, which a driver can hold inside a blocking read (ALSA's file
        // plugin on a FIFO without data). Do not let that wedge shutdown, reload or forget: wait a bounded time;
        // the pipeline still stops (and zeroes its buffers) as soon as the read returns.
        let stopped = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            pipeline.stop()
            stopped.signal()
        }
        if stopped.wait(timeout: .now() + 3) == .timedOut {
            logger.warning("capture did not stop within 3 s (the device is blocked in a read); continuing without it")
        }
        _ = tasks  // both end when the pipeline's streams finish
        logger.info("capture stopped", metadata: [
            "utterances": "\(statistics.utterances)", "overruns": "\(statistics.overruns)",
            "dropped_samples": "\(statistics.droppedSamples)",
        ])
    }

    // MARK: - Live results

    private func liveResult(_ result: LiveResult) {
        let (count, total) = locked { () -> (Int, Double) in
            utterancesSeen += 1
            audioSecondsSeen += result.audioSeconds
            return (utterancesSeen, audioSecondsSeen)
        }
        logger.info("utterance transcribed", metadata: [
            "audio_s": "\(String(format: "%.2f", result.audioSeconds))",
            "took_s": "\(String(format: "%.2f", result.processingSeconds))",
            "characters": "\(result.transcript.text.count)", "utterances": "\(count)",
            "audio_total_s": "\(String(format: "%.1f", total))",
        ])
        broadcaster.publish(result.transcript)
        _ = try? SystemdNotifier.status(statusLine())
    }

    private func statusLine() -> String {
        let (entry, count, budget) = locked { (store?.current, utterancesSeen, budgetBytes) }
        guard let entry else { return "starting" }
        var line = "model \(entry.provided.model.name), \(Precision.describe(entry.provided.layerBits)), "
            + "weights \(ByteSize.format(entry.provided.weightBytes))"
        if let budget {
            line += entry.provided.budgetMet ? " (budget \(ByteSize.format(budget)))" : " (over budget \(ByteSize.format(budget)))"
        }
        return line + ", \(count) utterance\(count == 1 ? "" : "s")"
    }

    private func reportBudget(_ provided: ProvidedModel, budget: Int?) {
        guard let budget else { return }
        let metadata: Logger.Metadata = [
            "weights": "\(ByteSize.format(provided.weightBytes))", "budget": "\(ByteSize.format(budget))",
            "precision": "\(Precision.describe(provided.layerBits))",
        ]
        if provided.budgetMet {
            logger.info("memory budget met", metadata: metadata)
        } else {
            logger.warning("memory budget not met by the model the provider chose", metadata: metadata)
        }
    }

    // MARK: - TranscriptionBackend

    /// Transcribes a socket request on a worker (queued behind live utterances; refused when the queue is full).
    public func transcribe(samples: [Float], language: String?) async throws -> TranscriptResult {
        guard let workers = locked({ workers }) else {
            throw ControlError(code: "not_ready", message: "the daemon is still starting")
        }
        let transcript: Transcript
        do {
            transcript = try await workers.transcribe(samples: samples, language: language)
        } catch let error as TranscriptionQueueError {
            switch error {
            case .busy: throw ControlError(code: "busy", message: error.description)
            case .shuttingDown: throw ControlError(code: "shutting_down", message: error.description)
            }
        }
        return TranscriptResult(
            text: transcript.text.trimmingCharacters(in: .whitespacesAndNewlines), language: transcript.language,
            segments: transcript.segments.map { TranscriptSegment(start: $0.start, end: $0.end, text: $0.text) })
    }

    // MARK: - ControlBackend

    /// A snapshot: model, per-layer bits, weights vs budget, uptime, utterances, capture state.
    public func status() async -> DaemonStatus {
        let (entry, budget, seen, state, changed, observer) = locked {
            (store?.current, budgetBytes, utterancesSeen, captureState, lastModelChange, self.observer)
        }
        return DaemonStatus(
            modelName: entry?.provided.model.name ?? "(loading)", layerBits: entry?.provided.layerBits,
            memoryBytes: entry?.provided.weightBytes ?? 0, budgetBytes: budget,
            uptimeSeconds: Date().timeIntervalSince(started), utterancesSeen: seen,
            statisticsSamples: observer?.statisticsSamples ?? 0, lastRequantization: changed, captureState: state)
    }

    /// Applies a new memory budget: the provider chooses the model that fits (float, else myQASR's widths from the
    /// personal statistics, else the highest uniform width that fits), prepared off the serving path and swapped in
    /// when ready. A budget no precision can meet is
    /// refused as `impossible_budget` with the smallest reachable size; the model in service stays. Lasts until the
    /// next reload or restart.
    public func setBudget(bytes: Int) async throws {
        guard bytes >= 1024 * 1024 else {
            throw ControlError(code: "impossible_budget", message: "a budget below 1 MiB cannot hold any model")
        }
        try await applyModel(budget: bytes, reloadFromDisk: false, reason: "budget")
    }

    /// Quantizes the model in service again from the grown personal statistics, at the budget in force.
    func requantizeFromStatistics() async {
        let budget = locked { budgetBytes }
        do {
            try await applyModel(budget: budget, reloadFromDisk: false, reason: "statistics")
        } catch {
            logger.error("re-quantization from the statistics failed; the model in service stays: \(error)")
        }
    }

    /// Re-reads the configuration and the model (also what SIGHUP does). An invalid file is refused with the
    /// key and reason; the configuration in force stays and serving continues.
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
        let old = locked { configuration }
        try await applyModel(name: new.model, budget: new.memoryBudget, reloadFromDisk: true, reason: "reload")
        let captureChanged = old.capturePipeline != new.capturePipeline || old.captureEnabled != new.captureEnabled
        locked { configuration = new }
        if captureChanged {
            try await serially {
                self.stopCapture()
                if new.captureEnabled { try self.startCapture(new) }
            }
            logger.info("capture restarted with the new settings")
        }
        let restartOnly = Self.restartOnlyChanges(old, new)
        if !restartOnly.isEmpty {
            logger.notice("these settings take effect at the next restart: \(restartOnly.joined(separator: ", "))")
        }
        logger.info("configuration reloaded", metadata: ["file": "\(path ?? "(defaults)")"])
    }

    private static func restartOnlyChanges(_ a: DaemonConfiguration, _ b: DaemonConfiguration) -> [String] {
        var keys: [String] = []
        if a.threads != b.threads { keys.append("model.threads") }
        if a.workers != b.workers { keys.append("model.workers") }
        if a.requantizeAfter != b.requantizeAfter { keys.append("model.requantize_after") }
        if a.runtimeDirectory != b.runtimeDirectory || a.controlSocketName != b.controlSocketName
            || a.wyomingSocketName != b.wyomingSocketName || a.socketMode != b.socketMode || a.socketGroup != b.socketGroup
        { keys.append("sockets") }
        if a.wyomingTCPEnabled != b.wyomingTCPEnabled || a.wyomingTCPAddress != b.wyomingTCPAddress
            || a.wyomingTCPPort != b.wyomingTCPPort
        { keys.append("wyoming_tcp") }
        if a.maxConnections != b.maxConnections || a.maxAudioSeconds != b.maxAudioSeconds
            || a.maxRequestBytes != b.maxRequestBytes || a.queueDepth != b.queueDepth || a.idleTimeout != b.idleTimeout
        { keys.append("limits") }
        if a.logLevel != b.logLevel { keys.append("log.level") }
        if a.stateDirectory != b.stateDirectory { keys.append("state.directory") }
        return keys
    }

    /// Asks the provider for the model that fits and swaps it in (running transcriptions finish on the old one).
    private func applyModel(name: String? = nil, budget: Int?, reloadFromDisk: Bool, reason: String) async throws {
        guard let store = locked({ store }) else {
            throw ControlError(code: "not_ready", message: "the daemon is still starting")
        }
        let modelName = name ?? locked { configuration.model }
        let started = DispatchTime.now()
        let provided: ProvidedModel
        do {
            provided = try await serially { [modelProvider] in
                try modelProvider(ModelRequest(name: modelName, budgetBytes: budget, reloadFromDisk: reloadFromDisk))
            }
        } catch let error as ModelProviderError {
            if reason == "reload" {
                logger.error("configuration rejected; keeping the one in force: model.memory_budget: \(error)")
            } else {
                logger.error("budget refused; keeping the model in service: \(error)")
            }
            let code: String
            switch error {
            case .impossibleBudget, .fileAboveBudget: code = "impossible_budget"
            case .sizeMismatch: code = "model_unavailable"
            }
            throw ControlError(code: code, message: "\(error)")
        } catch {
            logger.error("model change refused; keeping the model in service: \(error)")
            throw ControlError(code: "model_unavailable", message: "cannot load model \"\(modelName)\": \(error)")
        }
        let generation = store.swap(to: provided, budgetBytes: budget)
        personal?.setSourceModel(modelName)
        // The float network the quantization read is freed by now; its pages go back to the system.
        WhisperModel.releaseFreedMemory()
        locked {
            budgetBytes = budget
            lastModelChange = Date()
        }
        logger.info("model in service", metadata: [
            "reason": "\(reason)", "model": "\(provided.model.name)", "generation": "\(generation)",
            "weights": "\(ByteSize.format(provided.weightBytes))", "precision": "\(Precision.describe(provided.layerBits))",
            "took_s": "\(String(format: "%.2f", TranscriptionWorkers.seconds(since: started)))",
        ])
        reportBudget(provided, budget: budget)
        _ = try? SystemdNotifier.status(statusLine())
    }

    /// Deletes personal data: the observer's statistics, the counters, and all buffered audio (capture is
    /// restarted, which zeroes the ring buffer and any unfinished utterance).
    public func forget() async throws {
        let (observer, config) = locked { () -> (UtteranceObserver?, DaemonConfiguration) in
            utterancesSeen = 0
            audioSecondsSeen = 0
            return (self.observer, configuration)
        }
        observer?.forget()
        if config.captureEnabled {
            try await serially {
                self.stopCapture()
                try self.startCapture(config)
            }
        }
        logger.info("personal data forgotten (statistics, counters, buffered audio)")
    }

    /// A fresh bounded stream of live transcripts for one `listen` client.
    public func liveTranscripts() -> AsyncStream<LiveTranscript> {
        broadcaster.subscribe()
    }

    /// Paths of the Unix sockets this daemon created itself (empty under socket activation).
    public var socketPaths: [String] { locked { ownSocketPaths } }
}
