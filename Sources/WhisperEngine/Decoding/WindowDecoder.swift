import Foundation
import Tokenizer

/// The outcome of decoding one 30 s window (openai/whisper's `DecodingResult`).
public struct DecodingResult: Sendable, Equatable {
    /// Sampled tokens after the start sequence, prompt and prefix, without `<|endoftext|>`;
    /// timestamp tokens included.
    public var tokens: [Int]
    /// Text of `tokens` (timestamps dropped), with surrounding whitespace trimmed.
    public var text: String
    /// Language code the window was decoded in.
    public var language: String
    /// Language probabilities when the language was detected for this call, otherwise `nil`.
    public var languageProbabilities: [String: Double]?
    /// Sum of the chosen tokens' log-probabilities, `<|endoftext|>` included.
    public var sumLogProb: Double
    /// `sumLogProb / (tokens.count + 1)`, as Whisper computes it.
    public var avgLogProb: Double
    /// Probability of the no-speech token at the `<|startoftranscript|>` position.
    public var noSpeechProb: Double
    /// Temperature the tokens were chosen at.
    public var temperature: Double
    /// `compressionRatio(of: text)`.
    public var compressionRatio: Double

    /// Creates a result from its parts.
    public init(tokens: [Int], text: String, language: String, languageProbabilities: [String: Double]?,
                sumLogProb: Double, avgLogProb: Double, noSpeechProb: Double, temperature: Double,
                compressionRatio: Double) {
        self.tokens = tokens
        self.text = text
        self.language = language
        self.languageProbabilities = languageProbabilities
        self.sumLogProb = sumLogProb
        self.avgLogProb = avgLogProb
        self.noSpeechProb = noSpeechProb
        self.temperature = temperature
        self.compressionRatio = compressionRatio
    }
}

/// The spoken language of a window, as the decoder sees it after `<|startoftranscript|>`.
public struct LanguageDetection: Sendable, Equatable {
    /// Most probable language code.
    public var code: String
    /// Its language token.
    public var token: Int
    /// Probability of every language of the vocabulary (softmax over language tokens only).
    public var probabilities: [String: Double]

    /// Creates a detection result.
    public init(code: String, token: Int, probabilities: [String: Double]) {
        self.code = code
        self.token = token
        self.probabilities = probabilities
    }
}

/// When to re-decode a window at a higher temperature, and when a window is silence
/// (openai/whisper's `transcribe` thresholds).
public struct FallbackPolicy: Sendable, Equatable {
    /// Temperatures tried in order; the first attempt whose result passes the checks wins.
    public var temperatures: [Double] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    /// Re-decode when the text's compression ratio is above this (too repetitive).
    public var compressionRatioThreshold: Double? = 2.4
    /// Re-decode when the average log-probability is below this.
    public var logProbThreshold: Double? = -1.0
    /// A window whose no-speech probability is above this while its average log-probability is
    /// below `logProbThreshold` is silence: no re-decoding, and the transcriber skips it.
    public var noSpeechThreshold: Double? = 0.6

    /// Creates a policy; the defaults are Whisper's.
    public init(temperatures: [Double] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], compressionRatioThreshold: Double? = 2.4,
                logProbThreshold: Double? = -1.0, noSpeechThreshold: Double? = 0.6) {
        self.temperatures = temperatures
        self.compressionRatioThreshold = compressionRatioThreshold
        self.logProbThreshold = logProbThreshold
        self.noSpeechThreshold = noSpeechThreshold
    }

    /// True when `result` should be decoded again at the next temperature.
    public func needsFallback(_ result: DecodingResult) -> Bool {
        var needs = false
        if let limit = compressionRatioThreshold, result.compressionRatio > limit { needs = true }
        if let limit = logProbThreshold, result.avgLogProb < limit { needs = true }
        if isSilence(result) { needs = false }
        return needs
    }

    /// True when `result` looks like silence: no-speech probability above its threshold and
    /// average log-probability below `logProbThreshold`.
    public func isSilence(_ result: DecodingResult) -> Bool {
        guard let speech = noSpeechThreshold, let logProb = logProbThreshold else { return false }
        return result.noSpeechProb > speech && result.avgLogProb < logProb
    }
}

