import Capture
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import Serving
import TOMLKit
import Units

/// Why a configuration could not be used: the file, the key and the reason.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    /// The file (or "command line") the problem is in.
    public var source: String
    /// The dotted key ("capture.ring_seconds"), or nil for a problem with the whole file.
    public var key: String?
    /// What is wrong.
    public var reason: String

    /// Creates an error.
    public init(source: String, key: String?, reason: String) {
        self.source = source
        self.key = key
        self.reason = reason
    }

    /// "FILE: key K: REASON".
    public var description: String {
        if let key { return "\(source): key \(key): \(reason)" }
        return "\(source): \(reason)"
    }
}

/// Everything `myqasrd` can be configured with. Defaults are the documented ones in `config/myqasrd.toml`.
public struct DaemonConfiguration: Sendable, Equatable {
    // MARK: model
    /// Model name (`tiny.en`, `base`) or a CTranslate2 model directory.
    public var model = "tiny.en"
    /// Threads each transcription worker uses.
    public var threads = 2
    /// Transcription workers (each owns one `SpeechRecognizer`).
    public var workers = 1
    /// Memory budget for the model weights in bytes; nil means unlimited. Ignored when `memoryBudgetAuto` is set.
    public var memoryBudget: Int? = nil
    /// `memory_budget = "auto"`: the budget follows the cgroup's limits and free memory (`AutoBudgetPolicy`).
    public var memoryBudgetAuto = false
    /// With an automatic budget: the memory left for everything but the weights (the daemon's own working set
    /// inside its cgroup, other programs outside it).
    public var memoryReserve = 256 << 20
    /// With an automatic budget: seconds between two readings of the memory files.
    public var memoryPollInterval = 5.0
    /// Utterances gathered into the personal statistics while a quantized model serves before it is
    /// quantized again from them (0: only at budget changes, reloads and restarts).
    public var requantizeAfter = 20
    /// Live utterances on which a model re-quantized from grown statistics is compared with the one serving
    /// before it may replace it (0: it replaces it at once, after its self-check).
    public var shadowUtterances = 3

    // MARK: capture
    /// Whether the microphone is captured at all (sockets serve either way).
    public var captureEnabled = true
    /// ALSA PCM name.
    public var captureDevice = "default"
    /// ALSA configuration text for the device (asoundrc syntax), already read from `alsa_config_file` if that was given.
    public var alsaConfigurationText: String? = nil
    /// The file `alsaConfigurationText` was read from, if any (re-read on reload).
    public var alsaConfigurationFile: String? = nil
    /// Requested ALSA latency in seconds.
    public var captureLatency = 0.2
    /// Length of the privacy ring buffer, in seconds.
    public var ringSeconds = 10.0
    /// Seconds of speech between two partial transcripts of an utterance still being spoken (microphone and
    /// streamed Wyoming requests); 0: none.
    public var partialInterval = 1.0

    // MARK: vad
    /// dB above the noise floor that starts speech.
    public var vadStartDB: Double = 12
    /// dB above the noise floor that keeps speech going.
    public var vadStopDB: Double = 6
    /// Frames below this level (dBFS) never count as speech.
    public var vadMinimumLevelDB: Double = -55
    /// Silence that ends an utterance, in seconds.
    public var vadHangover = 0.6
    /// Audio kept before speech starts, in seconds.
    public var vadPreRoll = 0.3
    /// Shortest speech that makes an utterance, in seconds.
    public var vadMinimumSpeech = 0.15
    /// Longest utterance, in seconds.
    public var vadMaximumUtterance = 30.0

    // MARK: sockets
    /// Directory of the Unix sockets; nil means `$RUNTIME_DIRECTORY` or /run/myqasr.
    public var runtimeDirectory: String? = nil
    /// File name of the control socket in the runtime directory.
    public var controlSocketName = "control.sock"
    /// File name of the Wyoming socket in the runtime directory (empty: no Wyoming Unix socket).
    public var wyomingSocketName = "wyoming.sock"
    /// Mode of the socket files.
    public var socketMode: UInt32 = 0o660
    /// Name of a group whose members may use the sockets (besides root and the daemon's own user).
    public var socketGroup: String? = nil

    // MARK: wyoming_tcp
    /// Whether the Wyoming server also listens on TCP.
    public var wyomingTCPEnabled = false
    /// TCP listen address.
    public var wyomingTCPAddress = "127.0.0.1"
    /// TCP port.
    public var wyomingTCPPort = 10300

