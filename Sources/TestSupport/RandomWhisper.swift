import WhisperEngine

extension SeededGenerator {
    /// `n` uniform values in `-scale...scale`.
    public mutating func floats(_ n: Int, scale: Float) -> [Float] {
        (0..<n).map { _ in Float.random(in: -scale...scale, using: &self) }
    }
}

/// Builds a Whisper network of any size with random weights, for unit tests of the engine
/// and of quantization (test targets cannot import each other, so it lives here).
public enum RandomWhisper {
    /// Small dimensions that still exercise every layer: a width that is not a multiple of
    /// 64 (96), conv1 input 3·nMels = 30 (less than one 32-block), odd vocabulary.
    public static let smallDimensions = ModelDimensions(nMels: 10, nAudioCtx: 12, nState: 96, nHeads: 4,
                                                 nAudioLayers: 2, nTextLayers: 2, nTextCtx: 16, nVocab: 101)

    /// Random weights of `dims`, deterministic for a given generator state.
    public static func make(_ dims: ModelDimensions = smallDimensions, rng: inout SeededGenerator) -> WhisperWeights {
        let d = dims.nState
        func values(_ n: Int, scale: Float) -> [Float] { rng.floats(n, scale: scale) }
        func linear(_ name: String, out: Int, in inputs: Int, bias: Bool = true) -> Linear {
            let scale = 1 / Float(inputs).squareRoot()
            return Linear(name: name,
                          weight: FloatMatrix(outFeatures: out, inFeatures: inputs, values: values(out * inputs, scale: scale)),
                          bias: bias ? values(out, scale: 0.1) : nil)
        }
        func norm() -> LayerNormWeights {
            LayerNormWeights(gamma: (0..<d).map { _ in Float.random(in: 0.8...1.2, using: &rng) }, beta: values(d, scale: 0.1))
        }
        let encoder = (0..<dims.nAudioLayers).map { i in
            EncoderBlock(attentionNorm: norm(),
                         qkv: linear("encoder/layer_\(i)/self_attention/linear_0", out: 3 * d, in: d),
                         attentionOut: linear("encoder/layer_\(i)/self_attention/linear_1", out: d, in: d),
                         mlpNorm: norm(),
                         mlpUp: linear("encoder/layer_\(i)/ffn/linear_0", out: 4 * d, in: d),
                         mlpDown: linear("encoder/layer_\(i)/ffn/linear_1", out: d, in: 4 * d))
        }
        let decoder = (0..<dims.nTextLayers).map { i in
            DecoderBlock(selfAttentionNorm: norm(),
                         selfQKV: linear("decoder/layer_\(i)/self_attention/linear_0", out: 3 * d, in: d),
                         selfOut: linear("decoder/layer_\(i)/self_attention/linear_1", out: d, in: d),
                         crossAttentionNorm: norm(),
                         crossQuery: linear("decoder/layer_\(i)/attention/linear_0", out: d, in: d),
                         crossKV: linear("decoder/layer_\(i)/attention/linear_1", out: 2 * d, in: d),
                         crossOut: linear("decoder/layer_\(i)/attention/linear_2", out: d, in: d),
                         mlpNorm: norm(),
                         mlpUp: linear("decoder/layer_\(i)/ffn/linear_0", out: 4 * d, in: d),
                         mlpDown: linear("decoder/layer_\(i)/ffn/linear_1", out: d, in: 4 * d))
        }
        return WhisperWeights(
            dimensions: dims,
            conv1: linear("encoder/conv1", out: d, in: dims.nMels * 3),
            conv2: linear("encoder/conv2", out: d, in: d * 3),
            encoderPositions: values(dims.nAudioCtx * d, scale: 0.5),
            encoderBlocks: encoder,
            encoderNorm: norm(),
            tokenEmbedding: linear("decoder/embeddings", out: dims.nVocab, in: d, bias: false),
            decoderPositions: values(dims.nTextCtx * d, scale: 0.5),
            decoderBlocks: decoder,
            decoderNorm: norm())
    }

    /// Runs `weights` on a fixed random mel window and a few decoder steps (a batch of
    /// two sequences); returns the encoder output followed by every step's logits.
    public static func run(_ weights: WhisperWeights, seed: UInt64 = 99) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        let dims = weights.dimensions
        let mel = rng.floats(dims.nMels * 2 * dims.nAudioCtx, scale: 1)
        let network = WhisperNetwork(weights: weights, threads: 2)
        let audio = network.encode(mel: mel)
        var out = audio.values
        let session = network.makeDecoderSession(audio: audio)
        session.reorder([0, 0])
        out += session.step([[1, 2, 3], [4, 5, 6]])
        out += session.step([[7], [dims.nVocab - 1]])
        return out
    }
}