/// Decodes single 30 s windows of encoded audio into tokens: Whisper's `DecodingTask`.
///
/// Beam search, greedy decoding and temperature sampling over a `SpeechModel`'s decoder,
/// with Whisper's logit rules, no-speech probability and language detection. Not thread-safe:
/// use one instance per thread (the model itself may be shared if it allows it).
public final class WindowDecoder {
    /// The network.
    public let model: SpeechModel
    /// The model's vocabulary.
    public let tokenizer: WhisperTokenizer
    /// Tokens suppressed at every step by default (the model config's `suppress_ids`).
    public let suppressIDs: [Int]
    /// Tokens suppressed at the first step when `suppressBlank` is on (`suppress_ids_begin`).
    public let suppressIDsBegin: [Int]

    /// Language tokens language detection chooses among (the config's `lang_ids`, or every
    /// language token of the vocabulary).
    public let languageTokens: [Int]

    private let vocabularySize: Int
    private var sampler = TemperatureSampler()

    /// Creates a decoder. An absent or empty `suppressIDsBegin` means `encode(" ") + [endOfText]`,
    /// which is what Whisper suppresses; an absent or empty `languageIDs` means every language
    /// token of the vocabulary. Throws `DecodingError.vocabularyMismatch` when the tokenizer's
    /// control tokens do not fit the network's vocabulary.
    public init(model: SpeechModel, tokenizer: WhisperTokenizer, suppressIDs: [Int], suppressIDsBegin: [Int]? = nil,
                languageIDs: [Int]? = nil) throws {
        self.model = model
        self.tokenizer = tokenizer
        self.suppressIDs = suppressIDs
        let s = tokenizer.specials
        if let begin = suppressIDsBegin, !begin.isEmpty {
            self.suppressIDsBegin = begin
        } else {
            self.suppressIDsBegin = tokenizer.encode(" ") + [s.endOfText]
        }
        vocabularySize = model.dimensions.nVocab
        let vocabularySize = self.vocabularySize
        let languages = (languageIDs?.isEmpty == false ? languageIDs! : tokenizer.languageTokens)
        languageTokens = languages.filter { $0 >= 0 && $0 < vocabularySize && tokenizer.languageCode(forToken: $0) != nil }
        let controls = [s.endOfText, s.startOfTranscript, s.translate, s.transcribe, s.startOfLM,
                        s.startOfPrevious, s.noSpeech, s.noTimestamps, s.timestampBegin]
        if let bad = controls.first(where: { $0 < 0 || $0 >= vocabularySize }) {
            throw DecodingError.vocabularyMismatch(
                "control token \(bad) is outside the network's vocabulary of \(vocabularySize)")
        }
        guard s.endOfText < s.timestampBegin else {
            throw DecodingError.vocabularyMismatch("<|endoftext|> (\(s.endOfText)) must come before <|0.00|> (\(s.timestampBegin))")
        }
    }

    /// Creates a decoder with the suppression lists and language tokens of a model's `config.json`.
    public convenience init(model: SpeechModel, tokenizer: WhisperTokenizer, config: ModelConfig) throws {
        try self.init(model: model, tokenizer: tokenizer, suppressIDs: config.suppressIDs,
                      suppressIDsBegin: config.suppressIDsBegin, languageIDs: config.languageIDs)
    }

    /// Seconds per timestamp step: 30 s over the encoder's positions (0.02 s).
    public var timePrecision: Double { 30.0 / Double(model.dimensions.nAudioCtx) }

    // MARK: - Language

