import Foundation

/// One timed piece of a transcript.
public struct TranscriptSegment: Sendable, Codable, Equatable {
    /// Start of the segment in seconds from the beginning of the audio.
    public var start: Double
    /// End of the segment in seconds from the beginning of the audio.
    public var end: Double
    /// Text spoken in the segment.
    public var text: String

    /// Creates a segment.
    public init(start: Double, end: Double, text: String) {
        self.start = start
        self.end = end
        self.text = text
    }
}

/// The result of transcribing one piece of audio.
public struct TranscriptResult: Sendable, Codable, Equatable {
    /// The full transcript text.
    public var text: String
    /// The language detected or used (ISO 639-1 code such as "en"), if known.
    public var language: String?
    /// Timed segments making up `text`; may be empty.
    public var segments: [TranscriptSegment]

    /// Creates a result.
    public init(text: String, language: String? = nil, segments: [TranscriptSegment] = []) {
        self.text = text
        self.language = language
        self.segments = segments
    }
}

/// Who sent a request: the peer's user id on a Unix socket (nil over TCP) and the connection, unique in the
/// process. The daemon queues requests fairly across `fairnessKey`s.
public struct RequestOrigin: Sendable, Hashable {
    /// Effective user id of the peer (`SO_PEERCRED`), nil when the transport has none (TCP).
    public var uid: UInt32?
    /// The connection the request came on.
    public var connection: UInt64

    /// Creates an origin.
    public init(uid: UInt32?, connection: UInt64) {
        self.uid = uid
        self.connection = connection
    }

    /// "uid 1000" for a local user (all their connections share one turn), else "connection 7".
    public var fairnessKey: String { uid.map { "uid \($0)" } ?? "connection \(connection)" }
}

/// What the servers need from the daemon to transcribe audio.
public protocol TranscriptionBackend: Sendable {
    /// Transcribes 16 kHz mono float samples in [-1, 1]; `language` nil means the model default or auto-detection.
    /// The servers cancel the calling task when the client that asked goes away: stop work then (throw
    /// `CancellationError`). Throw `ControlError` (for example code `busy`) to give the client a specific error code.
    func transcribe(samples: [Float], language: String?, origin: RequestOrigin) async throws -> TranscriptResult
    /// Seconds of audio between two partial transcripts of a streamed request (0: none); the Wyoming server asks
    /// for one each time this much more audio has arrived.
    var partialInterval: Double { get }
    /// A partial transcript of `samples`, the audio of a request so far, or nil when the backend dropped it
    /// (partials never delay final results). The server cancels the calling task when it no longer needs it.
    func transcribePartial(samples: [Float], language: String?, origin: RequestOrigin) async -> TranscriptResult?
}

extension TranscriptionBackend {
    /// No partial transcripts.
    public var partialInterval: Double { 0 }
    /// No partial transcripts.
    public func transcribePartial(samples: [Float], language: String?, origin: RequestOrigin) async -> TranscriptResult? {
        nil
    }
}

/// State of the microphone capture, as reported by `status`.
public enum CaptureState: String, Sendable, Codable, Equatable {
    /// The microphone is open and audio is being read.
    case capturing
    /// Capture is configured but currently paused.
    case paused
    /// Capture is disabled by configuration.
    case disabled
    /// Capture failed (for example, the device is missing).
    case failed
}

/// A snapshot of the daemon's state, as returned by the control `status` command.
public struct DaemonStatus: Sendable, Codable, Equatable {
    /// Name of the loaded model.
    public var modelName: String
    /// Bits per weight for each layer of the personalised quantization, or nil before any requantization.
    public var layerBits: [String: Int]?
    /// Memory the model currently occupies, in bytes.
    public var memoryBytes: Int
    /// Memory budget the quantizer aims for, in bytes, or nil when unlimited.
    public var budgetBytes: Int?
    /// Seconds since the daemon started.
    public var uptimeSeconds: Double
    /// Number of utterances transcribed since the statistics were last reset.
    public var utterancesSeen: Int
    /// Number of activation-statistics samples gathered for personalisation.
    public var statisticsSamples: Int
    /// When the model was last requantized, if ever.
    public var lastRequantization: Date?
    /// State of the microphone capture.
    public var captureState: CaptureState
    /// The model in service and why (nil before it is known).
    public var model: ModelStatus?
    /// The transcription queue (nil when the daemon does not report it).
    public var queue: QueueStatus?
    /// Memory held for clients by the socket servers (filled in by the control server), if known.
    public var clientBuffers: ClientBufferStatus?