    // MARK: limits
    /// Most simultaneous connections per server (root and the daemon's own user have 4 more, reserved).
    public var maxConnections = 64
    /// Most simultaneous connections of one user per server (root and the daemon's own user excepted).
    public var maxConnectionsPerUser = 16
    /// Most bytes of client buffers (bytes received and not yet processed, audio waiting to be transcribed) all
    /// connections of both servers together may hold.
    public var maxBufferedBytes = 512 * 1024 * 1024
    /// Most bytes of client buffers one connection may hold.
    public var maxConnectionBytes = 80 * 1024 * 1024
    /// Seconds a request (a control line, a Wyoming event) may take to arrive in full from its first byte.
    public var requestTimeout = 60.0
    /// Longest audio per request, in seconds.
    public var maxAudioSeconds = 120.0
    /// Longest control request line in bytes (the base64 audio of `transcribe` is on it).
    public var maxRequestBytes = 16 * 1024 * 1024
    /// Transcription jobs (socket requests and live utterances) that may wait for a worker.
    public var queueDepth = 32
    /// Seconds of silence after which a client connection is closed.
    public var idleTimeout = 300.0

    // MARK: log, state
    /// swift-log level.
    public var logLevel: Logger.Level = .info
    /// State directory; nil means `$STATE_DIRECTORY` or /var/lib/myqasr.
    public var stateDirectory: String? = nil

    /// The defaults.
    public init() {}

    // MARK: derived values

    /// The runtime directory in effect.
    public func resolvedRuntimeDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let runtimeDirectory { return runtimeDirectory }
        if let fromSystemd = environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first { return String(fromSystemd) }
        return "/run/myqasr"
    }

    /// The state directory in effect.
    public func resolvedStateDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let stateDirectory { return stateDirectory }
        if let fromSystemd = environment["STATE_DIRECTORY"]?.split(separator: ":").first { return String(fromSystemd) }
        return "/var/lib/myqasr"
    }

    /// Path of the control socket.
    public func controlSocketPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        (resolvedRuntimeDirectory(environment: environment) as NSString).appendingPathComponent(controlSocketName)
    }

    /// Path of the Wyoming Unix socket, or nil when disabled.
    public func wyomingSocketPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard !wyomingSocketName.isEmpty else { return nil }
        return (resolvedRuntimeDirectory(environment: environment) as NSString).appendingPathComponent(wyomingSocketName)
    }

    /// The capture pipeline settings.
    public var capturePipeline: CapturePipelineConfiguration {
        CapturePipelineConfiguration(
            capture: AlsaCaptureConfiguration(
                device: captureDevice, configurationText: alsaConfigurationText, latency: captureLatency),
            segmenter: SegmenterConfiguration(
                detector: VoiceActivityConfiguration(
                    startThreshold: Float(vadStartDB), stopThreshold: Float(vadStopDB),
                    minimumLevel: Float(vadMinimumLevelDB)),
                minimumSpeechDuration: vadMinimumSpeech, hangover: vadHangover, preRoll: vadPreRoll,
                maximumUtteranceDuration: vadMaximumUtterance),
            ringBufferSeconds: ringSeconds, partialInterval: partialInterval)
    }

    /// The socket servers' limits, timeouts, peer policy and client memory pool (one pool for both servers).
    public func connectionOptions(socketGroup groupID: UInt32?) -> ConnectionOptions {
        ConnectionOptions(
            maxConnections: maxConnections, maxConnectionsPerUser: maxConnectionsPerUser,
            idleTimeout: .milliseconds(Int64(idleTimeout * 1000)), requestTimeout: .milliseconds(Int64(requestTimeout * 1000)),
            socketMode: socketMode, socketGroup: groupID, peerPolicy: PeerPolicy(allowedGroup: groupID),
            memory: ClientMemoryPool(limit: maxBufferedBytes, connectionLimit: maxConnectionBytes))
    }

    /// The group id of `socketGroup`, looked up in the group database.
    public func socketGroupID() throws -> UInt32? {
        guard let socketGroup else { return nil }
        if let numeric = UInt32(socketGroup) { return numeric }
        guard let entry = getgrnam(socketGroup) else {
            throw ConfigurationError(source: "configuration", key: "sockets.group", reason: "no group named \"\(socketGroup)\"")
        }
        return entry.pointee.gr_gid
    }
}

