import Foundation
import WhisperEngine

/// How far the served model (and a candidate in shadow) drifts from the full-precision model on one of the
/// user's own live utterances: the full-precision model decodes the utterance greedily (at most `positions`
/// tokens), and each quantized model is fed those tokens over the same audio; the measure is the mean
/// KL(full precision || model) per position (`SpeechRecognizer.divergence`, what `myqasr compare` measures
/// offline and the self-check bounds on its probe). Run by the statistics pass while it holds the utterance;
/// only the aggregates leave it.
///
/// Cost, on the pass's one thread: one encoder pass per model (the full-precision one and each measured).
public enum OwnSpeechDrift {
    /// Tokens of the full-precision decode compared (a short command has fewer; 64 covers most utterances).
    public static let positions = 64

    /// The divergence of `served` and of `candidate` (if any) from `fullPrecision` on `samples`; stops at its next
    /// encoder step or position once `cancellation` is set (`DecodingError.cancelled`).
    public static func measure(samples: [Float], fullPrecision: WhisperModel, served: WhisperModel,
                               candidate: WhisperModel?, cancellation: Cancellation? = nil) throws
        -> (served: NextTokenDivergence, candidate: NextTokenDivergence?)
    {
        let reference = try SpeechRecognizer(model: fullPrecision, threads: 1)
            .referenceDistributions(samples: samples, maxTokens: positions, window: .ownFrames, cancellation: cancellation)
        let servedDrift = try SpeechRecognizer(model: served, threads: 1)
            .divergence(from: reference, samples: samples, cancellation: cancellation)
        // The two quantized models are not resident together: the served one's pages go back to the page cache while
        // the candidate is read (a transcription meanwhile maps what it reads again).
        if candidate != nil { served.weights.releaseResidentPages() }
        let candidateDrift = try candidate.map { model in
            defer { model.weights.releaseResidentPages() }   // it serves nobody until it is promoted
            return try SpeechRecognizer(model: model, threads: 1)
                .divergence(from: reference, samples: samples, cancellation: cancellation)
        }
        return (servedDrift, candidateDrift)
    }
}
