/// The network bound to one caller: shared immutable weights plus this caller's
/// settings (threads, the optional activation observer). Cheap to create per request;
/// the daemon swaps `weights` for a requantized set by making a new one. Each pass gives this
/// network's `threads` to every product and split it runs: callers never share a thread count.
public final class WhisperNetwork: SpeechModel {
    /// The weights (shared, immutable).
    public let weights: WhisperWeights
    /// Threads this caller's passes use: products, row splits and attention heads.
    public let threads: Int
    /// Sees every linear layer's input and output, when set.
    public let observer: ActivationObserver?
    /// Where the silent window of these weights is kept (`extendedWithSilence`): shared with every
    /// network over the same model (`WhisperModel.silentWindows`), or this network's own.
    public let silentWindows: SilentWindowStore

    /// Binds `weights` for use with `threads` threads, an optional observer and the store of the
    /// weights' silent window (a new, empty one by default).
    public init(weights: WhisperWeights, threads: Int = 2, observer: ActivationObserver? = nil,
                silentWindows: SilentWindowStore = SilentWindowStore()) {
        self.weights = weights
        self.threads = max(1, threads)
        OpenBLASThreads.keepOnCallingThread()
        self.observer = observer
        self.silentWindows = silentWindows
    }

    /// Sizes of the network, from its weights.
    public var dimensions: ModelDimensions { weights.dimensions }

    /// Encoder: conv1 + GELU, conv2 (stride 2) + GELU, + positions, pre-LN blocks, final LN.
    /// `mel` is `[nMels, 2 * frames]` row-major for any `frames` in `1...nAudioCtx` (a whole 30 s
    /// window is 3000 mel frames, 1500 positions); the result is `[frames, d]`. A shorter input
    /// is encoded as its own window: the first `frames` positional embeddings, and attention over
    /// those positions only (the short window of `ShortWindowPolicy`).
    public func encode(mel: [Float]) -> EncodedAudio {
        encode(mel: mel, stopping: nil)!  // nil only when cancelled, and there is no cancellation here
    }

    /// `encode(mel:)` that stops at its next step once `cancellation` is set (throwing `DecodingError.cancelled`):
    /// before each block, attention head and block of MLP rows, so a job that gives way to another stops within
    /// milliseconds, not after a whole encoder pass.
    public func encode(mel: [Float], cancellation: Cancellation?) throws -> EncodedAudio {
        guard let audio = encode(mel: mel, stopping: cancellation) else { throw DecodingError.cancelled }
        return audio
    }

    private func encode(mel: [Float], stopping cancellation: Cancellation?) -> EncodedAudio? {
        let dims = weights.dimensions
        let d = dims.nState, nMels = dims.nMels
        let inFrames = mel.count / nMels           // 3000 for a whole window
        let frames = inFrames / 2                  // 1500 for a whole window
        precondition(mel.count == nMels * inFrames && inFrames % 2 == 0 && frames >= 1 && frames <= dims.nAudioCtx,
                     "encode: mel must be [\(nMels), 2 * frames] with frames in 1...\(dims.nAudioCtx), got \(mel.count) values")

        // conv1 (kernel 3, padding 1, stride 1) as a product over im2col rows.
        // cols1: [inFrames, nMels * 3], cols1[t, c*3 + k] = mel[c, t + k - 1] (0 outside).
        var cols1 = [Float](repeating: 0, count: inFrames * nMels * 3)
        mel.withUnsafeBufferPointer { m in
            cols1.withUnsafeMutableBufferPointer { c in
                for t in 0..<inFrames {
                    let row = c.baseAddress! + t * nMels * 3
                    for ch in 0..<nMels {
                        for k in 0..<3 {
                            let src = t + k - 1
                            if src >= 0 && src < inFrames { row[ch * 3 + k] = m[ch * inFrames + src] }
                        }
                    }
                }
            }
        }
        var h1 = [Float](repeating: 0, count: inFrames * d)        // [inFrames, d]
        cols1.withUnsafeBufferPointer { c in
            h1.withUnsafeMutableBufferPointer { h in
                weights.conv1.forward(c.baseAddress!, rows: inFrames, into: h.baseAddress!, threads: threads,
                                      observer: observer)
                gelu(h.baseAddress!, rows: inFrames, width: d)
            }
        }
        cols1 = []

        // conv2 (kernel 3, padding 1, stride 2): cols2[t, c*3 + k] = h1[2t + k - 1, c].
        var cols2 = [Float](repeating: 0, count: frames * d * 3)    // [frames, d * 3]
        h1.withUnsafeBufferPointer { h in
            cols2.withUnsafeMutableBufferPointer { c in
                for t in 0..<frames {
                    let row = c.baseAddress! + t * d * 3
                    for k in 0..<3 {
                        let src = 2 * t + k - 1
                        guard src >= 0 && src < inFrames else { continue }
                        let hr = h.baseAddress! + src * d
                        for ch in 0..<d { row[ch * 3 + k] = hr[ch] }
                    }
                }
            }
        }
        h1 = []
        var x = [Float](repeating: 0, count: frames * d)             // [frames, d]
        cols2.withUnsafeBufferPointer { c in
            x.withUnsafeMutableBufferPointer { xb in
                weights.conv2.forward(c.baseAddress!, rows: frames, into: xb.baseAddress!, threads: threads,
                                      observer: observer)
                gelu(xb.baseAddress!, rows: frames, width: d)
                // The first `frames` rows of the positional embedding [nAudioCtx, d].
                weights.encoderPositions.withUnsafeBufferPointer { p in
                    Kernels.add(xb.baseAddress!, p.baseAddress!, count: frames * d)
                }
            }
        }
        cols2 = []

        var scratch = EncoderScratch(frames: frames, width: d, threads: threads)
        for block in weights.encoderBlocks {
            guard encoderBlock(block, x: &x, frames: frames, scratch: &scratch, stopping: cancellation) else { return nil }
        }
        // The final norm in place (each row is read whole before it is written): no `[frames, d]` more beside the
        // scratch at the end of every window.
        x.withUnsafeMutableBufferPointer { xb in
            layerNorm(xb.baseAddress!, rows: frames, width: d, weights.encoderNorm, into: xb.baseAddress!)
        }
        return EncodedAudio(frames: frames, width: d, values: x)
    }

