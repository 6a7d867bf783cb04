import Foundation
import WhisperEngine

/// One statistics pass: an utterance run through the full-precision model with fresh
/// `ActivationStatistics` observing every linear layer, as the daemon does for each live
/// utterance and `myqasr stats` for each file, each pass then merged into the kept statistics
/// (`ActivationStatistics.merge`). While a quantized model serves, the decoder's layers are
/// observed behind that model's encoder (`run(served:)`). One home for what a pass gathers, so
/// that `myqasr stats` gathers exactly what the daemon does.
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
    ///
    /// With `served` (a quantized model of the same network: the one in service while the utterance was heard),
    /// the encoder's layers are observed on `model` as without it, and the decoder's on `model`'s decoder behind
    /// `served`'s encoder, which is run again for them: what the decoder of a model built from these statistics
    /// will read is a quantized encoder's output, not the full-precision one's. The offline tool's sequential mode
    /// gathers the decoder behind the encoder it has just quantized (GPTQ's order, `Quantizer.quantize`'s
    /// `decoderSecondMoments`); the daemon has no audio left by then, so the encoder in service stands in for it
    /// (docs/myqasr-method.md section 20). The pass then costs one more transcription. The text returned is
    /// `model`'s.
    public static func run(model: WhisperModel, identity: String, samples: [Float], threads: Int = 1,
                           momentBlockSize: Int = momentBlockSize, served: WhisperModel? = nil,
                           cancellation: Cancellation? = nil) throws -> (statistics: ActivationStatistics, text: String) {
        let pass = emptyStatistics(modelIdentity: identity, momentBlockSize: momentBlockSize)
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        options.shortWindow = nil   // whole windows, as `myqasr quantize --calibration` gathers them
        options.decoding.cancellation = cancellation
        let behind = try served.map { try decoderBehindEncoder(of: $0, model: model) }
        let observer: ActivationObserver = behind == nil ? pass : LayerFilter(pass) { !WhisperWeights.isDecoderLayer($0) }
        let transcript = try SpeechRecognizer(model: model, threads: threads, observer: observer)
            .transcribe(samples: samples, options: options)
        if let behind {
            let decoderOnly = LayerFilter(pass, accepts: WhisperWeights.isDecoderLayer)
            _ = try SpeechRecognizer(model: behind, threads: threads, observer: decoderOnly).transcribe(samples: samples, options: options)
        }
        pass.finishSample()
        if let error = pass.observationError { throw error }
        return (pass, transcript.text)
    }

    /// `model`'s network with the encoder's layers of `served` (a quantized model of it) in place of its own.
    private static func decoderBehindEncoder(of served: WhisperModel, model: WhisperModel) throws -> WhisperModel {
        let layers = model.weights.linearLayers, servedLayers = served.weights.linearLayers
        guard served.weights.dimensions == model.weights.dimensions, servedLayers.map(\.name) == layers.map(\.name),
              servedLayers.contains(where: { $0.weight is QuantizedMatrix })
        else { throw StatisticsPassError.servedModelNotQuantizedFromThisModel }
        var encoder: [String: any WeightMatrix] = [:]
        for layer in servedLayers where !WhisperWeights.isDecoderLayer(layer.name) { encoder[layer.name] = layer.weight }
        return model.withWeights(model.weights.replacing(encoder))
    }
}

/// Why a statistics pass cannot run.
public enum StatisticsPassError: Error, Equatable, CustomStringConvertible {
    /// The served model given is not a quantized model of the network the pass runs.
    case servedModelNotQuantizedFromThisModel

    public var description: String {
        switch self {
        case .servedModelNotQuantizedFromThisModel:
            return "the served model is not a quantized model of the full-precision model the statistics are gathered on"
        }
    }
}

/// Passes on to `base` what is observed of the layers `accepts` names.
private final class LayerFilter: ActivationObserver {
    let base: ActivationObserver
    let accepts: (String) -> Bool

    init(_ base: ActivationObserver, accepts: @escaping (String) -> Bool) {
        self.base = base
        self.accepts = accepts
    }

    func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        if accepts(layer) { base.observe(layer: layer, input: input, output: output, rows: rows) }
    }
}
