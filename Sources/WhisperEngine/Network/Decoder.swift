import CKernels

extension WhisperNetwork {
    /// Starts a decoder over `audio`: computes each block's cross-attention keys and
    /// values once and returns a session with one empty sequence. With `audio.silentTail` the
    /// session attends past `audio.frames` to the silent window's keys and values.
    public func makeDecoderSession(audio: EncodedAudio) -> DecoderSession {
        precondition(audio.width == weights.dimensions.nState,
                     "decoder: encoder output width \(audio.width) != \(weights.dimensions.nState)")
        return WhisperDecoderSession(network: self, audioFrames: audio.frames, crossKV: crossKeysValues(audio),
                                     tail: audio.silentTail.flatMap { $0.frames > audio.frames ? $0 : nil })
    }

    /// Each decoder block's cross-attention keys and values of `audio`'s rows, each `[heads, frames, dh]`, in half
    /// precision (IEEE bit patterns), as whisper.cpp keeps them: a whole window's are 9.2 MB for tiny.en instead of
    /// 18.4, and a decoding step reads half the bytes.
    func crossKeysValues(_ audio: EncodedAudio) -> [(keys: [UInt16], values: [UInt16])] {
        let d = weights.dimensions.nState, heads = weights.dimensions.nHeads, dh = d / heads
        let frames = audio.frames
        var blocks: [(keys: [UInt16], values: [UInt16])] = []
        forEachBlockCrossKeysValues(audio) { kv in
            // Each head's keys and values contiguous, [heads, frames, dh], rounded to half as they are
            // moved: every decoding step reads all of them, and a head's 1500 rows of 64 values strided
            // 2d apart cost a page (and a TLB entry) every few rows.
            var keys = [UInt16](repeating: 0, count: frames * d), values = keys
            keys.withUnsafeMutableBufferPointer { k in
                values.withUnsafeMutableBufferPointer { v in
                    for h in 0..<heads {
                        for f in 0..<frames {
                            let from = kv.baseAddress! + f * 2 * d + h * dh, to = (h * frames + f) * dh
                            mq_f32_to_f16(from, k.baseAddress! + to, dh)
                            mq_f32_to_f16(from + d, v.baseAddress! + to, dh)
                        }
                    }
                }
            }
            blocks.append((keys, values))
        }
        return blocks
    }

    /// Calls `body` with each decoder block's cross-attention keys and values of `audio`'s rows in float32,
    /// `[frames, 2d]` (each row's keys, then its values; valid during the call only): one block's projections are
    /// held at a time.
    func forEachBlockCrossKeysValues(_ audio: EncodedAudio, _ body: (UnsafeBufferPointer<Float>) -> Void) {
        let d = weights.dimensions.nState
        var kv = [Float](repeating: 0, count: audio.frames * 2 * d)   // [frames, 2d]: keys, then values
        for block in weights.decoderBlocks {
            audio.values.withUnsafeBufferPointer { a in
                kv.withUnsafeMutableBufferPointer { o in
                    block.crossKV.forward(a.baseAddress!, rows: audio.frames, into: o.baseAddress!, threads: threads,
                                          observer: observer)
                }
            }
            kv.withUnsafeBufferPointer { body($0) }
        }
    }
}

/// Decoder state for one window: the self-attention key/value cache of every sequence in
/// the batch and the cross-attention keys/values of the window.
final class WhisperDecoderSession: DecoderSession {
    private let network: WhisperNetwork
    private let audioFrames: Int
    /// Per block: the window's keys and values, each `[heads, audioFrames, dh]` in half precision;
    /// `audioFrames` is the encoded positions (1500 for a whole window, fewer for a short one).
    private let crossKV: [(keys: [UInt16], values: [UInt16])]
    /// A silent window whose positions `audioFrames ..< tail.frames` cross-attention reads after
    /// the window's own (`EncodedAudio.silentTail`); without it cross-attention reads `audioFrames` positions.
    private let tail: SilentWindow?
    /// Per block: `[batch, capacity, d]` keys and values of the positions seen so far (the
    /// arrays may hold more sequences than the batch after it shrank).
    private var selfK: [[Float]]
    private var selfV: [[Float]]
    /// Positions each sequence's cache holds: it doubles as the sequence grows, up to `nTextCtx`.
    /// Made for all 448 positions at once, beam 5's caches and their spares were 55 MB for tiny.en,
    /// where a command's few dozen tokens need a tenth of that.
    private var capacity: Int
    static let initialCapacity = 64
    /// The array `reorder` last replaced: each block's keys, then values, are written into it and
    /// swapped in, the array they replace becoming the spare for the next, so that beam search's
    /// reorder after every step allocates nothing (at beam 5 a fresh zeroed cache was 27 MB a step)
    /// and holds one spare array, not one per block's keys and values (3.4 MB less for tiny.en at beam
    /// 5 and 64 positions, 24 MB less at 448).
    private var spare: [Float] = []
    private(set) var batchSize = 1
    private(set) var length = 0

