import Foundation
import WhisperEngine

/// One statistics pass: an utterance run through the full-precision model with fresh
/// `ActivationStatistics` observing every linear layer, as the daemon does for each live
/// utterance and `myqasr stats` for each file, each pass then merged into the kept statistics
/// (`ActivationStatistics.merge`). One home for what a pass gathers, so that `myqasr stats`
/// gathers exactly what the daemon does.
public enum StatisticsPass {
    /// The second moments are kept on diagonal blocks of this many input features
    /// (`InputCovariance`); chosen by measurement (docs/myqasr-method.md section 13).
    public static let momentBlockSize = 384

    /// Empty statistics of the pass's form for the model with `modelIdentity`.
    public static func emptyStatistics(modelIdentity: String, momentBlockSize: Int = momentBlockSize) -> ActivationStatistics {
        ActivationStatistics(modelIdentity: modelIdentity, momentBlockSize: momentBlockSize)
    }

    /// Runs `samples` (16 kHz mono) through `model` (full precision; `identity` is its
    /// `ModelIdentity`) with greedy decoding on `threads` threads, and returns the pass's
    /// statistics (one sample) and the transcript's text (which the caller may drop). Once `cancellation` is set
    /// it stops at the next encoder step or decoded token (`DecodingError.cancelled`).
    public static func run(model: WhisperModel, identity: String, samples: [Float], threads: Int = 1,
                           momentBlockSize: Int = momentBlockSize,
                           cancellation: Cancellation? = nil) throws -> (statistics: ActivationStatistics, text: String) {
        let pass = emptyStatistics(modelIdentity: identity, momentBlockSize: momentBlockSize)
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        options.shortWindow = nil   // whole windows, as `myqasr quantize --calibration` gathers them
        options.decoding.cancellation = cancellation
        let transcript = try SpeechRecognizer(model: model, threads: threads, observer: pass).transcribe(samples: samples, options: options)
        pass.finishSample()
        if let error = pass.observationError { throw error }
        return (pass, transcript.text)
    }
}