    /// Whisper's language detection: one decoder step from `<|startoftranscript|>`, softmax over
    /// the language tokens only. Throws on English-only models.
    public func detectLanguage(audio: EncodedAudio) throws -> LanguageDetection {
        guard tokenizer.isMultilingual else { throw DecodingError.languageDetectionUnsupported }
        guard !languageTokens.isEmpty else {
            throw DecodingError.vocabularyMismatch("the vocabulary has no language tokens")
        }
        let session = model.makeDecoderSession(audio: audio)
        let logits = session.step([[tokenizer.specials.startOfTranscript]])
        try checkLogits(logits, rows: 1)
        var best = languageTokens[0]
        var maxLogit = -Float.infinity
        for t in languageTokens where logits[t] > maxLogit { maxLogit = logits[t]; best = t }
        var total: Double = 0
        for t in languageTokens { total += Foundation.exp(Double(logits[t] - maxLogit)) }
        var probabilities: [String: Double] = [:]
        for t in languageTokens {
            if let code = tokenizer.languageCode(forToken: t) {
                probabilities[code] = Foundation.exp(Double(logits[t] - maxLogit)) / total
            }
        }
        guard let code = tokenizer.languageCode(forToken: best) else {
            throw DecodingError.vocabularyMismatch("language token \(best) has no language code")
        }
        return LanguageDetection(code: code, token: best, probabilities: probabilities)
    }

    /// Checks that the model can decode in language `code` without running the network:
    /// English-only models accept only `"en"` (and have no language token); multilingual
    /// models need `<|code|>` in their vocabulary.
    public func checkLanguage(_ code: String) throws -> (code: String, token: Int?) {
        let code = code.lowercased()
        if !tokenizer.isMultilingual {
            guard code == "en" else { throw DecodingError.unsupportedLanguage(code: code, multilingual: false) }
            return ("en", nil)
        }
        guard let token = tokenizer.languageToken(code), token < vocabularySize else {
            throw DecodingError.unsupportedLanguage(code: code, multilingual: true)
        }
        return (code, token)
    }

    /// The language code and token to decode in: checks `requested` against the model, or
    /// detects the language on multilingual models when it is `nil`. English-only models
    /// decode in `"en"` with no language token.
    public func resolveLanguage(_ requested: String?, audio: EncodedAudio) throws
        -> (code: String, token: Int?, detection: LanguageDetection?) {
        if !tokenizer.isMultilingual || requested != nil {
            let checked = try checkLanguage(requested ?? "en")
            return (checked.code, checked.token, nil)
        }
        let detection = try detectLanguage(audio: audio)
        return (detection.code, detection.token, detection)
    }

    // MARK: - Start sequence

    /// The tokens fed before sampling, and the index of `<|startoftranscript|>` among them:
    /// `[<|startofprev|>, last nTextCtx/2 - 1 prompt tokens]` (only with a prompt), then
    /// `<|startoftranscript|>`, the language and task tokens (multilingual models only),
    /// `<|notimestamps|>` when decoding without timestamps, then the prefix.
    public func initialTokens(options: DecodingOptions, languageToken: Int?) throws -> (tokens: [Int], sotIndex: Int) {
        let s = tokenizer.specials
        let nTextCtx = model.dimensions.nTextCtx
        var tokens: [Int] = []
        if !options.prompt.isEmpty {
            tokens.append(s.startOfPrevious)
            tokens.append(contentsOf: options.prompt.suffix(max(nTextCtx / 2 - 1, 0)))
        }
        let sotIndex = tokens.count
        tokens.append(s.startOfTranscript)
        if tokenizer.isMultilingual {
            guard let language = languageToken else {
                throw DecodingError.invalidOptions("a multilingual model needs a language token")
            }
            tokens.append(language)
            tokens.append(options.task == .translate ? s.translate : s.transcribe)
        } else if options.task == .translate {
            throw DecodingError.translationUnsupported
        }
        if options.withoutTimestamps { tokens.append(s.noTimestamps) }
        if !options.prefix.isEmpty {
            let sampleLength = options.sampleLength ?? nTextCtx / 2
            let maxPrefix = nTextCtx / 2 - sampleLength
            tokens.append(contentsOf: maxPrefix > 0 ? Array(options.prefix.suffix(maxPrefix)) : options.prefix)
        }
        guard tokens.count < nTextCtx else {
            throw DecodingError.promptTooLong(initialTokens: tokens.count, contextSize: nTextCtx)
        }
        return (tokens, sotIndex)
    }