    init(network: WhisperNetwork, audioFrames: Int, crossKV: [(keys: [UInt16], values: [UInt16])], tail: SilentWindow?) {
        self.network = network
        self.audioFrames = audioFrames
        self.crossKV = crossKV
        self.tail = tail
        let dims = network.weights.dimensions
        capacity = min(dims.nTextCtx, Self.initialCapacity)
        selfK = Array(repeating: [Float](repeating: 0, count: capacity * dims.nState), count: dims.nTextLayers)
        selfV = selfK
    }

    func reorder(_ sources: [Int]) {
        let dims = network.weights.dimensions
        let perSequence = capacity * dims.nState
        let used = length * dims.nState
        for s in sources { precondition(s >= 0 && s < batchSize, "reorder: source \(s) out of range") }
        // Sequence i of the new cache continues sequence sources[i] of the old one.
        func rebuild(_ cache: inout [Float]) {
            if spare.count < sources.count * perSequence { spare = [Float](repeating: 0, count: sources.count * perSequence) }
            cache.withUnsafeBufferPointer { src in
                spare.withUnsafeMutableBufferPointer { dst in
                    for (i, s) in sources.enumerated() {
                        (dst.baseAddress! + i * perSequence).update(from: src.baseAddress! + s * perSequence, count: used)
                    }
                }
            }
            swap(&cache, &spare)
        }
        for l in 0..<dims.nTextLayers {
            rebuild(&selfK[l])
            rebuild(&selfV[l])
        }
        batchSize = sources.count
    }

    /// Grows every sequence's cache to hold `positions` (at least doubling, at most `nTextCtx`),
    /// keeping the positions seen so far; the spare is dropped (the next `reorder` makes it anew).
    private func reserve(_ positions: Int) {
        guard positions > capacity else { return }
        let d = network.weights.dimensions.nState
        let grown = min(network.weights.dimensions.nTextCtx, max(positions, 2 * capacity))
        func regrow(_ cache: inout [Float]) {
            var bigger = [Float](repeating: 0, count: batchSize * grown * d)
            cache.withUnsafeBufferPointer { src in
                bigger.withUnsafeMutableBufferPointer { dst in
                    for b in 0..<batchSize {
                        (dst.baseAddress! + b * grown * d).update(from: src.baseAddress! + b * capacity * d, count: length * d)
                    }
                }
            }
            cache = bigger
        }
        for l in selfK.indices {
            regrow(&selfK[l])
            regrow(&selfV[l])
        }
        spare = []
        capacity = grown
    }