// MARK: - Loading

extension DaemonConfiguration {
    /// Where the configuration file is looked for when `--config` is not given, in order:
    /// `$CONFIGURATION_DIRECTORY/myqasrd.toml` (systemd's `ConfigurationDirectory=`), then /etc/myqasr/myqasrd.toml.
    public static func searchPaths(environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var paths: [String] = []
        if let directory = environment["CONFIGURATION_DIRECTORY"]?.split(separator: ":").first {
            paths.append((String(directory) as NSString).appendingPathComponent("myqasrd.toml"))
        }
        paths.append("/etc/myqasr/myqasrd.toml")
        return paths
    }

    /// The file to read: `explicit` if given (it must exist), else the first search path that exists, else nil
    /// (built-in defaults).
    public static func locate(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws -> String?
    {
        if let explicit {
            guard FileManager.default.fileExists(atPath: explicit) else {
                throw ConfigurationError(source: explicit, key: nil, reason: "no such file")
            }
            return explicit
        }
        return searchPaths(environment: environment).first { FileManager.default.fileExists(atPath: $0) }
    }

    /// Reads and validates a configuration file (nil path: the defaults), then applies `overrides`.
    public static func load(path: String?, overrides: ConfigurationOverrides = ConfigurationOverrides()) throws
        -> DaemonConfiguration
    {
        var configuration = DaemonConfiguration()
        if let path {
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                throw ConfigurationError(source: path, key: nil, reason: "cannot read: \(error.localizedDescription)")
            }
            configuration = try parse(text, source: path)
        }
        try overrides.apply(to: &configuration)
        try configuration.validate(source: path ?? "defaults")
        return configuration
    }

    /// Parses TOML text; every key is checked for name, type and range.
    public static func parse(_ text: String, source: String) throws -> DaemonConfiguration {
        if let problem = TOMLPrecheck.firstProblem(in: text) {
            throw ConfigurationError(source: source, key: nil, reason: "not valid TOML: \(problem)")
        }
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(
                source: source, key: nil,
                reason: "not valid TOML: \(error.description) at line \(error.source.begin.line), column \(error.source.begin.column)")
        }
        var c = DaemonConfiguration()
        let reader = TableReader(table: root, path: "", source: source)
        try reader.rejectUnknown(["model", "capture", "vad", "sockets", "wyoming_tcp", "limits", "log", "state"])

