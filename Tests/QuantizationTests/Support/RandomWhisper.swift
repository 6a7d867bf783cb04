import WhisperEngine

/// A small deterministic random-number generator (SplitMix64) so tests are repeatable.
/// Shared by every test file of QuantizationTests.
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

    /// `n` uniform values in `-scale...scale`.
    mutating func floats(_ n: Int, scale: Float) -> [Float] {
        (0..<n).map { _ in Float.random(in: -scale...scale, using: &self) }
    }
}

/// Builds a Whisper network of any size with random weights (unit tests only); adapted
/// from Tests/WhisperEngineTests/Support/RandomWhisper.swift (test targets cannot import
/// each other).
enum RandomWhisper {
    /// Small dimensions that still exercise every layer: a width that is not a multiple of
    /// 64 (96), conv1 input 3·nMels = 30 (less than one 32-block), odd vocabulary.
    static let smallDimensions = ModelDimensions(nMels: 10, nAudioCtx: 12, nState: 96, nHeads: 4,
                                                 nAudioLayers: 2, nTextLayers: 2, nTextCtx: 16, nVocab: 101)

    static func make(_ dims: ModelDimensions = smallDimensions, rng: inout SeededGenerator) -> WhisperWeights {
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
    static func run(_ weights: WhisperWeights, seed: UInt64 = 99) -> [Float] {
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

/// Largest |a[i] - b[i]| (arrays of equal length).
func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "maxAbsDifference: lengths \(a.count) and \(b.count)")
    var m: Float = 0
    for i in a.indices { m = max(m, abs(a[i] - b[i])) }
    return m
}

/// `y[m, n] = x[m, k] · W[n, k]ᵀ` in Double, the reference for product tests.
func referenceProduct(x: [Float], rows m: Int, w: [Float], out n: Int, in k: Int) -> [Float] {
    var y = [Float](repeating: 0, count: m * n)
    for i in 0..<m {
        for j in 0..<n {
            var s = 0.0
            for c in 0..<k { s += Double(x[i * k + c]) * Double(w[j * k + c]) }
            y[i * n + j] = Float(s)
        }
    }
    return y
}
