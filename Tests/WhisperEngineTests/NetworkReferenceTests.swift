import Foundation
import XCTest
import WhisperEngine

/// Checks the optimised network (im2col convolutions, BLAS products, KV cache, batched
/// beams) against a straightforward implementation written here from the equations,
/// on a small network with random weights.
final class NetworkReferenceTests: XCTestCase {
    static let dims = ModelDimensions(nMels: 6, nAudioCtx: 10, nState: 16, nHeads: 2,
                                      nAudioLayers: 2, nTextLayers: 2, nTextCtx: 12, nVocab: 29)

    func testEncoderMatchesReference() {
        var rng = SeededGenerator(seed: 1)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let mel = (0..<(Self.dims.nMels * 2 * Self.dims.nAudioCtx)).map { _ in Float.random(in: -1...1, using: &rng) }
        let fast = WhisperNetwork(weights: weights, threads: 2).encode(mel: mel)
        let slow = Reference(weights).encode(mel)
        XCTAssertEqual(fast.frames, Self.dims.nAudioCtx)
        assertClose(fast.values, slow, tolerance: 1e-4)
    }

    func testShortEncoderMatchesReferenceOverItsOwnFrames() {
        var rng = SeededGenerator(seed: 5)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 2)
        for positions in [1, 4, 7] {
            let mel = (0..<(Self.dims.nMels * 2 * positions)).map { _ in Float.random(in: -1...1, using: &rng) }
            let fast = network.encode(mel: mel)
            XCTAssertEqual(fast.frames, positions)
            assertClose(fast.values, Reference(weights).encode(mel), tolerance: 1e-4)
        }
    }

    /// Without attention blocks every encoder position depends only on its own mel frames (the
    /// convolutions' reach) and its positional embedding: a short window's output is then the full
    /// window's first rows, when the full window holds the same frames followed by zeros.
    func testShortEncoderIsTheFullWindowsFirstRowsWithoutAttention() {
        var dims = Self.dims
        dims.nAudioLayers = 0
        var rng = SeededGenerator(seed: 6)
        let weights = RandomWhisper.make(dims, rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 1)
        let positions = 4, inFrames = 2 * positions, window = 2 * dims.nAudioCtx
        let short = (0..<(dims.nMels * inFrames)).map { _ in Float.random(in: -1...1, using: &rng) }
        var whole = [Float](repeating: 0, count: dims.nMels * window)
        for m in 0..<dims.nMels {
            for f in 0..<inFrames { whole[m * window + f] = short[m * inFrames + f] }
        }
        let shortOut = network.encode(mel: short), wholeOut = network.encode(mel: whole)
        XCTAssertEqual(shortOut.frames, positions)
        XCTAssertEqual(wholeOut.frames, dims.nAudioCtx)
        assertClose(shortOut.values, Array(wholeOut.values[0..<(positions * dims.nState)]), tolerance: 1e-5)
        // With attention the rows differ: each position sees the whole window's positions.
        let attending = WhisperNetwork(weights: RandomWhisper.make(Self.dims, rng: &rng), threads: 1)
        let a = attending.encode(mel: short).values, b = attending.encode(mel: whole).values
        XCTAssertNotEqual(a, Array(b[0..<a.count]))
    }

    /// The decoder's cross-attention over a short window reads its positions only: the logits are
    /// the reference's over exactly those encoder rows.
    func testCrossAttentionOverAShortWindowSeesOnlyItsFrames() {
        var rng = SeededGenerator(seed: 7)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 2)
        let positions = 3
        let mel = (0..<(Self.dims.nMels * 2 * positions)).map { _ in Float.random(in: -1...1, using: &rng) }
        let audio = network.encode(mel: mel)
        XCTAssertEqual(audio.values.count, positions * Self.dims.nState)
        let reference = Reference(weights)
        let session = network.makeDecoderSession(audio: audio)
        assertClose(session.step([[3, 7]]), reference.logits(tokens: [3, 7], audio: audio.values), tolerance: 1e-4)
        assertClose(session.step([[1]]), reference.logits(tokens: [3, 7, 1], audio: audio.values), tolerance: 1e-4)
        // The same rows followed by more positions give other logits: the short session did not
        // attend to anything past its own rows.
        let longer = EncodedAudio(frames: positions + 2, width: Self.dims.nState,
                                  values: audio.values + rng.floats(2 * Self.dims.nState, scale: 1))
        let other = network.makeDecoderSession(audio: longer).step([[3, 7]])
        XCTAssertNotEqual(other, reference.logits(tokens: [3, 7], audio: audio.values))
    }

    /// With a silent tail the decoder attends over the short window's rows followed by the encoded
    /// silent window's rows from the same position on: the reference's logits over that whole window.
    func testSilentTailIsTheSilentWindowsPositionsAfterTheShortFrames() throws {
        var rng = SeededGenerator(seed: 8)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let store = SilentWindowStore()
        let network = WhisperNetwork(weights: weights, threads: 2, silentWindows: store)
        let d = Self.dims.nState, positions = 4
        let mel = (0..<(Self.dims.nMels * 2 * positions)).map { _ in Float.random(in: -1...1, using: &rng) }
        let short = network.encode(mel: mel)
        let extended = try network.extendedWithSilence(short, cancellation: nil)
        XCTAssertEqual(extended.frames, positions)
        XCTAssertEqual(extended.values, short.values)
        let silence = network.encode(mel: [Float](repeating: 0, count: Self.dims.nMels * 2 * Self.dims.nAudioCtx))
        let whole = short.values + Array(silence.values[(positions * d)...])   // [nAudioCtx, d]
        let reference = Reference(weights)
        // The silent window's keys and values are int8, each within half a step (1/254 of its row's largest) of
        // its value: the logits within 4e-3 (measured 6-10e-4), where leaving the tail out moves them further.
        let tolerance: Float = 4e-3
        let session = network.makeDecoderSession(audio: extended)
        assertClose(session.step([[3, 7]]), reference.logits(tokens: [3, 7], audio: whole), tolerance: tolerance)
        session.reorder([0, 0])
        let two = session.step([[1], [5]])
        let v = Self.dims.nVocab
        assertClose(Array(two[0..<v]), reference.logits(tokens: [3, 7, 1], audio: whole), tolerance: tolerance)
        assertClose(Array(two[v...]), reference.logits(tokens: [3, 7, 5], audio: whole), tolerance: tolerance)
        let withoutTail = network.makeDecoderSession(audio: short).step([[3, 7]])
        let expected = reference.logits(tokens: [3, 7], audio: whole)
        XCTAssertGreaterThan(zip(withoutTail, expected).map { abs($0 - $1) / max(1, abs($1)) }.max()!, 10 * tolerance)
        // The silent window is made once per store, and shared.
        let other = WhisperNetwork(weights: weights, threads: 1, silentWindows: store)
        XCTAssertTrue(try other.extendedWithSilence(short, cancellation: nil).silentTail === extended.silentTail)
        // Int8 codes for every key and value, and a float scale per position and head.
        XCTAssertEqual(store.byteSize, Self.dims.nTextLayers * 2 * Self.dims.nAudioCtx * (d + 4 * Self.dims.nHeads))
        // A whole window has no tail.
        XCTAssertNil(try network.extendedWithSilence(silence, cancellation: nil).silentTail)
    }

    /// Making a silent window stops once its cancellation is set (a statistics pass giving way to a transcription):
    /// nothing is kept, and the next use makes it whole.
    func testMakingTheSilentWindowStopsWhenCancelledAndKeepsNothing() throws {
        var rng = SeededGenerator(seed: 9)
        let store = SilentWindowStore()
        let network = WhisperNetwork(weights: RandomWhisper.make(Self.dims, rng: &rng), threads: 1, silentWindows: store)
        let short = network.encode(mel: [Float](repeating: 0.5, count: Self.dims.nMels * 2 * 4))
        let cancelled = Cancellation()
        cancelled.cancel()
        XCTAssertThrowsError(try network.extendedWithSilence(short, cancellation: cancelled)) {
            XCTAssertEqual($0 as? DecodingError, .cancelled)
        }
        XCTAssertEqual(store.byteSize, 0)
        XCTAssertNotNil(try network.extendedWithSilence(short, cancellation: Cancellation()).silentTail)
        XCTAssertGreaterThan(store.byteSize, 0)
    }

    func testDecoderWithCacheMatchesFullRecompute() {
        var rng = SeededGenerator(seed: 2)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 1)
        let mel = (0..<(Self.dims.nMels * 2 * Self.dims.nAudioCtx)).map { _ in Float.random(in: -1...1, using: &rng) }
        let audio = network.encode(mel: mel)
        let reference = Reference(weights)

        // A prompt of three tokens in one step, then two single-token steps.
        let session = network.makeDecoderSession(audio: audio)
        var sequence = [3, 7, 1]
        assertClose(session.step([sequence]), reference.logits(tokens: sequence, audio: audio.values), tolerance: 1e-4)
        for next in [12, 5] {
            sequence.append(next)
            assertClose(session.step([[next]]), reference.logits(tokens: sequence, audio: audio.values), tolerance: 1e-4)
        }
        XCTAssertEqual(session.length, 5)
    }

    func testReorderedBeamsFollowTheirSources() {
        var rng = SeededGenerator(seed: 3)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 1)
        let mel = (0..<(Self.dims.nMels * 2 * Self.dims.nAudioCtx)).map { _ in Float.random(in: -1...1, using: &rng) }
        let audio = network.encode(mel: mel)
        let reference = Reference(weights)
        let v = Self.dims.nVocab

        let session = network.makeDecoderSession(audio: audio)
        _ = session.step([[2, 4]])
        session.reorder([0, 0, 0])                         // widen to three beams
        _ = session.step([[8], [9], [10]])
        session.reorder([2, 0])                            // keep beams 2 and 0, in that order
        var logits = session.step([[11], [6]])
        XCTAssertEqual(session.batchSize, 2)
        assertClose(Array(logits[0..<v]), reference.logits(tokens: [2, 4, 10, 11], audio: audio.values), tolerance: 1e-4)
        assertClose(Array(logits[v..<(2 * v)]), reference.logits(tokens: [2, 4, 8, 6], audio: audio.values), tolerance: 1e-4)
        session.reorder([1, 1, 0])                         // widen again, into the caches reorder set aside
        logits = session.step([[3], [5], [7]])
        XCTAssertEqual(session.batchSize, 3)
        assertClose(Array(logits[0..<v]), reference.logits(tokens: [2, 4, 8, 6, 3], audio: audio.values), tolerance: 1e-4)
        assertClose(Array(logits[v..<(2 * v)]), reference.logits(tokens: [2, 4, 8, 6, 5], audio: audio.values), tolerance: 1e-4)
        assertClose(Array(logits[(2 * v)...]), reference.logits(tokens: [2, 4, 10, 11, 7], audio: audio.values), tolerance: 1e-4)
    }

    /// The self-attention cache starts at 64 positions and grows as the sequences do: beams that
    /// outgrow it twice (64 -> 128 -> 140) still attend over every position they saw, and a reorder
    /// after a growth reads the grown caches.
    func testBeamsKeepTheirPositionsWhenTheCacheGrows() {
        let dims = ModelDimensions(nMels: 6, nAudioCtx: 10, nState: 16, nHeads: 2,
                                   nAudioLayers: 1, nTextLayers: 2, nTextCtx: 140, nVocab: 29)
        var rng = SeededGenerator(seed: 5)
        let weights = RandomWhisper.make(dims, rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 1)
        let mel = (0..<(dims.nMels * 2 * dims.nAudioCtx)).map { _ in Float.random(in: -1...1, using: &rng) }
        let audio = network.encode(mel: mel)
        let reference = Reference(weights)
        let v = dims.nVocab

        let session = network.makeDecoderSession(audio: audio)
        var beams = [(0..<60).map { ($0 * 7) % v }]
        _ = session.step(beams)
        session.reorder([0, 0])
        beams = [beams[0], beams[0]]
        var logits: [Float] = []
        for position in 60..<139 {
            if position == 100 {                            // after the first growth: swap the beams
                session.reorder([1, 0])
                beams = [beams[1], beams[0]]
            }
            let next = [[(position * 3) % v], [(position * 5 + 1) % v]]
            beams[0].append(next[0][0])
            beams[1].append(next[1][0])
            logits = session.step(next)
            if position == 64 {                             // the step that outgrew 64 positions
                assertClose(Array(logits[v...]), reference.logits(tokens: beams[1], audio: audio.values), tolerance: 1e-4)
            }
        }
        XCTAssertEqual(session.length, 139)
        assertClose(Array(logits[0..<v]), reference.logits(tokens: beams[0], audio: audio.values), tolerance: 1e-4)
        assertClose(Array(logits[v...]), reference.logits(tokens: beams[1], audio: audio.values), tolerance: 1e-4)
    }

    func testObserverSeesEveryLinearLayer() {
        var rng = SeededGenerator(seed: 4)
        let weights = RandomWhisper.make(Self.dims, rng: &rng)
        let recorder = LayerRecorder()
        let network = WhisperNetwork(weights: weights, threads: 1, observer: recorder)
        let mel = [Float](repeating: 0.1, count: Self.dims.nMels * 2 * Self.dims.nAudioCtx)
        _ = network.makeDecoderSession(audio: network.encode(mel: mel)).step([[1]])
        XCTAssertEqual(recorder.seen, Set(weights.linearLayers.map(\.name)))
        XCTAssertEqual(weights.linearLayers.count, 2 + 4 * 2 + 7 * 2 + 1)
    }

    private func assertClose(_ a: [Float], _ b: [Float], tolerance: Float, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, file: file, line: line)
        var worst: Float = 0
        for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) / max(1, abs(y))) }
        XCTAssertLessThan(worst, tolerance, "largest relative difference \(worst)", file: file, line: line)
    }
}

