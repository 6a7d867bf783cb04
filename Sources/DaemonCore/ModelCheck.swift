import Foundation
import WhisperEngine

/// What the self-check found about a candidate model.
public struct CheckReport: Sendable, Equatable, CustomStringConvertible {
    /// Mean KL(full precision || candidate) per position on the probe, in nats (teacher-forced on the full-precision
    /// model's own tokens).
    public var divergence: Double
    /// Positions where both models rank the same token first.
    public var agreement: Double
    /// Text tokens (timestamps and end of text aside) the candidate decodes from the probe on its own, greedily,
    /// within the first `ModelCheck.positions`.
    public var producedTokens: Int
    /// The same count for the full-precision model.
    public var referenceTokens: Int
    /// The largest divergence allowed.
    public var bound: Double
    /// Why the check could not be run, if it could not (the candidate then fails).
    public var error: String? = nil

    /// Whether the candidate may serve: it produces text where the full-precision model does, and its
    /// divergence is within the bound.
    public var passed: Bool { failure == nil }

    /// Why it failed, or nil.
    public var failure: String? {
        if let error { return "it could not be checked: \(error)" }
        if producedTokens == 0 && referenceTokens > 0 {
            return "it decodes nothing from the probe, where the full-precision model decodes \(referenceTokens) tokens"
        }
        if !(divergence <= bound) {
            return String(format: "its next-token divergence from the full-precision model on the probe is %.3f nats, above the bound of %.3f",
                          divergence, bound)
        }
        return nil
    }

    /// "drift 0.112 nats (bound 0.6), top-1 agreement 91 %, 23 of 24 tokens" and the failure, if any.
    public var description: String {
        let summary = String(format: "drift %.3f nats (bound %.2f), top-1 agreement %.0f %%, %d tokens decoded (full precision %d)",
                             divergence, bound, 100 * agreement, producedTokens, referenceTokens)
        return failure.map { "\($0) (\(summary))" } ?? summary
    }
}

/// The self-check every candidate model passes before it serves (the "check" in candidate -> check -> swap): on
/// a fixed synthetic probe, the candidate must decode text where the full-precision model does, and its
/// next-token distributions, fed the full-precision model's own first `positions` greedy tokens, may drift from
/// the full-precision model's by at most `bound` nats per position (mean KL(full precision || candidate);
/// `SpeechRecognizer.divergence(from:samples:)`, what `myqasr compare --window own` measures on real audio). The
/// full-precision model itself is the reference and is not checked.
///
/// The probe (`ModelCheck.probe`) is 4.9 s of synthetic voiced sound: a pulse train at a gliding pitch through
/// three formant resonators per vowel, with noise bursts as consonants. No recording is shipped. tiny.en hears
/// it as a run of "HA, HA, ..." that its greedy decode repeats up to the token limit; the first 24 tokens are
/// the reference (all 224 separated the builds no better and took twice as long). Both models encode the probe
/// over its own frames (`MeasuredWindow.ownFrames`: 7 s, 350 encoder positions), not a whole 30 s window: the
/// check runs while the model in service is resident and serving, and its encoder scratch and cross-attention
/// keys and values are then a quarter of the whole window's.
///
/// The bound, measured on tiny.en (the reference's first 24 greedy tokens; scales per 32 inputs; myQASR widths
/// from the statistics of jfk.wav and librivox-0870.wav; `ModelCheckTests.testProbeSeparatesWorkingFromBrokenBuilds`
/// prints these):
///
/// | build (bytes) | KL, nats/position | top-1 agreement | text tokens (full precision 23) | jfk.wav |
/// |---|---|---|---|---|
/// | uniform 4 bits (23,994,432) | 0.027 | 0.96 | 23 | correct |
/// | uniform 3 bits (19,372,992) | 0.133 | 1.00 | 23 | correct |
/// | myQASR 2-3-4 bits (16 MiB budget, 16,736,064) | 0.377 | 0.92 | 23 | correct |
/// | myQASR mostly 2 bits (15 MiB budget, 15,685,440) | 1.978 | 0.08 | 0 | "about... Sch Luther" |
/// | uniform 2 bits (14,751,552) | 1.818 | 0.04 | 0 | nothing |
///
/// so `defaultBound` is 1.0 nats, about midway (geometrically) between the worst build that still transcribes
/// jfk.wav and the best that does not: the three that do pass with room, and the two that do not are refused
/// (they also decode nothing from the probe). Measured over the whole 30 s window, the same builds drifted
/// 0.062, 0.441, 1.082, 2.114 and 3.469 nats, with the bound at 1.5. The check costs one encoder pass over the
/// probe's 7 s and about 50 decoder steps for each model.
public struct ModelCheck: Sendable {
    /// The default largest mean divergence, in nats per position.
    public static let defaultBound = 1.0
    /// Positions of the reference's greedy decode compared.
    public static let positions = 24
    /// The probe's samples (16 kHz mono).
    public static let probe: [Float] = makeProbe()

    /// The largest mean divergence allowed.
    public var bound: Double
    /// Threads for the two passes.
    public var threads: Int

    /// A check with `bound` (nats per position), running on `threads` threads.
    public init(bound: Double = ModelCheck.defaultBound, threads: Int = 1) {
        self.bound = bound
        self.threads = threads
    }

