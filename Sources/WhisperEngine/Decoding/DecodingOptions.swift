import Foundation

/// What the decoder is asked to produce from the audio.
public enum DecodingTask: String, Codable, Sendable, Equatable {
    /// Speech to text in the spoken language (`<|transcribe|>`).
    case transcribe
    /// Speech in any language to English text (`<|translate|>`, multilingual models only).
    case translate
}

/// Options for decoding one 30 s window, following openai/whisper's `DecodingOptions`.
///
/// With `temperature == 0` the decoder runs beam search with `beamSize` beams (greedy
/// decoding when `beamSize == 1`); with `temperature > 0` it samples `bestOf` independent
/// candidates. The winner is the candidate with the best length-normalised score.
public struct DecodingOptions: Sendable, Equatable {
    /// Transcribe or translate.
    public var task: DecodingTask = .transcribe
    /// Language code (`"en"`, `"fr"`, ...). `nil` detects the language on multilingual models
    /// and means `"en"` on English-only ones.
    public var language: String? = nil
    /// Sampling temperature; 0 selects beam search (or greedy decoding).
    public var temperature: Double = 0
    /// Beams kept alive in beam search at temperature 0 (1 = greedy decoding).
    public var beamSize: Int = 5
    /// Independent samples drawn at temperature > 0; the best-scoring one wins.
    public var bestOf: Int = 5
    /// Beam search patience: finished candidates collected before stopping is
    /// `round(beamSize * patience)` (arXiv:2204.05424).
    public var patience: Double = 1.0
    /// `nil` ranks candidates by `sumLogProb / length`; a value `alpha` in 0...1 uses the
    /// Google NMT penalty `sumLogProb / ((5 + length) / 6)^alpha`.
    public var lengthPenalty: Double? = nil
    /// Decode text only: appends `<|notimestamps|>` to the start sequence and drops the
    /// timestamp rules.
    public var withoutTimestamps: Bool = false
    /// Latest timestamp allowed as the first sampled token, in seconds (`nil` = no limit).
    public var maxInitialTimestamp: Double? = 1.0
    /// Forbids a blank (`" "`) or `<|endoftext|>` as the first sampled token.
    public var suppressBlank: Bool = true
    /// Tokens never sampled. `nil` uses the model's `suppress_ids`; an empty list disables the
    /// rule entirely. When the rule is on, the control tokens (`<|transcribe|>`, `<|translate|>`,
    /// `<|startoftranscript|>`, `<|startofprev|>`, `<|startoflm|>`, no-speech) are added, as Whisper does.
    public var suppressTokens: [Int]? = nil
    /// Most tokens sampled per window; `nil` = half the decoder context (224).
    public var sampleLength: Int? = nil
    /// Previous-context tokens, fed after `<|startofprev|>`; only the last `nTextCtx / 2 - 1` are kept.
    public var prompt: [Int] = []
    /// Tokens forced at the start of the current window's text, after the start sequence.
    public var prefix: [Int] = []
    /// Seed of the random generator used when sampling, for reproducible output.
    public var seed: UInt64 = 0
    /// Set from another thread to stop decoding: checked before every window and every decoding step,
    /// which then throw `DecodingError.cancelled` (nil: never stopped).
    public var cancellation: Cancellation? = nil

    /// Creates options with Whisper's defaults; every property can be changed afterwards.
    public init(task: DecodingTask = .transcribe, language: String? = nil, temperature: Double = 0,
                beamSize: Int = 5, bestOf: Int = 5, patience: Double = 1.0, lengthPenalty: Double? = nil,
                withoutTimestamps: Bool = false, maxInitialTimestamp: Double? = 1.0,
                suppressBlank: Bool = true, suppressTokens: [Int]? = nil, sampleLength: Int? = nil,
                prompt: [Int] = [], prefix: [Int] = [], seed: UInt64 = 0) {
        self.task = task
        self.language = language
        self.temperature = temperature
        self.beamSize = beamSize
        self.bestOf = bestOf
        self.patience = patience
        self.lengthPenalty = lengthPenalty
        self.withoutTimestamps = withoutTimestamps
        self.maxInitialTimestamp = maxInitialTimestamp
        self.suppressBlank = suppressBlank
        self.suppressTokens = suppressTokens
        self.sampleLength = sampleLength
        self.prompt = prompt
        self.prefix = prefix
        self.seed = seed
    }