    /// The logit rules for `options`, in Whisper's order: blank suppression, token
    /// suppression, timestamp rules.
    public func logitFilters(options: DecodingOptions) -> [LogitFilter] {
        let s = tokenizer.specials
        var filters: [LogitFilter] = []
        if options.suppressBlank { filters.append(SuppressBlankFilter(tokens: suppressIDsBegin)) }
        let base = options.suppressTokens ?? suppressIDs
        if !base.isEmpty {
            filters.append(SuppressTokensFilter(tokens: base + [s.transcribe, s.translate, s.startOfTranscript,
                                                                s.startOfPrevious, s.startOfLM, s.noSpeech]))
        }
        if !options.withoutTimestamps {
            let maxIndex = options.maxInitialTimestamp.map { Int(($0 / timePrecision).rounded()) }
            filters.append(TimestampRulesFilter(endOfText: s.endOfText, noTimestamps: s.noTimestamps,
                                                timestampBegin: s.timestampBegin, maxInitialTimestampIndex: maxIndex))
        }
        return filters
    }

    // MARK: - Decoding

    /// Decodes one window at `options.temperature`: beam search at temperature 0 with
    /// `beamSize > 1`, greedy at temperature 0 with `beamSize == 1`, otherwise `bestOf`
    /// samples. Detects the language first when `options.language` is `nil` on a
    /// multilingual model.
    public func decode(audio: EncodedAudio, options: DecodingOptions) throws -> DecodingResult {
        try options.validate()
        let language = try resolveLanguage(options.language, audio: audio)
        return try decode(audio: audio, options: options, language: language.code,
                          languageToken: language.token, detection: language.detection)
    }

    /// Whisper's `decode_with_fallback`: decodes at each of `policy.temperatures` in turn until
    /// a result passes the policy's checks (or is judged silence); returns the last attempt
    /// otherwise. Beam search is used only at temperature 0, sampling with `bestOf` above it.
    /// The language is resolved once, before the first attempt.
    public func decodeWithFallback(audio: EncodedAudio, options: DecodingOptions, policy: FallbackPolicy) throws -> DecodingResult {
        try options.validate()
        guard !policy.temperatures.isEmpty else {
            throw DecodingError.invalidOptions("the fallback policy needs at least one temperature")
        }
        let language = try resolveLanguage(options.language, audio: audio)
        var result: DecodingResult?
        for (attempt, temperature) in policy.temperatures.enumerated() {
            var attemptOptions = options
            attemptOptions.temperature = temperature
            attemptOptions.seed = options.seed &+ UInt64(attempt) &* 0x9E37_79B9
            try attemptOptions.validate()
            let current = try decode(audio: audio, options: attemptOptions, language: language.code,
                                     languageToken: language.token, detection: language.detection)
            result = current
            if !policy.needsFallback(current) { break }
        }
        return result!
    }

    /// One candidate sequence: sampled tokens without `<|endoftext|>`, and its summed log-probability.
    struct Candidate {
        var tokens: [Int]
        var sumLogProb: Double
    }

