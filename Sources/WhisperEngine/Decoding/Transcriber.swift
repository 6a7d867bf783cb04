import Foundation
import Tokenizer

/// A stretch of transcribed speech with its timing, in seconds from the start of the audio.
public struct Segment: Codable, Sendable, Equatable {
    /// Start time in seconds.
    public var start: Double
    /// End time in seconds.
    public var end: Double
    /// Decoded text of the segment's text tokens (Whisper keeps the leading space).
    public var text: String
    /// The segment's tokens, timestamp tokens included.
    public var tokens: [Int]
    /// Average log-probability of the window decode that produced the segment.
    public var avgLogProb: Double
    /// No-speech probability of that window.
    public var noSpeechProb: Double
    /// Temperature the window was finally decoded at.
    public var temperature: Double
    /// Compression ratio of that window's text.
    public var compressionRatio: Double

    /// Creates a segment.
    public init(start: Double, end: Double, text: String, tokens: [Int], avgLogProb: Double,
                noSpeechProb: Double, temperature: Double, compressionRatio: Double) {
        self.start = start
        self.end = end
        self.text = text
        self.tokens = tokens
        self.avgLogProb = avgLogProb
        self.noSpeechProb = noSpeechProb
        self.temperature = temperature
        self.compressionRatio = compressionRatio
    }
}

/// The transcription of a whole recording.
public struct Transcript: Codable, Sendable, Equatable {
    /// Segments in time order.
    public var segments: [Segment]
    /// Language code the audio was decoded in (given or detected).
    public var language: String
    /// Text of all segments (the initial prompt excluded), decoded in one piece.
    public var text: String
    /// Windows decoded over their own frames only (`ShortWindowPolicy`) whose result was kept.
    public var shortWindows: Int
    /// Windows decoded short whose result the guard rejected, then decoded whole.
    public var fullWindowRetries: Int

    /// Creates a transcript.
    public init(segments: [Segment], language: String, text: String, shortWindows: Int = 0, fullWindowRetries: Int = 0) {
        self.segments = segments
        self.language = language
        self.text = text
        self.shortWindows = shortWindows
        self.fullWindowRetries = fullWindowRetries
    }
}

/// Options for long-form transcription, following openai/whisper's `transcribe()`.
public struct TranscriptionOptions: Sendable, Equatable {
    /// Per-window decoding options. `temperature` and `prompt` are set by the transcriber;
    /// `language == nil` detects the language once, on the first 30 s.
    public var decoding: DecodingOptions = DecodingOptions()
    /// Temperature fallback and silence thresholds.
    public var fallback: FallbackPolicy = FallbackPolicy()
    /// Feed each window the text decoded so far as a prompt.
    public var conditionOnPreviousText: Bool = true
    /// Stop conditioning on earlier text after a window decoded above this temperature.
    public var promptResetOnTemperature: Double = 0.5
    /// Text prepended as context to the first window (vocabulary, spelling, style).
    public var initialPrompt: String? = nil
    /// Encode a window whose audio is shorter than 30 s over its own frames only, with a full-window
    /// retry when the result looks unreliable (`ShortWindowPolicy`); `nil` encodes every window
    /// whole, as Whisper does.
    public var shortWindow: ShortWindowPolicy? = ShortWindowPolicy()

    /// Creates options; the defaults are Whisper's, except for the short window.
    public init(decoding: DecodingOptions = DecodingOptions(), fallback: FallbackPolicy = FallbackPolicy(),
                conditionOnPreviousText: Bool = true, promptResetOnTemperature: Double = 0.5,
                initialPrompt: String? = nil, shortWindow: ShortWindowPolicy? = ShortWindowPolicy()) {
        self.decoding = decoding
        self.fallback = fallback
        self.conditionOnPreviousText = conditionOnPreviousText
        self.promptResetOnTemperature = promptResetOnTemperature
        self.initialPrompt = initialPrompt
        self.shortWindow = shortWindow
    }
}

/// Long-form transcription: Whisper's seek loop over 30 s windows of a log-mel spectrogram.
///
/// Each window is encoded, decoded with temperature fallback, skipped if silent, and cut into
/// segments at its timestamp tokens; the next window starts at the last complete timestamp
/// (or after the whole window). Not thread-safe; use one instance per thread.
public final class Transcriber {
    /// Sample rate of Whisper's front end (Hz).
    public static let sampleRate = 16_000
    /// Hop length of Whisper's front end (samples per mel frame).
    public static let hopLength = 160
    /// Seconds per mel frame (0.01).
    public static let secondsPerFrame = Double(hopLength) / Double(sampleRate)

    /// The per-window decoder.
    public let decoder: WindowDecoder

    /// Wraps an existing window decoder.
    public init(decoder: WindowDecoder) { self.decoder = decoder }

