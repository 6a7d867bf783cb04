/// Layer-norm parameters `[width]`.
public struct LayerNormWeights: Sendable {
    /// Scale.
    public let gamma: [Float]
    /// Shift.
    public let beta: [Float]

    /// Creates norm parameters; both arrays have the layer's width.
    public init(gamma: [Float], beta: [Float]) {
        precondition(gamma.count == beta.count)
        self.gamma = gamma
        self.beta = beta
    }
}

/// One pre-LN encoder block: self-attention then MLP, each with a residual.
public struct EncoderBlock: Sendable {
    /// Norm before self-attention.
    public let attentionNorm: LayerNormWeights
    /// Fused query/key/value projection `[3d, d]`.
    public let qkv: Linear
    /// Attention output projection `[d, d]`.
    public let attentionOut: Linear
    /// Norm before the MLP.
    public let mlpNorm: LayerNormWeights
    /// MLP up projection `[4d, d]`.
    public let mlpUp: Linear
    /// MLP down projection `[d, 4d]`.
    public let mlpDown: Linear

    /// Assembles a block from its parts.
    public init(attentionNorm: LayerNormWeights, qkv: Linear, attentionOut: Linear,
                mlpNorm: LayerNormWeights, mlpUp: Linear, mlpDown: Linear) {
        self.attentionNorm = attentionNorm
        self.qkv = qkv
        self.attentionOut = attentionOut
        self.mlpNorm = mlpNorm
        self.mlpUp = mlpUp
        self.mlpDown = mlpDown
    }
}

/// One pre-LN decoder block: causal self-attention, cross-attention, MLP.
public struct DecoderBlock: Sendable {
    /// Norm before self-attention.
    public let selfAttentionNorm: LayerNormWeights
    /// Fused query/key/value projection `[3d, d]`.
    public let selfQKV: Linear
    /// Self-attention output projection `[d, d]`.
    public let selfOut: Linear
    /// Norm before cross-attention.
    public let crossAttentionNorm: LayerNormWeights
    /// Cross-attention query projection `[d, d]`.
    public let crossQuery: Linear
    /// Cross-attention fused key/value projection of the encoder output `[2d, d]`.
    public let crossKV: Linear
    /// Cross-attention output projection `[d, d]`.
    public let crossOut: Linear
    /// Norm before the MLP.
    public let mlpNorm: LayerNormWeights
    /// MLP up projection `[4d, d]`.
    public let mlpUp: Linear
    /// MLP down projection `[d, 4d]`.
    public let mlpDown: Linear

    /// Assembles a block from its parts.
    public init(selfAttentionNorm: LayerNormWeights, selfQKV: Linear, selfOut: Linear,
                crossAttentionNorm: LayerNormWeights, crossQuery: Linear, crossKV: Linear, crossOut: Linear,
                mlpNorm: LayerNormWeights, mlpUp: Linear, mlpDown: Linear) {
        self.selfAttentionNorm = selfAttentionNorm
        self.selfQKV = selfQKV
        self.selfOut = selfOut
        self.crossAttentionNorm = crossAttentionNorm
        self.crossQuery = crossQuery
        self.crossKV = crossKV
        self.crossOut = crossOut
        self.mlpNorm = mlpNorm
        self.mlpUp = mlpUp
        self.mlpDown = mlpDown
    }
}

/// All weights of a Whisper network, immutable once built, shared by every request.
/// Built from a CTranslate2 file, or from another `WhisperWeights` with some layers replaced.
public final class WhisperWeights: @unchecked Sendable {
    /// Sizes.
    public let dimensions: ModelDimensions
    /// First convolution as a linear map over im2col rows: `[d, nMels * 3]`.
    public let conv1: Linear
    /// Second convolution (stride 2): `[d, d * 3]`.
    public let conv2: Linear
    /// Sinusoidal encoder positions `[nAudioCtx, d]`.
    public let encoderPositions: [Float]
    /// Encoder blocks.
    public let encoderBlocks: [EncoderBlock]
    /// Final encoder norm.
    public let encoderNorm: LayerNormWeights
    /// Token embedding `[nVocab, d]`, also the output projection (tied).
    public let tokenEmbedding: Linear
    /// Learned decoder positions `[nTextCtx, d]`.
    public let decoderPositions: [Float]
    /// Decoder blocks.
    public let decoderBlocks: [DecoderBlock]
    /// Final decoder norm.
    public let decoderNorm: LayerNormWeights