        if let t = try reader.table("model") {
            try t.rejectUnknown(["name", "threads", "workers", "memory_budget", "memory_reserve", "memory_poll_interval",
                                 "requantize_after", "shadow_utterances"])
            if let v = try t.string("name") {
                guard !v.isEmpty else { throw t.error("name", "must not be empty") }
                c.model = v
            }
            if let v = try t.int("threads", in: 1...64) { c.threads = v }
            if let v = try t.int("workers", in: 1...16) { c.workers = v }
            if t.value("memory_budget")?.string == "auto" {
                c.memoryBudgetAuto = true
            } else if let v = try t.size("memory_budget") {
                c.memoryBudget = v.bytes
            }
            if let v = try t.size("memory_reserve") { c.memoryReserve = v.bytes ?? 0 }
            if let v = try t.double("memory_poll_interval", in: 0.05...3600) { c.memoryPollInterval = v }
            if let v = try t.int("requantize_after", in: 0...100_000) { c.requantizeAfter = v }
            if let v = try t.int("shadow_utterances", in: 0...1000) { c.shadowUtterances = v }
        }
        if let t = try reader.table("capture") {
            try t.rejectUnknown([
                "enabled", "device", "alsa_config", "alsa_config_file", "latency", "ring_seconds", "partial_interval",
            ])
            if let v = try t.bool("enabled") { c.captureEnabled = v }
            if let v = try t.string("device") {
                guard !v.isEmpty else { throw t.error("device", "must not be empty") }
                c.captureDevice = v
            }
            let inline = try t.string("alsa_config")
            let file = try t.string("alsa_config_file")
            if inline != nil && file != nil {
                throw t.error("alsa_config_file", "give either alsa_config or alsa_config_file, not both")
            }
            if let inline, !inline.isEmpty { c.alsaConfigurationText = inline }
            if let file, !file.isEmpty {
                c.alsaConfigurationFile = file
                // A regular file of reasonable size: not a device or FIFO that would never end.
                var info = stat()
                guard stat(file, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, info.st_size <= 1 << 20 else {
                    throw t.error("alsa_config_file", "\(file) is not a regular file of at most 1 MiB")
                }
                do {
                    c.alsaConfigurationText = try String(contentsOfFile: file, encoding: .utf8)
                } catch {
                    throw t.error("alsa_config_file", "cannot read \(file): \(error.localizedDescription)")
                }
            }
            if let v = try t.double("latency", in: 0.01...2) { c.captureLatency = v }
            if let v = try t.double("ring_seconds", in: 1...120) { c.ringSeconds = v }
            if let v = try t.double("partial_interval", in: 0...60) {
                guard v == 0 || v >= 0.2 else { throw t.error("partial_interval", "must be 0 (off) or at least 0.2 s") }
                c.partialInterval = v
            }
        }
        if let t = try reader.table("vad") {
            try t.rejectUnknown([
                "start_db", "stop_db", "minimum_level_db", "hangover", "pre_roll", "min_speech", "max_utterance",
            ])
            if let v = try t.double("start_db", in: 0...60) { c.vadStartDB = v }
            if let v = try t.double("stop_db", in: 0...60) { c.vadStopDB = v }
            if let v = try t.double("minimum_level_db", in: -120...0) { c.vadMinimumLevelDB = v }
            if let v = try t.double("hangover", in: 0...10) { c.vadHangover = v }
            if let v = try t.double("pre_roll", in: 0...5) { c.vadPreRoll = v }
            if let v = try t.double("min_speech", in: 0...10) { c.vadMinimumSpeech = v }
            if let v = try t.double("max_utterance", in: 1...600) { c.vadMaximumUtterance = v }
        }
        if let t = try reader.table("sockets") {
            try t.rejectUnknown(["runtime_directory", "control", "wyoming", "mode", "group"])
            if let v = try t.string("runtime_directory"), !v.isEmpty {
                guard v.hasPrefix("/") else { throw t.error("runtime_directory", "must be an absolute path") }
                c.runtimeDirectory = v
            }
            if let v = try t.string("control") {
                guard Self.isPlainFileName(v) else { throw t.error("control", "must be a file name without \"/\"") }
                c.controlSocketName = v
            }
            if let v = try t.string("wyoming") {
                guard v.isEmpty || Self.isPlainFileName(v) else {
                    throw t.error("wyoming", "must be a file name without \"/\" (or empty to disable)")
                }
                c.wyomingSocketName = v
            }
            if let v = try t.mode("mode") { c.socketMode = v }
            if let v = try t.string("group") { c.socketGroup = v.isEmpty ? nil : v }
        }
        if let t = try reader.table("wyoming_tcp") {
            try t.rejectUnknown(["enabled", "address", "port"])
            if let v = try t.bool("enabled") { c.wyomingTCPEnabled = v }
            if let v = try t.string("address") {
                guard !v.isEmpty else { throw t.error("address", "must not be empty") }
                c.wyomingTCPAddress = v
            }
            if let v = try t.int("port", in: 0...65535) { c.wyomingTCPPort = v }
        }
        if let t = try reader.table("limits") {
            try t.rejectUnknown([
                "max_connections", "max_connections_per_user", "max_audio_seconds", "max_request_bytes",
                "max_buffered_bytes", "max_connection_bytes", "queue_depth", "idle_timeout", "request_timeout",
            ])
            if let v = try t.int("max_connections", in: 1...4096) { c.maxConnections = v }
            if let v = try t.int("max_connections_per_user", in: 1...4096) { c.maxConnectionsPerUser = v }
            if let v = try t.size("max_buffered_bytes") {
                guard let bytes = v.bytes, bytes >= 1 << 20, bytes <= 1 << 40 else {
                    throw t.error("max_buffered_bytes", "must be between 1MiB and 1TiB")
                }
                c.maxBufferedBytes = bytes
            }
            if let v = try t.size("max_connection_bytes") {
                guard let bytes = v.bytes, bytes >= 1 << 20, bytes <= 1 << 40 else {
                    throw t.error("max_connection_bytes", "must be between 1MiB and 1TiB")
                }
                c.maxConnectionBytes = bytes
            }
            if let v = try t.double("request_timeout", in: 1...3600) { c.requestTimeout = v }
            if let v = try t.double("max_audio_seconds", in: 1...3600) { c.maxAudioSeconds = v }
            if let v = try t.size("max_request_bytes") {
                guard let bytes = v.bytes, bytes >= 1024, bytes <= 1 << 30 else {
                    throw t.error("max_request_bytes", "must be between 1KiB and 1GiB")
                }
                c.maxRequestBytes = bytes
            }
            if let v = try t.int("queue_depth", in: 1...1024) { c.queueDepth = v }
            if let v = try t.double("idle_timeout", in: 1...86400) { c.idleTimeout = v }
        }
        if let t = try reader.table("log") {
            try t.rejectUnknown(["level"])
            if let v = try t.string("level") {
                guard let level = Logger.Level(rawValue: v.lowercased()) else {
                    throw t.error("level", "must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                c.logLevel = level
            }
        }
        if let t = try reader.table("state") {
            try t.rejectUnknown(["directory"])
            if let v = try t.string("directory"), !v.isEmpty {
                guard v.hasPrefix("/") else { throw t.error("directory", "must be an absolute path") }
                c.stateDirectory = v
            }
        }
        return c
    }

    /// Checks relations between keys that single-key checks cannot see.
    public func validate(source: String) throws {
        if vadStopDB > vadStartDB {
            throw ConfigurationError(source: source, key: "vad.stop_db",
                                     reason: "must not be above vad.start_db (\(vadStartDB))")
        }
        if vadMaximumUtterance < vadPreRoll + vadMinimumSpeech + vadHangover + 0.03 {
            throw ConfigurationError(source: source, key: "vad.max_utterance",
                                     reason: "must cover pre_roll + min_speech + hangover")
        }
        if controlSocketName == wyomingSocketName {
            throw ConfigurationError(source: source, key: "sockets.wyoming", reason: "must differ from sockets.control")
        }
        if maxConnectionBytes > maxBufferedBytes {
            throw ConfigurationError(source: source, key: "limits.max_connection_bytes",
                                     reason: "must not be above limits.max_buffered_bytes (\(maxBufferedBytes) bytes)")
        }
        if !memoryBudgetAuto, let budget = memoryBudget, budget < 1024 * 1024 {
            throw ConfigurationError(source: source, key: "model.memory_budget", reason: "must be at least 1MiB (or none)")
        }
        if socketGroup != nil {
            do { _ = try socketGroupID() } catch let error as ConfigurationError {
                throw ConfigurationError(source: source, key: error.key, reason: error.reason)
            }
        }
    }

    private static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && name != "." && name != ".."
    }
}

/// Values given on the command line; each replaces the file's value.
public struct ConfigurationOverrides: Sendable, Equatable {
    /// `--model`.
    public var model: String?
    /// `--threads`.
    public var threads: Int?
    /// `--budget` ("24MiB", "none", "auto").
    public var memoryBudget: String?
    /// `--device`.
    public var captureDevice: String?
    /// `--no-capture` sets this to false.
    public var captureEnabled: Bool?
    /// `--runtime-directory`.
    public var runtimeDirectory: String?
    /// `--state-directory`.
    public var stateDirectory: String?
    /// `--log-level`.
    public var logLevel: String?