    /// Finished candidates beam search collects before it stops: `round(beamSize * patience)`.
    public var maxCandidates: Int { Int((Double(beamSize) * patience).rounded()) }

    /// Checks the options for values Whisper rejects; throws `DecodingError.invalidOptions`.
    public func validate() throws {
        func fail(_ reason: String) throws -> Never { throw DecodingError.invalidOptions(reason) }
        if !temperature.isFinite || temperature < 0 { try fail("temperature must be finite and >= 0, got \(temperature)") }
        if beamSize < 1 { try fail("beamSize must be at least 1, got \(beamSize)") }
        if bestOf < 1 { try fail("bestOf must be at least 1, got \(bestOf)") }
        if !patience.isFinite || patience <= 0 || maxCandidates < 1 {
            try fail("patience \(patience) with beamSize \(beamSize) leaves no room for a finished candidate")
        }
        if let alpha = lengthPenalty, !(0...1).contains(alpha) {
            try fail("lengthPenalty (alpha) must be between 0 and 1, got \(alpha)")
        }
        if let t = maxInitialTimestamp, !t.isFinite || t < 0 {
            try fail("maxInitialTimestamp must be finite and >= 0 seconds, got \(t)")
        }
        if let n = sampleLength, n < 1 { try fail("sampleLength must be at least 1, got \(n)") }
    }
}

/// Why decoding could not run. Each case says what to change.
public enum DecodingError: Error, CustomStringConvertible, Equatable {
    /// An option is out of range.
    case invalidOptions(String)
    /// The language code is not in the model's vocabulary (or the model is English-only).
    case unsupportedLanguage(code: String, multilingual: Bool)
    /// Translation was asked of an English-only model.
    case translationUnsupported
    /// Language detection needs a multilingual model.
    case languageDetectionUnsupported
    /// The start sequence with its prompt and prefix does not leave room to sample.
    case promptTooLong(initialTokens: Int, contextSize: Int)
    /// The network returned logits of an unexpected size.
    case logitsSizeMismatch(expected: Int, got: Int)
    /// The log-mel input does not have the expected shape.
    case melShapeMismatch(String)
    /// The tokenizer's control tokens do not fit the network's vocabulary.
    case vocabularyMismatch(String)
    /// `DecodingOptions.cancellation` was set: the caller no longer wants the result.
    case cancelled

    /// A human-readable explanation.
    public var description: String {
        switch self {
        case let .invalidOptions(reason):
            return "invalid decoding options: \(reason)"
        case let .unsupportedLanguage(code, multilingual):
            return multilingual
                ? "language '\(code)' is not in this model's vocabulary"
                : "language '\(code)' requested, but this is an English-only model (use 'en' or a multilingual model)"
        case .translationUnsupported:
            return "translation requested, but this is an English-only model (use a multilingual model)"
        case .languageDetectionUnsupported:
            return "language detection requested, but this is an English-only model"
        case let .promptTooLong(initial, context):
            return "prompt, prefix and start tokens take \(initial) positions of the decoder's \(context); shorten the prompt or prefix"
        case let .logitsSizeMismatch(expected, got):
            return "the decoder returned \(got) logits, expected \(expected) (batch x vocabulary)"
        case let .melShapeMismatch(reason):
            return "log-mel input has the wrong shape: \(reason)"
        case let .vocabularyMismatch(reason):
            return "tokenizer does not match the model: \(reason)"
        case .cancelled:
            return "decoding was cancelled"
        }
    }
}

/// A flag another thread sets to stop a running transcription at its next window or decoding step
/// (`DecodingOptions.cancellation`). Equal only to itself.
public final class Cancellation: @unchecked Sendable, Equatable {  // @unchecked: the flag is guarded by `lock`
    private let lock = NSLock()
    private var cancelled = false

    /// A flag that is not set.
    public init() {}

    /// Sets the flag; decoding stops at its next check.
    public func cancel() {
        lock.lock()
        cancelled = true
        lock.unlock()
    }

    /// Whether the flag is set.
    public var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled
    }

    /// Throws `DecodingError.cancelled` once the flag is set.
    public func check() throws {
        if isCancelled { throw DecodingError.cancelled }
    }

    public static func == (a: Cancellation, b: Cancellation) -> Bool { a === b }
}