    /// Every quantizable layer, in network order (convolutions, encoder, decoder, embedding).
    public var linearLayers: [Linear] {
        var all = [conv1, conv2]
        for b in encoderBlocks { all += [b.qkv, b.attentionOut, b.mlpUp, b.mlpDown] }
        for b in decoderBlocks {
            all += [b.selfQKV, b.selfOut, b.crossQuery, b.crossKV, b.crossOut, b.mlpUp, b.mlpDown]
        }
        all.append(tokenEmbedding)
        return all
    }

    /// Whether the layer called `name` (one of `linearLayers`) is the decoder's: its blocks and the token embedding.
    /// The others are the encoder's.
    public static func isDecoderLayer(_ name: String) -> Bool { name.hasPrefix("decoder/") }

    /// Takes every layer's matrix out of the resident set where it is a mapped file's
    /// (`WeightMatrix.releaseResidentPages`; read again from the page cache when next used): for a model
    /// that waits between uses beside the one in service, such as a candidate in shadow.
    public func releaseResidentPages() {
        for layer in linearLayers { layer.weight.releaseResidentPages() }
    }

    /// Bytes held by all weights, biases, norms and position tables.
    public var byteSize: Int {
        let floatBytes = MemoryLayout<Float>.size
        var total = (encoderPositions.count + decoderPositions.count) * floatBytes
        for layer in linearLayers { total += layer.weight.byteSize + (layer.bias?.count ?? 0) * floatBytes }
        var norms = [encoderNorm, decoderNorm]
        for b in encoderBlocks { norms += [b.attentionNorm, b.mlpNorm] }
        for b in decoderBlocks { norms += [b.selfAttentionNorm, b.crossAttentionNorm, b.mlpNorm] }
        for n in norms { total += (n.gamma.count + n.beta.count) * floatBytes }
        return total
    }

    /// Bytes the weights take with every linear layer's matrix as float32: `byteSize` of the float
    /// network, whatever form its matrices are held in (a mapped `HalfMatrix` holds two bytes a weight).
    public var floatByteSize: Int {
        byteSize + linearLayers.reduce(0) { $0 + $1.outFeatures * $1.inFeatures * MemoryLayout<Float>.size - $1.weight.byteSize }
    }

    /// Assembles weights from parts (tests and the quantizer build networks this way).
    public init(dimensions: ModelDimensions, conv1: Linear, conv2: Linear, encoderPositions: [Float],
         encoderBlocks: [EncoderBlock], encoderNorm: LayerNormWeights, tokenEmbedding: Linear,
         decoderPositions: [Float], decoderBlocks: [DecoderBlock], decoderNorm: LayerNormWeights) {
        self.dimensions = dimensions
        self.conv1 = conv1
        self.conv2 = conv2
        self.encoderPositions = encoderPositions
        self.encoderBlocks = encoderBlocks
        self.encoderNorm = encoderNorm
        self.tokenEmbedding = tokenEmbedding
        self.decoderPositions = decoderPositions
        self.decoderBlocks = decoderBlocks
        self.decoderNorm = decoderNorm
    }

