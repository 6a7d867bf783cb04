import WhisperEngine

/// A small deterministic random-number generator (SplitMix64) so tests are repeatable.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Builds a Whisper network of any size with random weights (unit tests only).
enum RandomWhisper {
    static func make(_ dims: ModelDimensions, rng: inout SeededGenerator) -> WhisperWeights {
        let d = dims.nState
        func values(_ n: Int, scale: Float) -> [Float] { (0..<n).map { _ in Float.random(in: -scale...scale, using: &rng) } }
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
}