    /// No overrides.
    public init(model: String? = nil, threads: Int? = nil, memoryBudget: String? = nil, captureDevice: String? = nil,
                captureEnabled: Bool? = nil, runtimeDirectory: String? = nil, stateDirectory: String? = nil,
                logLevel: String? = nil) {
        self.model = model
        self.threads = threads
        self.memoryBudget = memoryBudget
        self.captureDevice = captureDevice
        self.captureEnabled = captureEnabled
        self.runtimeDirectory = runtimeDirectory
        self.stateDirectory = stateDirectory
        self.logLevel = logLevel
    }

    /// Applies the overrides, checking each like the file's key of the same meaning.
    public func apply(to c: inout DaemonConfiguration) throws {
        func fail(_ flag: String, _ reason: String) -> ConfigurationError {
            ConfigurationError(source: "command line", key: flag, reason: reason)
        }
        if let model { c.model = model }
        if let threads {
            guard (1...64).contains(threads) else { throw fail("--threads", "must be between 1 and 64") }
            c.threads = threads
        }
        if let memoryBudget {
            if memoryBudget == "auto" {
                c.memoryBudgetAuto = true
            } else {
                do { c.memoryBudget = try ByteSize.parseLimit(memoryBudget) } catch { throw fail("--budget", "\(error)") }
                c.memoryBudgetAuto = false
            }
        }
        if let captureDevice { c.captureDevice = captureDevice }
        if let captureEnabled { c.captureEnabled = captureEnabled }
        if let runtimeDirectory {
            guard runtimeDirectory.hasPrefix("/") else { throw fail("--runtime-directory", "must be an absolute path") }
            c.runtimeDirectory = runtimeDirectory
        }
        if let stateDirectory {
            guard stateDirectory.hasPrefix("/") else { throw fail("--state-directory", "must be an absolute path") }
            c.stateDirectory = stateDirectory
        }
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel.lowercased()) else {
                throw fail("--log-level", "must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            c.logLevel = level
        }
    }
}

/// A size read from the file; `bytes` nil means unlimited.
struct ParsedSize {
    var bytes: Int?
}

/// Reads one TOML table, checking key names, types and ranges, and naming the key in every error.
struct TableReader {
    let table: TOMLTable
    let path: String
    let source: String