    /// A copy in which each layer named in `replacements` (see `linearLayers` for the
    /// names) gets the given weights; the other layers are shared with this one.
    public func replacing(_ replacements: [String: any WeightMatrix]) -> WhisperWeights {
        func swap(_ l: Linear) -> Linear { replacements[l.name].map { l.replacingWeight($0) } ?? l }
        return WhisperWeights(
            dimensions: dimensions, conv1: swap(conv1), conv2: swap(conv2),
            encoderPositions: encoderPositions,
            encoderBlocks: encoderBlocks.map {
                EncoderBlock(attentionNorm: $0.attentionNorm, qkv: swap($0.qkv), attentionOut: swap($0.attentionOut),
                             mlpNorm: $0.mlpNorm, mlpUp: swap($0.mlpUp), mlpDown: swap($0.mlpDown))
            },
            encoderNorm: encoderNorm, tokenEmbedding: swap(tokenEmbedding),
            decoderPositions: decoderPositions,
            decoderBlocks: decoderBlocks.map {
                DecoderBlock(selfAttentionNorm: $0.selfAttentionNorm, selfQKV: swap($0.selfQKV),
                             selfOut: swap($0.selfOut), crossAttentionNorm: $0.crossAttentionNorm,
                             crossQuery: swap($0.crossQuery), crossKV: swap($0.crossKV),
                             crossOut: swap($0.crossOut), mlpNorm: $0.mlpNorm,
                             mlpUp: swap($0.mlpUp), mlpDown: swap($0.mlpDown))
            },
            decoderNorm: decoderNorm)
    }

    /// These weights with `other`'s position tables wherever they hold the same values: a network read again from
    /// the file of one that is resident (the model in service) then keeps no second copy of them, since arrays
    /// share their storage (2.9 MB for tiny.en, the largest tensors a quantized model keeps in float32).
    public func sharingPositions(with other: WhisperWeights) -> WhisperWeights {
        let encoder = other.encoderPositions == encoderPositions ? other.encoderPositions : encoderPositions
        let decoder = other.decoderPositions == decoderPositions ? other.decoderPositions : decoderPositions
        return WhisperWeights(dimensions: dimensions, conv1: conv1, conv2: conv2, encoderPositions: encoder,
                              encoderBlocks: encoderBlocks, encoderNorm: encoderNorm, tokenEmbedding: tokenEmbedding,
                              decoderPositions: decoder, decoderBlocks: decoderBlocks, decoderNorm: decoderNorm)
    }