    /// Creates a status snapshot.
    public init(
        modelName: String, layerBits: [String: Int]? = nil, memoryBytes: Int, budgetBytes: Int? = nil,
        uptimeSeconds: Double, utterancesSeen: Int, statisticsSamples: Int,
        lastRequantization: Date? = nil, captureState: CaptureState
    ) {
        self.modelName = modelName
        self.layerBits = layerBits
        self.memoryBytes = memoryBytes
        self.budgetBytes = budgetBytes
        self.uptimeSeconds = uptimeSeconds
        self.utterancesSeen = utterancesSeen
        self.statisticsSamples = statisticsSamples
        self.lastRequantization = lastRequantization
        self.captureState = captureState
    }

    enum CodingKeys: String, CodingKey {
        case modelName = "model_name", layerBits = "layer_bits", memoryBytes = "memory_bytes"
        case budgetBytes = "budget_bytes", uptimeSeconds = "uptime_seconds", utterancesSeen = "utterances_seen"
        case statisticsSamples = "statistics_samples", lastRequantization = "last_requantization"
        case captureState = "capture_state", model = "served_model", queue, clientBuffers = "client_buffers"
    }
}

/// What the daemon says about the model in service: why it serves and what it was built from.
public struct ModelStatus: Sendable, Codable, Equatable {
    /// Increases by one at every swap (1: the model loaded at start).
    public var generation: Int
    /// Why it went into service: `start`, `budget`, `statistics`, `forget` or `reload`.
    public var reason: String
    /// Its precision plan: "float", "4-bit", "as in the file" or "personalised from N utterances".
    public var plan: String
    /// Where the budget came from (`configuration` or `command`); nil without a budget.
    public var budgetOrigin: String?
    /// Personal statistics samples its widths were chosen from (0: none).
    public var statisticsSamples: Int
    /// When it went into service.
    public var since: Date
    /// Its mean next-token divergence from the full-precision model on the self-check's probe, in nats (nil: it
    /// is the full-precision model).
    public var checkDivergence: Double?
    /// Its mean next-token divergence from the full-precision model on the user's own live utterances since it
    /// went into service, in nats (nil: not measured, e.g. it is the full-precision model), and over how many.
    public var ownSpeechDrift: Double?
    public var ownSpeechUtterances: Int?
    /// The same for a candidate in shadow (built from grown statistics, not serving until it has been compared
    /// on enough utterances), nil without one.
    public var candidateDrift: Double?
    public var candidateUtterances: Int?

    /// Creates a model status.
    public init(generation: Int, reason: String, plan: String, budgetOrigin: String?, statisticsSamples: Int,
                since: Date, checkDivergence: Double?, ownSpeechDrift: Double? = nil, ownSpeechUtterances: Int? = nil,
                candidateDrift: Double? = nil, candidateUtterances: Int? = nil) {
        self.ownSpeechDrift = ownSpeechDrift
        self.ownSpeechUtterances = ownSpeechUtterances
        self.candidateDrift = candidateDrift
        self.candidateUtterances = candidateUtterances
        self.generation = generation
        self.reason = reason
        self.plan = plan
        self.budgetOrigin = budgetOrigin
        self.statisticsSamples = statisticsSamples
        self.since = since
        self.checkDivergence = checkDivergence
    }

    enum CodingKeys: String, CodingKey {
        case generation, reason, plan, since
        case budgetOrigin = "budget_origin", statisticsSamples = "statistics_samples", checkDivergence = "check_divergence"
        case ownSpeechDrift = "own_speech_drift", ownSpeechUtterances = "own_speech_utterances"
        case candidateDrift = "candidate_drift", candidateUtterances = "candidate_utterances"
    }
}

