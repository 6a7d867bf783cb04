import Audio
import Foundation
import Quantization
import WhisperEngine

/// The calibration audio replayed through the decoder with the float model's own tokens
/// (teacher forcing), so that a decoder layer's inputs in the float model and in a partly
/// quantized one come from the same audio and tokens and pair row by row: what asymmetric
/// targets (`AsymmetricTarget`) round against. Holds, in memory only while quantizing, each
/// file's first log-mel window, its greedy tokens and the float decoder layers' input rows.
final class DecoderReplay {
    private let threads: Int
    /// One per calibration file: the encoder's input window `[nMels, 3000]` and the tokens fed.
    private let windows: [[Float]]
    private let tokens: [[Int]]
    /// Every decoder layer's inputs in the float model, file after file.
    private let floatInputs = LayerInputRecorder(accepts: { $0.hasPrefix("decoder/") && $0 != DecoderReplay.embedding })
    private let floatEmbeddingInputs = LayerInputRecorder(accepts: { $0 == DecoderReplay.embedding })
    /// The quantized encoder's output per file, made at the first decoder layer (the encoder is
    /// quantized by then and no longer changes).
    private var encoded: [EncodedAudio]?

    /// Transcribes `files` with `model` (full precision) and records its decoder inputs.
    init(model: WhisperModel, files: [String], threads: Int) throws {
        self.threads = threads
        let recognizer = try SpeechRecognizer(model: model, threads: threads)
        var windows: [[Float]] = [], tokens: [[Int]] = []
        for file in files {
            let samples: [Float]
            do { samples = try loadAudio(path: file) } catch { throw CLIError("\(error)") }
            windows.append(recognizer.firstWindow(samples: samples))
            tokens.append(try recognizer.greedyTokens(samples: samples).tokens)
        }
        self.windows = windows
        self.tokens = tokens
        let network = WhisperNetwork(weights: model.weights, threads: threads, observer: floatInputs)
        let embeddingNetwork = WhisperNetwork(weights: model.weights, threads: threads, observer: floatEmbeddingInputs)
        for (window, fed) in zip(windows, tokens) {
            let audio = network.encode(mel: window)
            Self.decode(network, audio: audio, tokens: fed, stepwise: false)
            Self.decode(embeddingNetwork, audio: audio, tokens: fed, stepwise: true)
        }
    }

    /// `layer`'s inputs in the float model and in `partial` (quantized encoder and earlier
    /// decoder layers), or `nil` if the float model's decoder never reached it.
    func inputs(partial: WhisperWeights, layer: String) -> PairedInputs? {
        guard let float = (layer == Self.embedding ? floatEmbeddingInputs : floatInputs).inputs(of: layer) else { return nil }
        let recorder = LayerInputRecorder(accepts: { $0 == layer })
        let network = WhisperNetwork(weights: partial, threads: threads, observer: recorder)
        let encoded = self.encoded ?? windows.map { network.encode(mel: $0) }
        self.encoded = encoded
        for (audio, fed) in zip(encoded, tokens) {
            Self.decode(network, audio: audio, tokens: fed, stepwise: layer == Self.embedding)
        }
        guard let quantized = recorder.inputs(of: layer) else { return nil }
        return PairedInputs(float: float.values, quantized: quantized.values, width: float.width)
    }

    /// The tied token embedding, whose rows as the output projection are each position's last.
    private static let embedding = "decoder/embeddings"

    /// Feeds `tokens` to a fresh decoder over `audio`. In one step every position's rows pass
    /// every decoder layer but the output projection, which sees the last position only;
    /// `stepwise`, one token at a time as decoding feeds them, gives the output projection
    /// every position's row and its rows alone are kept.
    private static func decode(_ network: WhisperNetwork, audio: EncodedAudio, tokens: [Int], stepwise: Bool) {
        let session = network.makeDecoderSession(audio: audio)
        if stepwise {
            for token in tokens { _ = session.step([[token]]) }
        } else {
            _ = session.step([tokens])
        }
    }
}
