import Foundation

/// Which encoding of an input's first window a drift is measured over.
public enum MeasuredWindow: String, Sendable, CaseIterable {
    /// The whole 30 s window (the input's frames, then zeros), as a long file's windows are decoded.
    case whole
    /// The input's own frames with the short path's padding, rounded up to its bucket
    /// (`ShortWindowPolicy.encodedFrames`: a 4.9 s input is encoded as 7 s), the decoder attending to those
    /// positions only; an input too long for that gets the whole window. The daemon measures here: its encoder
    /// scratch and cross-attention keys follow the input, where the whole window's are those of 30 s.
    case ownFrames = "own"
}

/// A reference model's next-token distributions over one input: the tokens one greedy decode of its
/// first window gives (after the prompt they were decoded from) and the log-probabilities the
/// reference assigns after each of them. Other models given the same tokens over the same window are
/// measured against it (`SpeechRecognizer.divergence(from:samples:)`): what `myqasr compare` reports and
/// what the daemon's self-check bounds.
public struct ReferenceDistributions: Sendable {
    /// The window the reference was decoded over; models measured against it are encoded the same way.
    public let window: MeasuredWindow
    /// Prompt tokens, then the reference's greedy tokens.
    public let tokens: [Int]
    /// How many of `tokens` are the prompt.
    public let promptLength: Int
    /// Log-probabilities after each token from `promptLength - 1` on: `[tokens.count - promptLength + 1, nVocab]`
    /// row-major (the prompt's earlier positions predict nothing of the transcript), in half precision: the rows of
    /// the daemon's drift measurement (65 of 51,864 entries for tiny.en) are 6.7 MB instead of 13.5. A
    /// log-probability's rounding (at most 2^-11 of it) moves a mean KL by well under 0.001 nats.
    public let logProbabilities: [Float16]
    /// The most likely token of each row, taken before the rounding (which can tie or swap close leaders).
    public let topTokens: [Int]
    /// Entries per row.
    public let vocabularySize: Int

    /// Creates reference distributions from their parts.
    public init(window: MeasuredWindow, tokens: [Int], promptLength: Int, logProbabilities: [Float16], topTokens: [Int],
                vocabularySize: Int) {
        self.window = window
        self.tokens = tokens
        self.promptLength = promptLength
        self.logProbabilities = logProbabilities
        self.topTokens = topTokens
        self.vocabularySize = vocabularySize
    }
}

/// How far a model's next-token distributions are from a reference's on the same tokens.
public struct NextTokenDivergence: Sendable, Equatable {
    /// Positions compared.
    public var positions: Int
    /// Sum over positions of KL(reference || model), in nats.
    public var klSum: Double
    /// Largest single position's KL.
    public var klMax: Double
    /// Positions where both put the same token first.
    public var agreeing: Int

    /// Nothing compared yet.
    public init() {
        positions = 0
        klSum = 0
        klMax = 0
        agreeing = 0
    }

    /// Mean KL(reference || model) per position, in nats.
    public var meanKL: Double { klSum / Double(max(positions, 1)) }
    /// Share of positions where both rank the same token first.
    public var topOneAgreement: Double { Double(agreeing) / Double(max(positions, 1)) }

    /// Adds one position: `p` the reference's log-probabilities and `top` its most likely token, `q` the model's
    /// log-probabilities.
    public mutating func add(reference p: ArraySlice<Float16>, top: Int, model q: UnsafeBufferPointer<Float>) {
        var kl = 0.0
        for (logP, logQ) in zip(p, q) { kl += Foundation.exp(Double(logP)) * (Double(logP) - Double(logQ)) }
        kl = Swift.max(kl, 0)
        klSum += kl
        klMax = Swift.max(klMax, kl)
        positions += 1
        if top == q.indices.max(by: { q[$0] < q[$1] }) {
            agreeing += 1
        }
    }

    /// Merges the positions of another measurement.
    public mutating func merge(_ other: NextTokenDivergence) {
        positions += other.positions
        klSum += other.klSum
        klMax = Swift.max(klMax, other.klMax)
        agreeing += other.agreeing
    }
}

extension SpeechRecognizer {
    /// This model's greedy tokens (at most `maxTokens`) on the first window of `samples`, encoded as `window`,
    /// and its distributions after each (the reference others are measured against), both over one encoder pass.
    /// Stops at its next step once `cancellation` is set (`DecodingError.cancelled`).
    public func referenceDistributions(samples: [Float], maxTokens: Int? = nil, window: MeasuredWindow,
                                       cancellation: Cancellation? = nil) throws -> ReferenceDistributions {
        let audio = try encodeFirstWindow(samples: samples, window: window, cancellation: cancellation)
        let (tokens, promptLength) = try greedyTokens(audio: audio, maxTokens: maxTokens, cancellation: cancellation)
        let vocabulary = network.dimensions.nVocab
        var kept: [Float16] = []   // [tokens.count - promptLength + 1, nVocab]
        var top: [Int] = []
        kept.reserveCapacity((tokens.count - promptLength + 1) * vocabulary)
        try forEachLogProbabilities(audio: audio, following: tokens, cancellation: cancellation) { position, row in
            guard position >= promptLength - 1 else { return }
            kept.append(contentsOf: row.lazy.map { Float16($0) })
            top.append(row.indices.max(by: { row[$0] < row[$1] })!)
        }
        return ReferenceDistributions(window: window, tokens: tokens, promptLength: promptLength, logProbabilities: kept, topTokens: top,
                                      vocabularySize: vocabulary)
    }

    /// KL(reference || this model) at every position of `reference`, this model fed the reference's
    /// tokens over the same window (`reference.window`) of the same `samples`. Stops at its next step once
    /// `cancellation` is set (`DecodingError.cancelled`).
    public func divergence(from reference: ReferenceDistributions, samples: [Float],
                           cancellation: Cancellation? = nil) throws -> NextTokenDivergence {
        try divergence(from: reference,
                       audio: try encodeFirstWindow(samples: samples, window: reference.window, cancellation: cancellation),
                       cancellation: cancellation)
    }

    /// `divergence(from:samples:)` over this model's encoding of the samples' first window
    /// (`encodeFirstWindow(samples:window:)` with `reference.window`).
    public func divergence(from reference: ReferenceDistributions, audio: EncodedAudio,
                           cancellation: Cancellation? = nil) throws -> NextTokenDivergence {
        let vocabulary = reference.vocabularySize
        precondition(vocabulary == network.dimensions.nVocab, "divergence: the vocabularies differ")
        var result = NextTokenDivergence()
        let first = reference.promptLength - 1
        // Position by position: this model's rows are compared as they come, not held.
        try forEachLogProbabilities(audio: audio, following: reference.tokens, cancellation: cancellation) { position, row in
            guard position >= first else { return }
            let p = (position - first) * vocabulary
            result.add(reference: reference.logProbabilities[p..<(p + vocabulary)], top: reference.topTokens[position - first],
                       model: row)
        }
        return result
    }
}