    /// Reads a Whisper network from a parsed CTranslate2 file, checking every shape.
    /// Reads the network out of `file`. With `mappingHalves`, every float16 weight matrix stays in
    /// the file's mapping as a `HalfMatrix` instead of being widened into a float32 copy (norms,
    /// biases and position tables are still copied: they are small).
    public convenience init(file: ModelFile, mappingHalves: Bool = false) throws {
        let embedding = try file.variable("decoder/embeddings/weight")
        guard embedding.shape.count == 2 else {
            throw ModelFileError.unexpectedShape(path: file.path, variable: embedding.name,
                                                 shape: embedding.shape, expected: [-1, -1])
        }
        let nVocab = embedding.shape[0], d = embedding.shape[1]
        let conv1Var = try file.variable("encoder/conv1/weight")
        guard conv1Var.shape.count == 3, conv1Var.shape[0] == d, conv1Var.shape[2] == 3 else {
            throw ModelFileError.unexpectedShape(path: file.path, variable: conv1Var.name,
                                                 shape: conv1Var.shape, expected: [d, 80, 3])
        }
        let nMels = conv1Var.shape[1]
        let encPos = try file.variable("encoder/position_encodings/encodings")
        let decPos = try file.variable("decoder/position_encodings/encodings")
        let nAudioCtx = encPos.shape.first ?? 0, nTextCtx = decPos.shape.first ?? 0
        let nHeads = try file.variable("encoder/num_heads").intValue()
        guard nHeads > 0, d % nHeads == 0 else {
            throw ModelFileError.badConfig(path: file.path, reason: "encoder/num_heads \(nHeads) does not divide width \(d)")
        }
        func countLayers(_ prefix: String) -> Int {
            var n = 0
            while file.variables["\(prefix)/layer_\(n)/ffn/linear_0/weight"] != nil { n += 1 }
            return n
        }
        let dims = ModelDimensions(nMels: nMels, nAudioCtx: nAudioCtx, nState: d, nHeads: nHeads,
                                   nAudioLayers: countLayers("encoder"), nTextLayers: countLayers("decoder"),
                                   nTextCtx: nTextCtx, nVocab: nVocab)
        let loader = WeightLoader(file: file, width: d, mappingHalves: mappingHalves)
        let encoderBlocks = try (0..<dims.nAudioLayers).map { i -> EncoderBlock in
            let p = "encoder/layer_\(i)"
            return EncoderBlock(
                attentionNorm: try loader.norm("\(p)/self_attention/layer_norm"),
                qkv: try loader.linear("\(p)/self_attention/linear_0", out: 3 * d, in: d),
                attentionOut: try loader.linear("\(p)/self_attention/linear_1", out: d, in: d),
                mlpNorm: try loader.norm("\(p)/ffn/layer_norm"),
                mlpUp: try loader.linear("\(p)/ffn/linear_0", out: 4 * d, in: d),
                mlpDown: try loader.linear("\(p)/ffn/linear_1", out: d, in: 4 * d))
        }
        let decoderBlocks = try (0..<dims.nTextLayers).map { i -> DecoderBlock in
            let p = "decoder/layer_\(i)"
            return DecoderBlock(
                selfAttentionNorm: try loader.norm("\(p)/self_attention/layer_norm"),
                selfQKV: try loader.linear("\(p)/self_attention/linear_0", out: 3 * d, in: d),
                selfOut: try loader.linear("\(p)/self_attention/linear_1", out: d, in: d),
                crossAttentionNorm: try loader.norm("\(p)/attention/layer_norm"),
                crossQuery: try loader.linear("\(p)/attention/linear_0", out: d, in: d),
                crossKV: try loader.linear("\(p)/attention/linear_1", out: 2 * d, in: d),
                crossOut: try loader.linear("\(p)/attention/linear_2", out: d, in: d),
                mlpNorm: try loader.norm("\(p)/ffn/layer_norm"),
                mlpUp: try loader.linear("\(p)/ffn/linear_0", out: 4 * d, in: d),
                mlpDown: try loader.linear("\(p)/ffn/linear_1", out: d, in: 4 * d))
        }
        self.init(
            dimensions: dims,
            conv1: try loader.linear("encoder/conv1", out: d, in: nMels * 3, storedShape: [d, nMels, 3]),
            conv2: try loader.linear("encoder/conv2", out: d, in: d * 3, storedShape: [d, d, 3]),
            encoderPositions: try file.floats(encPos.name, shape: [nAudioCtx, d]),
            encoderBlocks: encoderBlocks,
            encoderNorm: try loader.norm("encoder/layer_norm"),
            tokenEmbedding: try loader.linear("decoder/embeddings", out: nVocab, in: d),
            decoderPositions: try file.floats(decPos.name, shape: [nTextCtx, d]),
            decoderBlocks: decoderBlocks,
            decoderNorm: try loader.norm("decoder/layer_norm"))
    }
}

/// Reads named weights of the expected shapes out of a model file.
private struct WeightLoader {
    let file: ModelFile
    let width: Int
    let mappingHalves: Bool

    func norm(_ prefix: String) throws -> LayerNormWeights {
        LayerNormWeights(gamma: try file.floats("\(prefix)/gamma", shape: [width]),
                         beta: try file.floats("\(prefix)/beta", shape: [width]))
    }

    func linear(_ prefix: String, out: Int, in inputs: Int, storedShape: [Int]? = nil) throws -> Linear {
        let name = "\(prefix)/weight", shape = storedShape ?? [out, inputs]
        let bias = try file.variables["\(prefix)/bias"].map { _ in try file.floats("\(prefix)/bias", shape: [out]) }
        let stored = try file.variable(name)
        if mappingHalves, stored.dtype == .float16, stored.shape == shape {
            return Linear(name: prefix, weight: HalfMatrix(variable: stored, outFeatures: out, inFeatures: inputs), bias: bias)
        }
        let values = try file.floats(name, shape: shape)
        return Linear(name: prefix, weight: FloatMatrix(outFeatures: out, inFeatures: inputs, values: values), bias: bias)
    }
}
