import Foundation
import WhisperEngine

/// One statistics pass: an utterance run through the full-precision model with fresh
/// `ActivationStatistics` observing every linear layer, as the daemon does for each live
/// utterance and `myqasr stats` for each file, each pass then merged into the kept statistics
/// (`ActivationStatistics.merge`). While a quantized model of 4 bits or more serves, the decoder's
/// layers are also observed behind that model's encoder (`run(served:)`). One home for what a pass
/// gathers, so that `myqasr stats` gathers exactly what the daemon does.
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
    /// Each window is encoded as the daemon serves it (`ShortWindowPolicy`'s defaults: a short utterance over its own
    /// frames, its decoder attending to a silent window after them), not over a whole 30 s window that is nine
    /// tenths padding for a short command: the encoder's statistics are then the user's speech, as the served
    /// model sees it (docs/myqasr-method.md section 21: 21.6 fewer word errors of 6234 at uniform 4's size, five
    /// builds). Each run's silent window is made first, while the pass holds nothing else, and the heap it used goes
    /// back before the run (made in the middle of a run, it came on top of the run's window and sums, and took the
    /// daemon's live loop over its memory bound); one that `model` keeps (a float model in service) is read instead.
    ///
    /// `served` is the model in service while the utterance was heard. When it is a quantized model of the same
    /// network whose layers all have at least `servedEncoderMinimumBits` (`standsIn(_:)`), `model`'s decoder runs
    /// a second time, behind `served`'s encoder, and its layers are observed in both runs: what the decoder of a
    /// model built from these statistics will read is a quantized encoder's output, not the full-precision one's.
    /// The offline tool's sequential mode gathers the decoder behind the encoder it has just quantized (GPTQ's
    /// order, `Quantizer.quantize`'s `decoderSecondMoments`); the daemon has no audio left by then, so the encoder
    /// in service stands in for it, beside the full-precision one. Such a pass costs one more transcription. The
    /// text returned is `model`'s. The choices (both runs, and no stand-in below 4 bits) were measured:
    /// docs/myqasr-method.md section 20.
    public static func run(model: WhisperModel, identity: String, samples: [Float], threads: Int = 1,
                           momentBlockSize: Int = momentBlockSize, served: WhisperModel? = nil,
                           cancellation: Cancellation? = nil) throws -> (statistics: ActivationStatistics, text: String) {
        let pass = emptyStatistics(modelIdentity: identity, momentBlockSize: momentBlockSize)
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        options.shortWindow = ShortWindowPolicy()   // as the daemon serves (the offline tool's calibration: whole windows)
        options.decoding.cancellation = cancellation
        let behind = try served.flatMap { standsIn($0) ? try decoderBehindEncoder(of: $0, model: model) : nil }
        let text = try {
            // `model` with a silent window of this run's, dropped after it, unless `model` keeps one.
            let run = model.silentWindows.byteSize > 0 ? model : model.withWeights(model.weights)
            try run.silentWindow(threads: threads, cancellation: cancellation)
            WhisperModel.releaseFreedMemory()
            return try SpeechRecognizer(model: run, threads: threads, observer: pass).transcribe(samples: samples, options: options).text
        }()
        if let behind {
            pass.secondMoments?.compact()   // the first run's decoder sums leave float before the second run's window
            WhisperModel.releaseFreedMemory()   // and, with the first run's scratch, leave the heap
            try behind.silentWindow(threads: threads, cancellation: cancellation)
            WhisperModel.releaseFreedMemory()
            let decoderOnly = LayerFilter(pass, accepts: WhisperWeights.isDecoderLayer)
            _ = try SpeechRecognizer(model: behind, threads: threads, observer: decoderOnly).transcribe(samples: samples, options: options)
        }
        pass.finishSample()
        if let error = pass.observationError { throw error }
        return (pass, text)
    }

    /// The fewest bits of a served model whose encoder stands in for a candidate's (`run(served:)`). Below it,
    /// rounding to nearest leaves an encoder too far from the candidate's: at uniform 3's size, behind uniform 3
    /// bits, the daemon's model made 28 more word errors of 1834 (docs/myqasr-method.md section 20).
    public static let servedEncoderMinimumBits = 4

    /// Whether the decoder's statistics are also gathered behind `served`'s encoder: it is quantized, and none of
    /// its layers has fewer than `servedEncoderMinimumBits`.
    public static func standsIn(_ served: WhisperModel) -> Bool {
        let layers = served.weights.linearLayers
        return layers.contains { $0.weight is QuantizedMatrix }
            && layers.allSatisfy { (($0.weight as? QuantizedMatrix)?.bits ?? Int.max) >= servedEncoderMinimumBits }
    }

    /// `model`'s network with the encoder's layers of `served` (a quantized model of it) in place of its own, each
    /// giving its pages back once it has been multiplied (`ReleasedAfterUse`).
    private static func decoderBehindEncoder(of served: WhisperModel, model: WhisperModel) throws -> WhisperModel {
        let layers = model.weights.linearLayers, servedLayers = served.weights.linearLayers
        guard served.weights.dimensions == model.weights.dimensions, servedLayers.map(\.name) == layers.map(\.name)
        else { throw StatisticsPassError.servedModelNotOfThisModel }
        var encoder: [String: any WeightMatrix] = [:]
        for layer in servedLayers where !WhisperWeights.isDecoderLayer(layer.name) {
            encoder[layer.name] = ReleasedAfterUse(layer.weight)
        }
        return model.withWeights(model.weights.replacing(encoder))
    }
}

/// Why a statistics pass cannot run.
public enum StatisticsPassError: Error, Equatable, CustomStringConvertible {
    /// The served model given is not a model of the network the pass runs (another shape).
    case servedModelNotOfThisModel

    public var description: String {
        switch self {
        case .servedModelNotOfThisModel:
            return "the served model is not a model of the full-precision model the statistics are gathered on"
        }
    }
}

/// A stand-in encoder layer of the served model that takes its pages out of the resident set after each product
/// (`WeightMatrix.releaseResidentPages`: nothing for memory of its own). The encoder multiplies each layer once per
/// window (its MLP's two in chunks of rows, each chunk mapping the pages again from the page cache: minor faults),
/// so the second run holds at most one of the served encoder's layers beside the decoder's sums, not all of them
/// (4.1 MiB resident for tiny.en at 4 bits, groups of 32, when the decoder began before this;
/// `PersonalStatisticsTests`). The next transcription maps the pages again from the page cache.
private struct ReleasedAfterUse: WeightMatrix {
    let base: any WeightMatrix

    init(_ base: any WeightMatrix) { self.base = base }

    var outFeatures: Int { base.outFeatures }
    var inFeatures: Int { base.inFeatures }
    var byteSize: Int { base.byteSize }

    func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        base.multiply(x, rows: m, threads: threads, into: y)
        base.releaseResidentPages()
    }

    func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>) { base.copyRow(index, into: out) }

    func releaseResidentPages() { base.releaseResidentPages() }
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