    /// Creates a transcriber for `model` and `tokenizer`; see `WindowDecoder.init`.
    public convenience init(model: SpeechModel, tokenizer: WhisperTokenizer, suppressIDs: [Int],
                            suppressIDsBegin: [Int]? = nil) throws {
        self.init(decoder: try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: suppressIDs,
                                             suppressIDsBegin: suppressIDsBegin))
    }

    /// Creates a transcriber with the suppression lists and language tokens of a model's `config.json`.
    public convenience init(model: SpeechModel, tokenizer: WhisperTokenizer, config: ModelConfig) throws {
        self.init(decoder: try WindowDecoder(model: model, tokenizer: tokenizer, config: config))
    }

    /// Mel frames per window (`2 * nAudioCtx`, 3000).
    public var windowFrames: Int { 2 * decoder.model.dimensions.nAudioCtx }

    /// Transcribes a whole recording.
    ///
    /// - Parameters:
    ///   - mel: log-mel spectrogram, `[nMels, frameCount]` row-major, computed as Whisper does
    ///     on the audio followed by 30 s of zeros.
    ///   - frameCount: frames per mel row.
    ///   - contentFrames: frames that belong to the real audio (`frameCount - 3000` for
    ///     Whisper's padding); decoding stops there.
    ///   - options: transcription options.
    ///   - onSegment: called with each segment as soon as its window is decoded.
    public func transcribe(mel: [Float], frameCount: Int, contentFrames: Int,
                           options: TranscriptionOptions = TranscriptionOptions(),
                           onSegment: ((Segment) -> Void)? = nil) throws -> Transcript {
        let dims = decoder.model.dimensions
        let tokenizer = decoder.tokenizer
        let nMels = dims.nMels
        let window = windowFrames
        guard frameCount >= 0, mel.count == nMels * frameCount else {
            throw DecodingError.melShapeMismatch("\(mel.count) values is not \(nMels) mel bins x \(frameCount) frames")
        }
        guard contentFrames >= 0, contentFrames <= frameCount else {
            throw DecodingError.melShapeMismatch("contentFrames \(contentFrames) is outside 0...\(frameCount)")
        }
        try options.decoding.validate()

        let timestampBegin = tokenizer.specials.timestampBegin
        let endOfText = tokenizer.specials.endOfText
        let inputStride = window / dims.nAudioCtx                                // mel frames per timestamp step: 2
        let timePrecision = Double(inputStride) * Transcriber.secondsPerFrame   // 0.02 s
        let maxPromptLength = dims.nTextCtx / 2 - 1

        // Window `seek ..< seek + size` of the mel, zero-padded to `width` frames: `[nMels, width]`.
        func melWindow(seek: Int, size: Int, width: Int = window) -> [Float] {
            var out = [Float](repeating: 0, count: nMels * width)
            guard size > 0 else { return out }
            mel.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    for m in 0..<nMels {
                        let from = m * frameCount + seek
                        let to = m * width
                        for f in 0..<size { dst[to + f] = src[from + f] }
                    }
                }
            }
            return out
        }

        // The language: given, English-only, or detected once on the first 30 s.
        var firstWindowAudio: EncodedAudio?
        var decoding = options.decoding
        let language: String
        if decoding.language == nil && tokenizer.isMultilingual {
            let size = min(window, frameCount)
            let audio = try decoder.model.encode(mel: melWindow(seek: 0, size: size),
                                                 cancellation: options.decoding.cancellation)
            // The first decoding window is the same mel when the audio fills a window.
            if contentFrames >= window { firstWindowAudio = audio }
            language = try decoder.detectLanguage(audio: audio).code
        } else {
            language = try decoder.checkLanguage(decoding.language ?? "en").code
        }
        decoding.language = language

        var initialPromptTokens: [Int] = []
        if let prompt = options.initialPrompt {
            initialPromptTokens = tokenizer.encode(" " + prompt.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        var allTokens = initialPromptTokens
        var promptResetSince = 0
        var segments: [Segment] = []
        var seek = 0
        var windowIndex: UInt64 = 0
        var shortWindows = 0, fullWindowRetries = 0

        while seek < contentFrames {
            try decoding.cancellation?.check()
            let timeOffset = Double(seek) * Transcriber.secondsPerFrame
            let segmentSize = min(window, contentFrames - seek)
            let segmentDuration = Double(segmentSize) * Transcriber.secondsPerFrame
            var windowOptions = decoding
            windowOptions.prompt = Array(allTokens[promptResetSince...].suffix(maxPromptLength))
            windowOptions.seed = decoding.seed &+ windowIndex &* 0x1_0000_0001
            windowIndex += 1

            // The short path: a window with less than 30 s of audio left is first encoded over its
            // own frames (rounded up) and decoded once at the first temperature; the result stands
            // unless the policy's guard finds it unreliable, then the window is decoded whole.
            var shortResult: DecodingResult?
            if let policy = options.shortWindow,
               let width = policy.encodedFrames(contentFrames: segmentSize, windowFrames: window) {
                var audio = try decoder.model.encode(mel: melWindow(seek: seek, size: segmentSize, width: width),
                                                     cancellation: decoding.cancellation)
                if policy.silentTail { audio = try decoder.model.extendedWithSilence(audio, cancellation: decoding.cancellation) }
                var attempt = windowOptions
                attempt.temperature = options.fallback.temperatures.first ?? 0
                attempt.sampleLength = min(attempt.sampleLength ?? dims.nTextCtx / 2,
                                           policy.tokenLimit(contentSeconds: segmentDuration))
                let result = try decoder.decode(audio: audio, options: attempt)
                if policy.accepts(result, contentSeconds: segmentDuration, timePrecision: timePrecision,
                                  timestampBegin: timestampBegin) {
                    shortResult = result
                } else {
                    fullWindowRetries += 1
                }
            }
            let result: DecodingResult
            if let shortResult {
                result = shortResult
                shortWindows += 1
            } else {
                let audio: EncodedAudio
                if seek == 0, let cached = firstWindowAudio {
                    audio = cached
                } else {
                    audio = try decoder.model.encode(mel: melWindow(seek: seek, size: segmentSize),
                                                     cancellation: decoding.cancellation)
                }
                result = try decoder.decodeWithFallback(audio: audio, options: windowOptions, policy: options.fallback)
            }
            firstWindowAudio = nil
            let tokens = result.tokens

            if let noSpeech = options.fallback.noSpeechThreshold {
                var skip = result.noSpeechProb > noSpeech
                if let logProb = options.fallback.logProbThreshold, result.avgLogProb > logProb { skip = false }
                if skip {
                    seek += segmentSize    // silence: go to the next window
                    continue
                }
            }

            let previousSeek = seek
            var current: [(start: Double, end: Double, tokens: [Int])] = []
            let isTimestamp = tokens.map { $0 >= timestampBegin }
            let singleTimestampEnding = tokens.count >= 2 && !isTimestamp[tokens.count - 2] && isTimestamp[tokens.count - 1]
            var consecutive: [Int] = []
            for i in 1..<max(tokens.count, 1) where isTimestamp[i] && isTimestamp[i - 1] { consecutive.append(i) }

            if !consecutive.isEmpty {
                var slices = consecutive
                if singleTimestampEnding { slices.append(tokens.count) }
                var lastSlice = 0
                for currentSlice in slices {
                    let sliced = Array(tokens[lastSlice..<currentSlice])
                    let startPosition = sliced[0] - timestampBegin
                    let endPosition = sliced[sliced.count - 1] - timestampBegin
                    current.append((timeOffset + Double(startPosition) * timePrecision,
                                    timeOffset + Double(endPosition) * timePrecision, sliced))
                    lastSlice = currentSlice
                }
                if singleTimestampEnding {
                    seek += segmentSize            // nothing is said after the last timestamp
                } else {
                    // Drop the unfinished last segment; resume at the last complete timestamp.
                    let lastPosition = tokens[lastSlice - 1] - timestampBegin
                    seek += lastPosition * inputStride
                }
            } else {
                var duration = segmentDuration
                if let last = tokens.last(where: { $0 >= timestampBegin }), last != timestampBegin {
                    duration = Double(last - timestampBegin) * timePrecision
                }
                current.append((timeOffset, timeOffset + duration, tokens))
                seek += segmentSize
            }
            // Guarantee progress even on a degenerate decode (e.g. `<|0.00|><|0.00|>`).
            if seek <= previousSeek { seek = previousSeek + segmentSize }

            for piece in current {
                let text = tokenizer.decode(piece.tokens.filter { $0 < endOfText })
                // Instantaneous or textless segments are dropped (faster-whisper; Whisper blanks them).
                if piece.start == piece.end || text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { continue }
                let segment = Segment(start: piece.start, end: piece.end, text: text, tokens: piece.tokens,
                                      avgLogProb: result.avgLogProb, noSpeechProb: result.noSpeechProb,
                                      temperature: result.temperature, compressionRatio: result.compressionRatio)
                segments.append(segment)
                allTokens.append(contentsOf: piece.tokens)
                onSegment?(segment)
            }

            if !options.conditionOnPreviousText || result.temperature > options.promptResetOnTemperature {
                promptResetSince = allTokens.count     // do not prompt with text from a high temperature
            }
        }

        let text = tokenizer.decode(allTokens[initialPromptTokens.count...].filter { $0 < endOfText })
        return Transcript(segments: segments, language: language, text: text, shortWindows: shortWindows,
                          fullWindowRetries: fullWindowRetries)
    }
}