    /// The full-precision model's first greedy tokens and distributions on the probe.
    public func reference(fullPrecision: WhisperModel, cancellation: Cancellation? = nil) throws -> ReferenceDistributions {
        try SpeechRecognizer(model: fullPrecision, threads: threads)
            .referenceDistributions(samples: Self.probe, maxTokens: Self.positions, window: .ownFrames,
                                    cancellation: cancellation)
    }

    /// Checks a candidate against the full-precision network it was made from; nil when there is none to check
    /// against (the candidate is the full-precision model). Once `cancellation` is set it stops at its next step
    /// and throws `DecodingError.cancelled` (the only error it throws: a check that cannot run reports a failure).
    public func check(_ candidate: Candidate, cancellation: Cancellation? = nil) throws -> CheckReport? {
        guard let fullPrecision = candidate.fullPrecision else { return nil }
        do {
            return try check(candidate.provided.model,
                             against: try reference(fullPrecision: fullPrecision, cancellation: cancellation),
                             cancellation: cancellation)
        } catch DecodingError.cancelled where cancellation?.isCancelled == true {
            throw DecodingError.cancelled
        } catch {
            return CheckReport(divergence: .infinity, agreement: 0, producedTokens: 0, referenceTokens: 0, bound: bound,
                               error: "\(error)")
        }
    }

    /// Checks `candidate` against the reference distributions of its full-precision model.
    public func check(_ candidate: WhisperModel, against reference: ReferenceDistributions,
                      cancellation: Cancellation? = nil) throws -> CheckReport {
        let recognizer = try SpeechRecognizer(model: candidate, threads: threads)
        defer { candidate.weights.releaseResidentPages() }   // until it serves, or is measured in shadow
        let audio = try recognizer.encodeFirstWindow(samples: Self.probe, window: reference.window, cancellation: cancellation)
        // The candidate's encoder is read once here; where its layers are a file's (the daemon's builds, `LayerFile`)
        // their pages leave the resident set for the decoding, which reads the rest, beside the model in service.
        for layer in candidate.weights.linearLayers where layer.name.hasPrefix("encoder/") {
            layer.weight.releaseResidentPages()
        }
        let divergence = try recognizer.divergence(from: reference, audio: audio, cancellation: cancellation)
        let produced = try recognizer.greedyTokens(audio: audio, maxTokens: Self.positions, cancellation: cancellation)
        let endOfText = candidate.tokenizer.specials.endOfText
        func text(_ tokens: ArraySlice<Int>) -> Int { tokens.filter { $0 < endOfText }.count }
        return CheckReport(divergence: divergence.meanKL, agreement: divergence.topOneAgreement,
                           producedTokens: text(produced.tokens.dropFirst(produced.promptLength)),
                           referenceTokens: text(reference.tokens.dropFirst(reference.promptLength)), bound: bound)
    }

    /// 4.9 seconds of synthetic speech-like sound: vowels (a pulse train through formant resonators at a pitch
    /// gliding 100-150 Hz) separated by short noise bursts, peak 0.5. Deterministic.
    static func makeProbe() -> [Float] {
        let rate = 16_000.0
        // First three formants (Hz) of a, i, u, e, o and of two more vowels.
        let vowels: [(Double, Double, Double)] = [
            (730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
            (660, 1720, 2410), (440, 1020, 2240),
        ]
        var out: [Float] = []
        var noise: UInt64 = 0x2545_F491_4F6C_DD1D
        func nextNoise() -> Double {
            noise ^= noise << 13
            noise ^= noise >> 7
            noise ^= noise << 17
            return Double(noise >> 11) / Double(1 << 53) * 2 - 1
        }
        var phase = 0.0
        for syllable in 0..<14 {
            // A consonant: 60 ms of noise, high-passed by a first difference.
            var previous = 0.0
            for _ in 0..<Int(0.06 * rate) {
                let n = nextNoise()
                out.append(Float(0.15 * (n - previous)))
                previous = n
            }
            // A vowel: 240 ms.
            let (f1, f2, f3) = vowels[syllable % vowels.count]
            var resonators = [(f1, 80.0), (f2, 100.0), (f3, 120.0)].map { Resonator(frequency: $0.0, bandwidth: $0.1, rate: rate) }
            let length = Int(0.24 * rate)
            for i in 0..<length {
                let t = Double(i) / Double(length)
                let pitch = 100 + 50 * sin(Double.pi * t) + 10 * Double(syllable % 3)
                phase += pitch / rate
                var excitation = 0.0
                if phase >= 1 {
                    phase -= 1
                    excitation = 1
                }
                var value = 0.0
                for r in resonators.indices { value += resonators[r].process(excitation) }
                let envelope = min(1, min(t, 1 - t) * 12)
                out.append(Float(value * envelope))
            }
            out.append(contentsOf: [Float](repeating: 0, count: Int(0.05 * rate)))
        }
        let peak = out.map { abs($0) }.max() ?? 1
        return out.map { $0 / peak * 0.5 }
    }

    /// A two-pole resonator (one formant).
    private struct Resonator {
        var a1: Double, a2: Double, gain: Double
        var y1 = 0.0, y2 = 0.0

        init(frequency: Double, bandwidth: Double, rate: Double) {
            let r = exp(-Double.pi * bandwidth / rate)
            a1 = 2 * r * cos(2 * Double.pi * frequency / rate)
            a2 = -r * r
            gain = 1 - r
        }

        mutating func process(_ x: Double) -> Double {
            let y = gain * x + a1 * y1 + a2 * y2
            y2 = y1
            y1 = y
            return y
        }
    }
}