    /// Layer norm of `rows` rows, split across the threads.
    private func layerNorm(_ x: UnsafePointer<Float>, rows: Int, width: Int, _ norm: LayerNormWeights,
                           into out: UnsafeMutablePointer<Float>) {
        Kernels.parallelRows(rows, threads: threads) { r in
            Kernels.layerNorm(x + r.lowerBound * width, rows: r.count, cols: width, gamma: norm.gamma,
                              beta: norm.beta, into: out + r.lowerBound * width)
        }
    }

    /// GELU of `rows` rows in place, split across the threads.
    private func gelu(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        Kernels.parallelRows(rows, threads: threads) { r in
            Kernels.gelu(x + r.lowerBound * width, count: r.count * width)
        }
    }

    /// x = x + SelfAttention(LN(x)); x = x + MLP(LN(x)) over `[frames, d]`; false when it stopped part-way because
    /// `cancellation` was set (checked before each head and each block of MLP rows: 12 steps per block of tiny.en over a
    /// 30 s window).
    private func encoderBlock(_ block: EncoderBlock, x: inout [Float], frames: Int, scratch: inout EncoderScratch,
                              stopping cancellation: Cancellation?) -> Bool {
        if cancellation?.isCancelled == true { return false }
        var stopped = false
        let d = weights.dimensions.nState
        let heads = weights.dimensions.nHeads
        let dh = d / heads
        let scale = 1 / Float(dh).squareRoot()
        x.withUnsafeMutableBufferPointer { xb in
            let x = xb.baseAddress!
            scratch.narrow.withUnsafeMutableBufferPointer { nb in
            scratch.wide.withUnsafeMutableBufferPointer { wb in
            scratch.hidden.withUnsafeMutableBufferPointer { hb in
                let narrow = nb.baseAddress!, wide = wb.baseAddress!, hidden = hb.baseAddress!
                // normed = narrow: [frames, d]
                layerNorm(x, rows: frames, width: d, block.attentionNorm, into: narrow)
                // qkv = wide: [frames, 3d]
                block.qkv.forward(narrow, rows: frames, into: wide, threads: threads, observer: observer)
                // Per head: S = Q_h K_hᵀ * scale  [frames, frames]; softmax; O_h = S V_h, a block of
                // `queryRows` queries at a time; each thread takes every `workers`-th block and has
                // its own `[queryRows, frames]` of scores. O goes to `narrow`, whose normed rows
                // the product above has used: [frames, d].
                let workers = min(threads, scratch.scoreBlocks), scores = scratch.scores
                let queryRows = EncoderScratch.queryRows
                let attn = narrow
                for h in 0..<heads {
                    if cancellation?.isCancelled == true {
                        stopped = true
                        return
                    }
                    let q = wide + h * dh, k = wide + d + h * dh, v = wide + 2 * d + h * dh
                    Kernels.parallelParts(workers) { worker in
                        let s = scores + worker * queryRows * frames
                        for r0 in stride(from: worker * queryRows, to: frames, by: workers * queryRows) {
                            let rows = min(queryRows, frames - r0)   // s: [rows, frames]
                            Kernels.gemmABt(m: rows, n: frames, k: dh, alpha: scale, a: q + r0 * 3 * d,
                                            lda: 3 * d, b: k, ldb: 3 * d, c: s, ldc: frames, threads: 1)
                            Kernels.softmaxRows(s, rows: rows, cols: frames, ld: frames)
                            Kernels.gemmAB(m: rows, n: dh, k: frames, a: s, lda: frames,
                                           b: v, ldb: 3 * d, c: attn + r0 * d + h * dh, ldc: d)
                        }
                    }
                }
                // projected = wide's first [frames, d], now that Q, K and V are used.
                block.attentionOut.forward(attn, rows: frames, into: wide, threads: threads, observer: observer)
                Kernels.add(x, wide, count: frames * d)

                layerNorm(x, rows: frames, width: d, block.mlpNorm, into: narrow)
                // `hiddenRows` rows at a time, so that the [rows, 4d] hidden activations stay small; each
                // block's output goes to wide's rows r0 ..< r0 + rows and is added to x.
                for r0 in stride(from: 0, to: frames, by: EncoderScratch.hiddenRows) {
                    if cancellation?.isCancelled == true {
                        stopped = true
                        return
                    }
                    let rows = min(EncoderScratch.hiddenRows, frames - r0)
                    // [rows, 4d]
                    block.mlpUp.forward(narrow + r0 * d, rows: rows, into: hidden, threads: threads, observer: observer)
                    gelu(hidden, rows: rows, width: 4 * d)
                    block.mlpDown.forward(hidden, rows: rows, into: wide + r0 * d, threads: threads,
                                          observer: observer)
                }
                Kernels.add(x, wide, count: frames * d)
            }}}
        }
        return !stopped
    }
}