    private func decode(audio: EncodedAudio, options: DecodingOptions, language: String, languageToken: Int?,
                        detection: LanguageDetection?) throws -> DecodingResult {
        let nTextCtx = model.dimensions.nTextCtx
        let (initial, sotIndex) = try initialTokens(options: options, languageToken: languageToken)
        let sampleLength = options.sampleLength ?? nTextCtx / 2
        // Whisper stops once the sequence is longer than the context; the last token is never fed.
        let maxSampled = min(sampleLength, nTextCtx - initial.count + 1)
        let filters = logitFilters(options: options)
        let session = model.makeDecoderSession(audio: audio)

        // Feed the start sequence in two parts so the logits at <|startoftranscript|> are seen:
        // the no-speech probability is read there, before any filtering.
        var logits = session.step([Array(initial[...sotIndex])])
        try checkLogits(logits, rows: 1)
        let noSpeechProb = logits.withUnsafeBufferPointer { row -> Double in
            let lse = LogitMath.logSumExp(row, 0..<vocabularySize)
            return Foundation.exp(LogitMath.logProbability(row, at: tokenizer.specials.noSpeech, logSumExp: lse))
        }
        if sotIndex + 1 < initial.count {
            logits = session.step([Array(initial[(sotIndex + 1)...])])
            try checkLogits(logits, rows: 1)
        }

        let candidates: [Candidate]
        if options.temperature == 0 && options.beamSize > 1 {
            candidates = try beamSearch(session: session, firstLogits: logits, filters: filters,
                                        beamSize: options.beamSize, maxCandidates: options.maxCandidates,
                                        maxSampled: maxSampled, cancellation: options.cancellation)
        } else {
            let count = options.temperature > 0 ? options.bestOf : 1
            candidates = try sample(session: session, firstLogits: logits, filters: filters, count: count,
                                    temperature: options.temperature, seed: options.seed, maxSampled: maxSampled,
                                    cancellation: options.cancellation)
        }
        let best = candidates[WindowDecoder.rank(candidates, lengthPenalty: options.lengthPenalty)]
        let text = tokenizer.decode(best.tokens).trimmingCharacters(in: .whitespacesAndNewlines)
        return DecodingResult(
            tokens: best.tokens, text: text, language: language, languageProbabilities: detection?.probabilities,
            sumLogProb: best.sumLogProb, avgLogProb: best.sumLogProb / Double(best.tokens.count + 1),
            noSpeechProb: noSpeechProb, temperature: options.temperature,
            compressionRatio: compressionRatio(of: text))
    }

    /// Whisper's `MaximumLikelihoodRanker`: the index of the candidate with the highest
    /// `sumLogProb / length` (or `sumLogProb / ((5 + length) / 6)^alpha`); first on ties.
    static func rank(_ candidates: [Candidate], lengthPenalty: Double?) -> Int {
        var best = 0
        var bestScore = -Double.infinity
        for (i, c) in candidates.enumerated() {
            let length = Double(max(c.tokens.count, 1))
            let penalty = lengthPenalty.map { Foundation.pow((5 + length) / 6, $0) } ?? length
            let score = c.sumLogProb / penalty
            if i == 0 || score > bestScore { best = i; bestScore = score }
        }
        return best
    }

    private func checkLogits(_ logits: [Float], rows: Int) throws {
        guard logits.count == rows * vocabularySize else {
            throw DecodingError.logitsSizeMismatch(expected: rows * vocabularySize, got: logits.count)
        }
    }

    /// Greedy decoding (temperature 0) or `count` independent samples from
    /// `softmax(logits / temperature)`. Log-probabilities are those of the filtered logits at
    /// temperature 1, as in Whisper. Finished samples leave the decoder batch.
    private func sample(session: DecoderSession, firstLogits: [Float], filters: [LogitFilter], count: Int,
                        temperature: Double, seed: UInt64, maxSampled: Int,
                        cancellation: Cancellation?) throws -> [Candidate] {
        let eot = tokenizer.specials.endOfText
        let v = vocabularySize
        var generator = SeededGenerator(seed: seed)
        var candidates = [Candidate](repeating: Candidate(tokens: [], sumLogProb: 0), count: count)
        var active = Array(0..<count)      // candidates still running, in batch-row order
        var shared = true                  // the first step's single row serves every candidate
        var logits = firstLogits
        for step in 0..<maxSampled {
            try checkLogits(logits, rows: shared ? 1 : active.count)
            var finishedNow = Set<Int>()
            logits.withUnsafeMutableBufferPointer { buffer in
                for (position, c) in active.enumerated() {
                    let r = shared ? 0 : position
                    let row = UnsafeMutableBufferPointer(rebasing: buffer[(r * v)..<((r + 1) * v)])
                    if !shared || position == 0 {
                        for filter in filters { filter.apply(row, sampled: candidates[c].tokens) }
                    }
                    let view = UnsafeBufferPointer(row)
                    let token = temperature == 0
                        ? LogitMath.argmax(view)
                        : sampler.sample(view, temperature: temperature, using: &generator)
                    let lse = LogitMath.logSumExp(view, 0..<v)
                    candidates[c].sumLogProb += LogitMath.logProbability(view, at: token, logSumExp: lse)
                    if token == eot { finishedNow.insert(c) } else { candidates[c].tokens.append(token) }
                }
            }
            let rowsNow = shared ? 1 : active.count
            var sources: [Int] = []
            var still: [Int] = []
            for (position, c) in active.enumerated() where !finishedNow.contains(c) {
                still.append(c)
                sources.append(shared ? 0 : position)
            }
            if still.isEmpty || step == maxSampled - 1 { break }
            if sources != Array(0..<rowsNow) { session.reorder(sources) }
            active = still
            shared = false
            try cancellation?.check()
            logits = session.step(active.map { [candidates[$0].tokens[candidates[$0].tokens.count - 1]] })
        }
        return candidates
    }

