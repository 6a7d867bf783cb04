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

/// What the servers need from the daemon to transcribe audio.
public protocol TranscriptionBackend: Sendable {
    /// Transcribes 16 kHz mono float samples in [-1, 1]; `language` nil means the model default or auto-detection.
    func transcribe(samples: [Float], language: String?) async throws -> TranscriptResult
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
        case captureState = "capture_state"
    }
}

/// A transcript of live microphone audio, pushed to `listen` clients.
public struct LiveTranscript: Sendable, Codable, Equatable {
    /// The transcribed text of one utterance.
    public var text: String
    /// Start of the utterance, in seconds since the daemon started capturing.
    public var start: Double
    /// End of the utterance, in seconds since the daemon started capturing.
    public var end: Double
    /// Language of the text, if known.
    public var language: String?

    /// Creates a live transcript.
    public init(text: String, start: Double, end: Double, language: String? = nil) {
        self.text = text
        self.start = start
        self.end = end
        self.language = language
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
    /// Sets the model memory budget; throws `ControlError` (e.g. code `impossible_budget`) if it cannot be met.
    func setBudget(bytes: Int) async throws
    /// Reloads configuration and model.
    func reload() async throws
    /// Deletes personal data: gathered statistics, buffered audio and personalised weights.
    func forget() async throws
    /// A fresh stream of live transcripts for one client; it ends when the client goes away (the server
    /// cancels its iteration). Use a bounded buffering policy such as `.bufferingNewest(64)`.
    func liveTranscripts() -> AsyncStream<LiveTranscript>
}