    func step(_ tokens: [[Int]]) -> [Float] {
        let weights = network.weights
        let observer = network.observer, threads = network.threads
        let dims = weights.dimensions
        let d = dims.nState, heads = dims.nHeads, dh = d / heads, ctx = dims.nTextCtx
        let batch = tokens.count
        precondition(batch == batchSize, "step: \(batch) rows for a batch of \(batchSize)")
        let n = tokens[0].count
        precondition(n > 0 && tokens.allSatisfy { $0.count == n }, "step: rows must have the same token count")
        precondition(length + n <= ctx, "step: sequence longer than the decoder context \(ctx)")
        let rows = batch * n
        let total = length + n
        let scale = 1 / Float(dh).squareRoot()
        reserve(total)
        let capacity = self.capacity

        // x[b*n + j] = embedding[tokens[b][j]] + positions[length + j]     [rows, d]
        var x = [Float](repeating: 0, count: rows * d)
        x.withUnsafeMutableBufferPointer { xb in
            weights.decoderPositions.withUnsafeBufferPointer { pos in
                for b in 0..<batch {
                    for j in 0..<n {
                        let row = xb.baseAddress! + (b * n + j) * d
                        weights.tokenEmbedding.weight.copyRow(tokens[b][j], into: row)
                        Kernels.add(row, pos.baseAddress! + (length + j) * d, count: d)
                    }
                }
            }
        }

        var normed = [Float](repeating: 0, count: rows * d)        // [rows, d]
        var qkv = [Float](repeating: 0, count: rows * 3 * d)       // [rows, 3d]
        var attn = [Float](repeating: 0, count: rows * d)          // [rows, d]
        var projected = [Float](repeating: 0, count: rows * d)     // [rows, d]
        var hidden = [Float](repeating: 0, count: rows * 4 * d)    // [rows, 4d]
        // Cross-attention positions: the window's own, then the silent tail's.
        let tailFrames = tail.map { $0.frames - audioFrames } ?? 0, window = audioFrames + tailFrames
        // Per head [rows, max(total, window)]: cross-attention runs its heads in parallel.
        let scoreStride = rows * max(total, window)
        var scores = [Float](repeating: 0, count: heads * scoreStride)

        for (l, block) in weights.decoderBlocks.enumerated() {
            x.withUnsafeMutableBufferPointer { xb in
            normed.withUnsafeMutableBufferPointer { nb in
            qkv.withUnsafeMutableBufferPointer { qb in
            attn.withUnsafeMutableBufferPointer { ab in
            projected.withUnsafeMutableBufferPointer { pb in
            hidden.withUnsafeMutableBufferPointer { hb in
            scores.withUnsafeMutableBufferPointer { sb in
            selfK[l].withUnsafeMutableBufferPointer { kb in
            selfV[l].withUnsafeMutableBufferPointer { vb in
            crossKV[l].keys.withUnsafeBufferPointer { ckb in
            crossKV[l].values.withUnsafeBufferPointer { cvb in
                let x = xb.baseAddress!, normed = nb.baseAddress!, qkv = qb.baseAddress!
                let attn = ab.baseAddress!, projected = pb.baseAddress!, hidden = hb.baseAddress!
                let s = sb.baseAddress!, kCache = kb.baseAddress!, vCache = vb.baseAddress!
                let crossKeys = ckb.baseAddress!, crossValues = cvb.baseAddress!

                // Causal self-attention with the cache.
                Kernels.layerNorm(x, rows: rows, cols: d, gamma: block.selfAttentionNorm.gamma,
                                  beta: block.selfAttentionNorm.beta, into: normed)
                block.selfQKV.forward(normed, rows: rows, into: qkv, threads: threads, observer: observer)
                for b in 0..<batch {
                    for j in 0..<n {
                        let src = qkv + (b * n + j) * 3 * d
                        let slot = (b * capacity + length + j) * d
                        (kCache + slot).update(from: src + d, count: d)
                        (vCache + slot).update(from: src + 2 * d, count: d)
                    }
                }
                for b in 0..<batch {
                    let keys = kCache + b * capacity * d, values = vCache + b * capacity * d
                    for h in 0..<heads {
                        // s[n, total] = q_h · K_hᵀ * scale, then mask the future.
                        Kernels.gemmABt(m: n, n: total, k: dh, alpha: scale, a: qkv + b * n * 3 * d + h * dh,
                                        lda: 3 * d, b: keys + h * dh, ldb: d, c: s, ldc: total, threads: threads)
                        for i in 0..<n where length + i + 1 < total {
                            for t in (length + i + 1)..<total { s[i * total + t] = -.infinity }
                        }
                        Kernels.softmaxRows(s, rows: n, cols: total, ld: total)
                        Kernels.gemmAB(m: n, n: dh, k: total, a: s, lda: total, b: values + h * dh, ldb: d,
                                       c: attn + b * n * d + h * dh, ldc: d)
                    }
                }
                block.selfOut.forward(attn, rows: rows, into: projected, threads: threads, observer: observer)
                Kernels.add(x, projected, count: rows * d)

                // Cross-attention over the window (same keys for every sequence).
                Kernels.layerNorm(x, rows: rows, cols: d, gamma: block.crossAttentionNorm.gamma,
                                  beta: block.crossAttentionNorm.beta, into: normed)
                // q: [rows, d]
                block.crossQuery.forward(normed, rows: rows, into: qkv, threads: threads, observer: observer)
                // Heads split across the threads: each reads its [audioFrames, dh] keys and values in half
                // precision (then the silent tail's [tailFrames, dh], rows audioFrames ..< window of the silent
                // window's [heads, window, dh], in int8 with a scale per row), and writes its own columns of attn.
                func crossAttention(tail: (keys: SilentWindow.Int8Rows, values: SilentWindow.Int8Rows)?) {
                    Kernels.parallelRows(heads, threads: threads) { hr in
                        for h in hr {
                            let sh = s + h * scoreStride   // [rows, window]
                            let headKeys = crossKeys + h * audioFrames * dh, headValues = crossValues + h * audioFrames * dh
                            Kernels.gemmFewRowsABtHalf(m: rows, n: audioFrames, k: dh, alpha: scale, a: qkv + h * dh,
                                                       lda: d, b: headKeys, ldb: dh, c: sh, ldc: window)
                            let tailRow = h * window + audioFrames   // the tail's first row of this head
                            if let tail {
                                tail.keys.codes.withUnsafeBufferPointer { codes in
                                    tail.keys.scales.withUnsafeBufferPointer { scales in
                                        Kernels.gemmFewRowsABtInt8(m: rows, n: tailFrames, k: dh, alpha: scale, a: qkv + h * dh,
                                                                   lda: d, b: codes.baseAddress! + tailRow * dh,
                                                                   bScales: scales.baseAddress! + tailRow, ldb: dh,
                                                                   c: sh + audioFrames, ldc: window)
                                    }
                                }
                            }
                            Kernels.softmaxRows(sh, rows: rows, cols: window, ld: window)
                            for r in 0..<rows { (attn + r * d + h * dh).update(repeating: 0, count: dh) }
                            Kernels.gemmFewRowsABHalf(m: rows, n: dh, k: audioFrames, a: sh, lda: window,
                                                      b: headValues, ldb: dh, c: attn + h * dh, ldc: d)
                            if let tail {
                                tail.values.codes.withUnsafeBufferPointer { codes in
                                    tail.values.scales.withUnsafeBufferPointer { scales in
                                        Kernels.gemmFewRowsABInt8(m: rows, n: dh, k: tailFrames, a: sh + audioFrames,
                                                                  lda: window, b: codes.baseAddress! + tailRow * dh,
                                                                  bScales: scales.baseAddress! + tailRow, ldb: dh,
                                                                  c: attn + h * dh, ldc: d)
                                    }
                                }
                            }
                        }
                    }
                }
                crossAttention(tail: tail?.crossKV[l])
                block.crossOut.forward(attn, rows: rows, into: projected, threads: threads, observer: observer)
                Kernels.add(x, projected, count: rows * d)

                // MLP.
                Kernels.layerNorm(x, rows: rows, cols: d, gamma: block.mlpNorm.gamma,
                                  beta: block.mlpNorm.beta, into: normed)
                block.mlpUp.forward(normed, rows: rows, into: hidden, threads: threads, observer: observer)
                Kernels.gelu(hidden, count: rows * 4 * d)
                block.mlpDown.forward(hidden, rows: rows, into: projected, threads: threads, observer: observer)
                Kernels.add(x, projected, count: rows * d)
            }}}}}}}}}}}
        }
        length = total

        // Final norm of each sequence's last position, then logits through the tied embedding.
        var last = [Float](repeating: 0, count: batch * d)          // [batch, d]
        x.withUnsafeBufferPointer { xb in
            last.withUnsafeMutableBufferPointer { lb in
                for b in 0..<batch {
                    Kernels.layerNorm(xb.baseAddress! + (b * n + n - 1) * d, rows: 1, cols: d,
                                      gamma: weights.decoderNorm.gamma, beta: weights.decoderNorm.beta,
                                      into: lb.baseAddress! + b * d)
                }
            }
        }
        var logits = [Float](repeating: 0, count: batch * dims.nVocab)   // [batch, nVocab]
        last.withUnsafeBufferPointer { lb in
            logits.withUnsafeMutableBufferPointer { o in
                weights.tokenEmbedding.forward(lb.baseAddress!, rows: batch, into: o.baseAddress!, threads: threads,
                                               observer: observer)
            }
        }
        return logits
    }
}