/// The transcription queue: one bounded queue for live utterances and socket requests.
public struct QueueStatus: Sendable, Codable, Equatable {
    /// Jobs waiting.
    public var waiting: Int
    /// Jobs being transcribed.
    public var running: Int
    /// Most jobs that may wait (`limits.queue_depth`).
    public var depth: Int
    /// Live utterances wiped unheard because the queue was full.
    public var droppedUtterances: Int
    /// Requests refused as busy.
    public var refusedRequests: Int
    /// Requests dropped or stopped because their client went away.
    public var cancelledRequests: Int

    /// Creates a queue status.
    public init(waiting: Int, running: Int, depth: Int, droppedUtterances: Int, refusedRequests: Int,
                cancelledRequests: Int) {
        self.waiting = waiting
        self.running = running
        self.depth = depth
        self.droppedUtterances = droppedUtterances
        self.refusedRequests = refusedRequests
        self.cancelledRequests = cancelledRequests
    }

    enum CodingKeys: String, CodingKey {
        case waiting, running, depth
        case droppedUtterances = "dropped_utterances", refusedRequests = "refused_requests"
        case cancelledRequests = "cancelled_requests"
    }
}

/// The socket servers' client memory (`ClientMemoryPool`), as `status` reports it.
public struct ClientBufferStatus: Sendable, Codable, Equatable {
    /// Bytes charged now: bytes received and not yet processed, and audio waiting to be transcribed.
    public var usedBytes: Int
    /// The most bytes charged at any time since the daemon started.
    public var peakBytes: Int
    /// The limit for all connections together (`limits.max_buffered_bytes`).
    public var limitBytes: Int

    /// Creates a snapshot.
    public init(usedBytes: Int, peakBytes: Int, limitBytes: Int) {
        self.usedBytes = usedBytes
        self.peakBytes = peakBytes
        self.limitBytes = limitBytes
    }

    enum CodingKeys: String, CodingKey {
        case usedBytes = "used_bytes", peakBytes = "peak_bytes", limitBytes = "limit_bytes"
    }
}

/// A transcript of live microphone audio, pushed to `listen` clients.
public struct LiveTranscript: Sendable, Codable, Equatable {
    /// The transcribed text of one utterance.
    public var text: String
    /// Start of the utterance, in seconds since the daemon started capturing.
    public var start: Double
    /// End of the utterance, in seconds since the daemon started capturing (of a partial: of the audio so far).
    public var end: Double
    /// Language of the text, if known.
    public var language: String?
    /// A partial transcript of an utterance still being spoken (the `partial` event); its final transcript
    /// follows. Not in the JSON object: the event's name says it.
    public var partial = false

    /// Creates a live transcript.
    public init(text: String, start: Double, end: Double, language: String? = nil, partial: Bool = false) {
        self.text = text
        self.start = start
        self.end = end
        self.language = language
        self.partial = partial
    }

    enum CodingKeys: String, CodingKey {
        case text, start, end, language
    }
}

/// An error a backend reports to a control client: a machine-readable code and a human-readable message.
///
/// Backends should throw this from `ControlBackend` methods; any other error is reported with code `internal`.
public struct ControlError: Error, Sendable, Codable, Equatable, CustomStringConvertible {
    /// Machine-readable code, such as `impossible_budget` or `bad_request`.
    public var code: String
    /// Human-readable explanation.
    public var message: String

    /// Creates an error.
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    /// "message (code)".
    public var description: String { "\(message) (\(code))" }
}

/// What the control server needs from the daemon.
public protocol ControlBackend: Sendable {
    /// Returns a snapshot of the daemon's state.
    func status() async -> DaemonStatus
    /// Sets the model memory budget (nil: unlimited) and returns once the model for it serves; throws
    /// `ControlError` (e.g. code `impossible_budget` or `check_failed`) if it cannot be met.
    func setBudget(bytes: Int?) async throws
    /// Reloads configuration and model.
    func reload() async throws
    /// Deletes personal data: gathered statistics, buffered audio and personalised weights.
    func forget() async throws
    /// A fresh stream of live transcripts for one client; it ends when the client goes away (the server
    /// cancels its iteration). Use a bounded buffering policy such as `.bufferingNewest(64)`.
    func liveTranscripts() -> AsyncStream<LiveTranscript>
}