    /// Whisper's `BeamSearchDecoder`: each live beam proposes its `beamSize + 1` best next
    /// tokens; the best `beamSize` non-final proposals live on, proposals ending in
    /// `<|endoftext|>` are collected until `maxCandidates` have finished. If fewer than
    /// `beamSize` finished, the best live beams are added.
    private func beamSearch(session: DecoderSession, firstLogits: [Float], filters: [LogitFilter], beamSize: Int,
                            maxCandidates: Int, maxSampled: Int, cancellation: Cancellation?) throws -> [Candidate] {
        let eot = tokenizer.specials.endOfText
        let v = vocabularySize
        var beams = [Candidate(tokens: [], sumLogProb: 0)]   // identical beams collapse into one at the start
        var finished: [Candidate] = []
        var logits = firstLogits
        var proposals: [(score: Double, source: Int, token: Int)] = []
        proposals.reserveCapacity(beamSize * (beamSize + 1))
        for step in 0..<maxSampled {
            try checkLogits(logits, rows: beams.count)
            proposals.removeAll(keepingCapacity: true)
            logits.withUnsafeMutableBufferPointer { buffer in
                for r in 0..<beams.count {
                    let row = UnsafeMutableBufferPointer(rebasing: buffer[(r * v)..<((r + 1) * v)])
                    for filter in filters { filter.apply(row, sampled: beams[r].tokens) }
                    let view = UnsafeBufferPointer(row)
                    let lse = LogitMath.logSumExp(view, 0..<v)
                    for (token, _) in LogitMath.topK(view, beamSize + 1) {
                        let logProb = LogitMath.logProbability(view, at: token, logSumExp: lse)
                        proposals.append((beams[r].sumLogProb + logProb, r, token))
                    }
                }
            }
            // Best first; equal scores keep proposal order (Python's stable sort).
            let order = proposals.indices.sorted {
                proposals[$0].score > proposals[$1].score || (proposals[$0].score == proposals[$1].score && $0 < $1)
            }
            var next: [Candidate] = []
            var sources: [Int] = []
            var newlyFinished: [Candidate] = []
            for i in order {
                let p = proposals[i]
                if p.token == eot {
                    newlyFinished.append(Candidate(tokens: beams[p.source].tokens, sumLogProb: p.score))
                } else {
                    next.append(Candidate(tokens: beams[p.source].tokens + [p.token], sumLogProb: p.score))
                    sources.append(p.source)
                    if next.count == beamSize { break }
                }
            }
            for candidate in newlyFinished {
                if finished.count >= maxCandidates { break }
                finished.append(candidate)
            }
            let previousRows = beams.count
            beams = next
            if finished.count >= maxCandidates || beams.isEmpty || step == maxSampled - 1 { break }
            if sources != Array(0..<previousRows) { session.reorder(sources) }
            try cancellation?.check()
            logits = session.step(beams.map { [$0.tokens[$0.tokens.count - 1]] })
        }
        if finished.count < beamSize {
            let live = beams.indices.sorted {
                beams[$0].sumLogProb > beams[$1].sumLogProb || (beams[$0].sumLogProb == beams[$1].sumLogProb && $0 < $1)
            }
            for i in live {
                if finished.count >= beamSize { break }
                finished.append(beams[i])
            }
        }
        return finished
    }
}