/// Buffers reused across encoder blocks (the encoder's scratch state), each holding in turn what
/// the block no longer needs: a 30 s window's scratch is 11.6 MB for tiny.en (with separate buffers for
/// the attention's output and the projections' it was 16.2 MB). The attention scores and the MLP's
/// hidden activations are made in row blocks: whole, a 30 s window's `[1500, 1500]` scores of one
/// head and `[1500, 4d]` hidden rows were 9 MB each, at the peak of every window.
private struct EncoderScratch {
    /// Queries whose scores one thread holds at a time.
    static let queryRows = 64
    /// Rows whose MLP hidden activations are held at a time.
    static let hiddenRows = 256

    /// `[frames, d]`: the normed input of the attention, then the heads' outputs, then the normed input of the MLP.
    var narrow: [Float]
    /// `[frames, 3d]`: the queries, keys and values, then (first `[frames, d]`) the projections' outputs.
    var wide: [Float]
    var hidden: [Float]      // [min(frames, hiddenRows), 4d]
    /// Blocks of `queryRows` queries, and so the most threads the scores can use.
    let scoreBlocks: Int
    let scores: UnsafeMutablePointer<Float>   // [threads, queryRows, frames]: a block of one head per thread
    private let scoreStorage: ScoreStorage

    init(frames: Int, width d: Int, threads: Int) {
        narrow = [Float](repeating: 0, count: frames * d)
        wide = [Float](repeating: 0, count: frames * 3 * d)
        hidden = [Float](repeating: 0, count: min(frames, Self.hiddenRows) * 4 * d)
        scoreBlocks = (frames + Self.queryRows - 1) / Self.queryRows
        scoreStorage = ScoreStorage(count: max(1, min(threads, scoreBlocks)) * Self.queryRows * frames)
        scores = scoreStorage.pointer
    }
}

/// Owns the score matrix so the struct above can hand out a stable pointer.
private final class ScoreStorage {
    let pointer: UnsafeMutablePointer<Float>
    init(count: Int) {
        pointer = .allocate(capacity: count)
        pointer.initialize(repeating: 0, count: count)
    }
    deinit { pointer.deallocate() }
}