private final class LayerRecorder: ActivationObserver {
    var seen = Set<String>()
    func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        seen.insert(layer)
    }
}

/// Whisper written as directly as possible from its equations, in Double.
private struct Reference {
    let w: WhisperWeights
    init(_ w: WhisperWeights) { self.w = w }
    var d: Int { w.dimensions.nState }

    func matrix(_ l: Linear) -> [Float] {
        var out = [Float](repeating: 0, count: l.outFeatures * l.inFeatures)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<l.outFeatures { l.weight.copyRow(r, into: o.baseAddress! + r * l.inFeatures) }
        }
        return out
    }

    /// y[t] = W x[t] + b for each row t.
    func linear(_ l: Linear, _ x: [[Double]]) -> [[Double]] {
        let m = matrix(l)
        return x.map { row in
            (0..<l.outFeatures).map { o in
                var s = Double(l.bias?[o] ?? 0)
                for i in 0..<l.inFeatures { s += Double(m[o * l.inFeatures + i]) * row[i] }
                return s
            }
        }
    }

    func norm(_ n: LayerNormWeights, _ x: [[Double]]) -> [[Double]] {
        x.map { row in
            let mean = row.reduce(0, +) / Double(row.count)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(row.count)
            return row.indices.map { (row[$0] - mean) / (variance + 1e-5).squareRoot() * Double(n.gamma[$0]) + Double(n.beta[$0]) }
        }
    }

    func gelu(_ x: [[Double]]) -> [[Double]] { x.map { $0.map { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) } } }

    func add(_ a: [[Double]], _ b: [[Double]]) -> [[Double]] { zip(a, b).map { zip($0, $1).map(+) } }

    /// Multi-head attention of queries q over keys k / values v; `causal` masks later keys.
    func attention(q: [[Double]], k: [[Double]], v: [[Double]], causalOffset: Int?) -> [[Double]] {
        let heads = w.dimensions.nHeads, dh = d / heads
        var out = [[Double]](repeating: [Double](repeating: 0, count: d), count: q.count)
        for h in 0..<heads {
            for (i, qi) in q.enumerated() {
                var scores = k.indices.map { j -> Double in
                    var s = 0.0
                    for c in 0..<dh { s += qi[h * dh + c] * k[j][h * dh + c] }
                    return s / Double(dh).squareRoot()
                }
                if let offset = causalOffset {
                    for j in scores.indices where j > offset + i { scores[j] = -.infinity }
                }
                let maxScore = scores.max()!
                let e = scores.map { exp($0 - maxScore) }
                let total = e.reduce(0, +)
                for c in 0..<dh {
                    var s = 0.0
                    for j in k.indices { s += e[j] / total * v[j][h * dh + c] }
                    out[i][h * dh + c] = s
                }
            }
        }
        return out
    }

    /// Conv1d with kernel 3 and padding 1 over `x[channel][time]`, weights `[out, in, 3]`.
    func conv(_ l: Linear, _ x: [[Double]], stride: Int) -> [[Double]] {
        let m = matrix(l)
        let inChannels = x.count, length = x[0].count
        let outLength = (length + 2 - 3) / stride + 1
        return (0..<outLength).map { t in
            (0..<l.outFeatures).map { o in
                var s = Double(l.bias?[o] ?? 0)
                for c in 0..<inChannels {
                    for k in 0..<3 {
                        let src = t * stride + k - 1
                        if src >= 0 && src < length { s += Double(m[o * inChannels * 3 + c * 3 + k]) * x[c][src] }
                    }
                }
                return s
            }
        }
    }

    func encode(_ mel: [Float]) -> [Float] {
        let dims = w.dimensions
        let frames = mel.count / dims.nMels                                 // 2 * positions
        let input = (0..<dims.nMels).map { c in (0..<frames).map { Double(mel[c * frames + $0]) } }
        let h1 = gelu(conv(w.conv1, input, stride: 1))                      // [time, d]
        let h1ByChannel = (0..<d).map { c in h1.map { $0[c] } }
        var x = gelu(conv(w.conv2, h1ByChannel, stride: 2))                // [positions, d]
        for t in x.indices { for c in 0..<d { x[t][c] += Double(w.encoderPositions[t * d + c]) } }
        for b in w.encoderBlocks {
            let qkv = linear(b.qkv, norm(b.attentionNorm, x))
            let q = qkv.map { Array($0[0..<d]) }, k = qkv.map { Array($0[d..<(2 * d)]) }, v = qkv.map { Array($0[(2 * d)...]) }
            x = add(x, linear(b.attentionOut, attention(q: q, k: k, v: v, causalOffset: nil)))
            x = add(x, linear(b.mlpDown, gelu(linear(b.mlpUp, norm(b.mlpNorm, x)))))
        }
        return norm(w.encoderNorm, x).flatMap { $0.map(Float.init) }
    }

    /// The cross-attention keys and values are rounded to half precision, as the network keeps them.
    func logits(tokens: [Int], audio: [Float]) -> [Float] {
        let frames = audio.count / d
        let encoded = (0..<frames).map { t in (0..<d).map { Double(audio[t * d + $0]) } }
        let embedding = matrix(w.tokenEmbedding)
        var x = tokens.enumerated().map { pos, tok in
            (0..<d).map { Double(embedding[tok * d + $0]) + Double(w.decoderPositions[pos * d + $0]) }
        }
        for b in w.decoderBlocks {
            let qkv = linear(b.selfQKV, norm(b.selfAttentionNorm, x))
            let q = qkv.map { Array($0[0..<d]) }, k = qkv.map { Array($0[d..<(2 * d)]) }, v = qkv.map { Array($0[(2 * d)...]) }
            x = add(x, linear(b.selfOut, attention(q: q, k: k, v: v, causalOffset: 0)))
            let cq = linear(b.crossQuery, norm(b.crossAttentionNorm, x))
            let kv = linear(b.crossKV, encoded).map { $0.map { Double(Float16(Float($0))) } }
            let ck = kv.map { Array($0[0..<d]) }, cv = kv.map { Array($0[d...]) }
            x = add(x, linear(b.crossOut, attention(q: cq, k: ck, v: cv, causalOffset: nil)))
            x = add(x, linear(b.mlpDown, gelu(linear(b.mlpUp, norm(b.mlpNorm, x)))))
        }
        let last = norm(w.decoderNorm, [x.last!])
        return linear(w.tokenEmbedding, last)[0].map(Float.init)
    }
}