    func error(_ key: String, _ reason: String) -> ConfigurationError {
        ConfigurationError(source: source, key: path.isEmpty ? key : "\(path).\(key)", reason: reason)
    }

    func rejectUnknown(_ known: [String]) throws {
        for key in table.keys.sorted() where !known.contains(key) {
            let where_ = path.isEmpty ? "at the top level" : "in [\(path)]"
            throw error(key, "unknown key \(where_) (known: \(known.joined(separator: ", ")))")
        }
    }

    func value(_ key: String) -> TOMLValueConvertible? { table[key] }

    private func typeError(_ key: String, expected: String, got value: TOMLValueConvertible) -> ConfigurationError {
        error(key, "must be \(expected), not a \(value.type)")
    }

    func table(_ key: String) throws -> TableReader? {
        guard let v = value(key) else { return nil }
        guard let t = v.table else { throw typeError(key, expected: "a table [\(key)]", got: v) }
        return TableReader(table: t, path: path.isEmpty ? key : "\(path).\(key)", source: source)
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.string else { throw typeError(key, expected: "a string", got: v) }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.bool else { throw typeError(key, expected: "true or false", got: v) }
        return b
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let v = value(key) else { return nil }
        guard v.type == .int, let i = v.int else { throw typeError(key, expected: "an integer", got: v) }
        guard range.contains(i) else {
            throw error(key, "\(i) is out of range (\(range.lowerBound) to \(range.upperBound))")
        }
        return i
    }

    func double(_ key: String, in range: ClosedRange<Double>) throws -> Double? {
        guard let v = value(key) else { return nil }
        let d: Double
        if v.type == .double, let x = v.double {
            d = x
        } else if v.type == .int, let i = v.int {
            d = Double(i)
        } else {
            throw typeError(key, expected: "a number", got: v)
        }
        guard d.isFinite, range.contains(d) else {
            throw error(key, "\(d) is out of range (\(range.lowerBound) to \(range.upperBound))")
        }
        return d
    }

    /// A size: a string such as "24MiB" or "none", or an integer number of bytes. `bytes` nil means unlimited.
    func size(_ key: String) throws -> ParsedSize? {
        guard let v = value(key) else { return nil }
        if v.type == .int, let i = v.int {
            guard i >= 0 else { throw error(key, "must not be negative") }
            return ParsedSize(bytes: i == 0 ? nil : i)
        }
        guard let s = v.string else { throw typeError(key, expected: "a size such as \"24MiB\" or \"none\"", got: v) }
        do {
            return ParsedSize(bytes: try ByteSize.parseLimit(s))
        } catch {
            throw self.error(key, "\(error)")
        }
    }

    /// A file mode: an octal string ("0660") or an integer (TOML 0o660).
    func mode(_ key: String) throws -> UInt32? {
        guard let v = value(key) else { return nil }
        let mode: UInt32
        if v.type == .int, let i = v.int, i >= 0, i <= 0o777 {
            mode = UInt32(i)
        } else if let s = v.string, let parsed = UInt32(s, radix: 8), parsed <= 0o777 {
            mode = parsed
        } else {
            throw error(key, "must be an octal mode such as \"0660\" or 0o660")
        }
        guard mode & 0o600 == 0o600 else { throw error(key, "must give the owner read and write (0600 at least)") }
        guard mode & 0o007 == 0 else { throw error(key, "must not give access to others (last digit 0)") }
        return mode
    }
}

/// What TOML forbids and TOMLKit's parser cannot be trusted with: it is toml++ built with its assertions on, and
/// some invalid files make it abort the process instead of reporting an error (found by scripts/fuzz: control
/// characters, and characters outside ASCII where a key is expected; a reload of such a file would stop the
/// daemon). TOML allows no control character but tab, line feed and carriage return anywhere, and characters
/// outside ASCII only in strings and comments; this finds the first that breaks either rule, with a scan of the
/// strings' and comments' boundaries (written here because no TOML library offers a non-aborting check).
enum TOMLPrecheck {
    private enum Context { case code, comment, basic, literal, multilineBasic, multilineLiteral }

    /// "control character U+0001 at line 1, column 2", or nil.
    static func firstProblem(in text: String) -> String? {
        let scalars = Array(text.unicodeScalars)
        var context = Context.code
        var escaped = false
        var line = 1, column = 0
        var i = 0
        var lineStart = true  // only blanks so far on this line, outside strings
        func isKeyStart(_ c: Unicode.Scalar) -> Bool {
            ("0"..."9").contains(c) || ("a"..."z").contains(c) || ("A"..."Z").contains(c) || c == "_" || c == "-"
                || c == "\"" || c == "'"
        }
        func followedBy(_ c: Unicode.Scalar, twiceAfter index: Int) -> Bool {
            index + 2 < scalars.count && scalars[index + 1] == c && scalars[index + 2] == c
        }
        while i < scalars.count {
            let c = scalars[i]
            i += 1
            column += 1
            if c == "\n" {
                line += 1
                column = 0
                escaped = false
                lineStart = true
                if context != .multilineBasic && context != .multilineLiteral { context = .code }
                continue
            }
            if (c.value < 0x20 && c != "\t" && c != "\r") || c.value == 0x7F {
                return "control character U+\(String(format: "%04X", c.value)) at line \(line), column \(column)"
            }
            if escaped {
                escaped = false
                continue
            }
            switch context {
            case .code:
                if c.value > 0x7F {
                    return "character U+\(String(format: "%04X", c.value)) outside a string or comment at line \(line), column \(column)"
                }
                if lineStart && c == "[" {
                    // A table header: [name] or [[name]], blanks allowed around the name, which must start with a
                    // key character or a quote (toml++ asserts on anything else there).
                    var j = i
                    if j < scalars.count, scalars[j] == "[" { j += 1 }
                    while j < scalars.count, scalars[j] == " " || scalars[j] == "\t" { j += 1 }
                    // The end of the line or of the file there (`[` alone) is refused too; control characters
                    // and characters outside ASCII are reported as such on their turn.
                    if j == scalars.count || scalars[j] == "\n" || scalars[j] == "\r"
                        || (scalars[j] != "]" && !isKeyStart(scalars[j]) && (0x20..<0x7F).contains(scalars[j].value)) {
                        return "a table name must start with a letter, digit, _, - or a quote at line \(line), column \(column + j - i + 1)"
                    }
                }
                if c != " " && c != "\t" { lineStart = false }
                if c == "#" {
                    context = .comment
                } else if c == "\"" || c == "'" {
                    let triple = followedBy(c, twiceAfter: i - 1)
                    if triple {
                        i += 2
                        column += 2
                    }
                    context = c == "\"" ? (triple ? .multilineBasic : .basic) : (triple ? .multilineLiteral : .literal)
                }
            case .comment:
                break
            case .basic, .multilineBasic:
                if c == "\\" {
                    escaped = true
                } else if c == "\"" {
                    if context == .basic {
                        context = .code
                    } else if followedBy("\"", twiceAfter: i - 1) {
                        context = .code
                        i += 2
                        column += 2
                    }
                }
            case .literal, .multilineLiteral:
                if c == "'" {
                    if context == .literal {
                        context = .code
                    } else if followedBy("'", twiceAfter: i - 1) {
                        context = .code
                        i += 2
                        column += 2
                    }
                }
            }
        }
        return nil
    }
}
