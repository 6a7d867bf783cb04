import Foundation
import WhisperEngine
import TestSupport
import XCTest

@testable import Quantization

/// The bounded input second moments (`InputCovariance`): blocks, the kept fixed-point form,
/// merging pass by pass, the row buffer, shared inputs, and what they cost for tiny.en.
final class SecondMomentTests: XCTestCase {
    typealias Rng = ActivationStatisticsTests.Rng

    /// `rows` correlated rows of `width` features: a few shared factors plus noise, features of unequal scale.
    static func rows(_ rows: Int, width: Int, seed: UInt64) -> [Float] {
        var rng = Rng(state: seed)
        let factors = 3
        let loadings = (0..<(factors * width)).map { _ in rng.normal() }
        let scales = (0..<width).map { 0.1 + Float($0 % 7) }
        var x = [Float](repeating: 0, count: rows * width)
        for r in 0..<rows {
            let f = (0..<factors).map { _ in rng.normal() }
            for i in 0..<width {
                var v = rng.normal() * 0.5
                for k in 0..<factors { v += f[k] * loadings[k * width + i] }
                x[r * width + i] = v * scales[i]
            }
        }
        return x
    }

    private func observe(_ c: InputCovariance, _ layer: String, _ x: [Float], rows: Int) {
        x.withUnsafeBufferPointer { i in
            c.observe(layer: layer, input: i, output: UnsafeBufferPointer(start: nil, count: 0), rows: rows)
        }
    }

    /// `E[x xᵀ]` of row-major `x[rows, width]` in double precision.
    private func exactMoment(_ x: [Float], rows: Int, width: Int) -> [Double] {
        var m = [Double](repeating: 0, count: width * width)
        for r in 0..<rows {
            for i in 0..<width {
                let xi = Double(x[r * width + i])
                for j in 0..<width { m[i * width + j] += xi * Double(x[r * width + j]) }
            }
        }
        return m.map { $0 / Double(rows) }
    }

    func testBlocksKeepTheDiagonalBlocksAndNothingElse() throws {
        let width = 100, n = 300
        let x = Self.rows(n, width: width, seed: 1)
        let c = InputCovariance(blockSize: 32)
        observe(c, "l", x, rows: n)
        XCTAssertEqual(InputCovariance.blocks(width: width, blockSize: 32).map(\.size), [32, 32, 32, 4])
        let got = try XCTUnwrap(c.secondMoment(of: "l")), exact = exactMoment(x, rows: n, width: width)
        for i in 0..<width {
            for j in 0..<width {
                if i / 32 == j / 32 {
                    XCTAssertEqual(got[i * width + j], exact[i * width + j], accuracy: 1e-4 * (exact[i * width + i] * exact[j * width + j]).squareRoot())
                } else {
                    XCTAssertEqual(got[i * width + j], 0, "(\(i), \(j)) lies between blocks")
                }
            }
        }
        XCTAssertEqual(c.rows(of: "l"), n)
    }

    /// Merging pass by pass (the daemon: one pass per utterance, each folded into the kept form) stays within
    /// k·2⁻¹⁶ (k merges, each rounding to the fixed-point step) of the correlations of gathering every row in one
    /// go. A step of 1/2047, as coarse as half precision's near ±1, fails it (2668 entries beyond the bound).
    func testMergingPassByPassMatchesOneGatheringWithinTheStatedTolerance() throws {
        let width = 96, passes = 12, perPass = 40
        let all = Self.rows(passes * perPass, width: width, seed: 2)
        let oneGo = InputCovariance(blockSize: 64)
        observe(oneGo, "l", all, rows: passes * perPass)
        let kept = InputCovariance(blockSize: 64)
        for p in 0..<passes {
            let pass = InputCovariance(blockSize: 64)
            observe(pass, "l", Array(all[(p * perPass * width)..<((p + 1) * perPass * width)]), rows: perPass)
            kept.merge(pass)
            XCTAssertEqual(pass.layerNames, [], "the pass's moments moved into the kept ones, not copied")
        }
        XCTAssertEqual(kept.rows(of: "l"), passes * perPass)
        let a = try XCTUnwrap(kept.secondMoment(of: "l")), b = try XCTUnwrap(oneGo.secondMoment(of: "l"))
        let tolerance = Double(passes) * pow(2, -16) + 1e-5
        for i in 0..<width {
            XCTAssertEqual(a[i * width + i], b[i * width + i], accuracy: 1e-5 * b[i * width + i], "diagonal \(i)")
            for j in 0..<width {
                let scale = (b[i * width + i] * b[j * width + j]).squareRoot()
                XCTAssertEqual(a[i * width + j] / scale, b[i * width + j] / scale, accuracy: tolerance, "(\(i), \(j))")
            }
        }
        // The kept form is what the constructor promised: the correlations and the diagonal.
        let form = try XCTUnwrap(kept.kept("l"))
        XCTAssertEqual(form.correlations.count, InputCovariance.correlationCount(width: width, blockSize: 64))
        XCTAssertEqual(form.correlations.count, 64 * 63 / 2 + 32 * 31 / 2)
        XCTAssertEqual(kept.keptByteCount, InputCovariance.keptByteCount(width: width, blockSize: 64))
    }

    /// A long history does not freeze the kept moments: after 400 passes of one input, 100 passes of another
    /// move the kept correlations most of the way to the new ones (each pass weighs at least 1/64). With shares
    /// by rows alone they would move a fifth of the way.
    func testALongHistoryStillFollowsNewPasses() throws {
        let width = 32, perPass = 8
        let old = Self.rows(perPass, width: width, seed: 3), new = Self.rows(perPass, width: width, seed: 4)
        let kept = InputCovariance(blockSize: 0)
        for _ in 0..<400 {
            let pass = InputCovariance(blockSize: 0)
            observe(pass, "l", old, rows: perPass)
            kept.merge(pass)
        }
        let target = InputCovariance(blockSize: 0)
        observe(target, "l", new, rows: perPass)
        let before = try XCTUnwrap(kept.secondMoment(of: "l")), goal = try XCTUnwrap(target.secondMoment(of: "l"))
        for _ in 0..<100 {
            let pass = InputCovariance(blockSize: 0)
            observe(pass, "l", new, rows: perPass)
            kept.merge(pass)
        }
        let after = try XCTUnwrap(kept.secondMoment(of: "l"))
        var gapBefore = 0.0, gapAfter = 0.0
        for k in goal.indices {
            gapBefore += abs(before[k] - goal[k])
            gapAfter += abs(after[k] - goal[k])
        }
        // A moving average over about 64 passes: (63/64)^100 ≈ 0.21 of the gap is left.
        XCTAssertLessThan(gapAfter, 0.3 * gapBefore, "the kept moments did not follow the new passes")
        XCTAssertEqual(kept.rows(of: "l"), 500 * perPass)
    }

    /// Decoder calls carry one row per token: rows are buffered and folded in by `bufferedRows`, and every
    /// read folds in what is waiting.
    func testSingleRowsAreBufferedAndFlushed() throws {
        let width = 48, n = InputCovariance.bufferedRows * 2 + 7
        let x = Self.rows(n, width: width, seed: 3)
        let oneByOne = InputCovariance(), together = InputCovariance()
        for r in 0..<n { observe(oneByOne, "l", Array(x[(r * width)..<((r + 1) * width)]), rows: 1) }
        observe(together, "l", x, rows: n)
        XCTAssertEqual(oneByOne.rows(of: "l"), n, "the 7 rows still in the buffer are counted on reading")
        let a = try XCTUnwrap(oneByOne.secondMoment(of: "l")), b = try XCTUnwrap(together.secondMoment(of: "l"))
        for k in a.indices { XCTAssertEqual(a[k], b[k], accuracy: 1e-5 * max(1, abs(b[k]))) }
        // Rows of three at a time cross the buffer's end: it is folded first, nothing is lost.
        let threes = InputCovariance()
        for r in stride(from: 0, to: n - 2, by: 3) { observe(threes, "l", Array(x[(r * width)..<((r + 3) * width)]), rows: 3) }
        XCTAssertEqual(threes.rows(of: "l"), n / 3 * 3)
        // The kept form written after single rows holds them all.
        let stats = ActivationStatistics(modelIdentity: "m", momentBlockSize: 0)
        for r in 0..<5 {
            x.withUnsafeBufferPointer { p in
                stats.observe(layer: "l", input: UnsafeBufferPointer(rebasing: p[(r * width)..<((r + 1) * width)]),
                              output: UnsafeBufferPointer(rebasing: p[0..<4]), rows: 1)
            }
        }
        stats.finishSample()
        let loaded = try StatisticsFile.decode(StatisticsFile.encode(stats), path: "/x/s.myqs")
        XCTAssertEqual(loaded.secondMoments?.rows(of: "l"), 5)
    }

    /// Every decoder block's cross-attention key/value projection reads the encoder output: one moment
    /// stands for all of them, gathered once.
    func testCrossAttentionKeyValueLayersShareOneMoment() throws {
        final class Recorder: ActivationObserver {
            var inputs: [String: [Float]] = [:]
            func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
                if layer.hasSuffix("/attention/linear_1") && inputs[layer] == nil { inputs[layer] = Array(input) }
            }
        }
        var generator = SeededGenerator(seed: 5)
        let weights = RandomWhisper.make(rng: &generator)
        let recorder = Recorder()
        let covariance = InputCovariance()
        QuantizerTests.run(weights, observer: ObserverGroup([recorder, covariance]), utterances: 1)
        let names = weights.decoderBlocks.indices.map { "decoder/layer_\($0)/attention/linear_1" }
        XCTAssertEqual(names.count, 2)
        for name in names {
            XCTAssertEqual(recorder.inputs[name], recorder.inputs[names[0]], "\(name) reads what block 0's reads")
            XCTAssertEqual(InputCovariance.key(for: name), names[0])
            XCTAssertEqual(covariance.secondMoment(of: name), covariance.secondMoment(of: names[0]))
        }
        XCTAssertEqual(covariance.layerNames.filter { $0.hasSuffix("/attention/linear_1") }, [names[0]])
        XCTAssertEqual(covariance.layerNames.count, weights.linearLayers.count - 1)
        XCTAssertEqual(InputCovariance.key(for: "decoder/layer_1/self_attention/linear_1"), "decoder/layer_1/self_attention/linear_1")
        XCTAssertEqual(InputCovariance.key(for: "decoder/layer_x/attention/linear_1"), "decoder/layer_x/attention/linear_1")
    }

    /// A pass holds an encoder layer's rows in float sums only until a later encoder stage (convolution or block) or
    /// the decoder runs; then they are in the kept form (half the bytes), in the bounded form only (whole moments stay
    /// in float sums for the offline tool).
    func testEncoderSumsAreKeptOnceALaterStageRuns() throws {
        final class Probe: ActivationObserver {
            let covariance: InputCovariance
            var encoderInSums = false
            var earlierStagesInSums: Set<String> = []
            var encoderInSumsOnceDecoding: [String]?
            init(_ covariance: InputCovariance) { self.covariance = covariance }
            func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
                covariance.observe(layer: layer, input: input, output: output, rows: rows)
                let inSums = covariance.floatSumLayers.filter { $0.hasPrefix("encoder/") }
                if layer.hasPrefix("encoder/") {
                    encoderInSums = encoderInSums || inSums.contains(layer)
                    let stage = InputCovariance.encoderStage(of: layer)
                    earlierStagesInSums.formUnion(inSums.filter { InputCovariance.encoderStage(of: $0) < stage })
                }
                if layer.hasPrefix("decoder/"), encoderInSumsOnceDecoding == nil { encoderInSumsOnceDecoding = inSums }
            }
        }
        XCTAssertEqual(["encoder/conv1", "encoder/conv2", "encoder/layer_0/ffn/linear_1", "encoder/layer_11/self_attention/linear_0",
                        "decoder/layer_0/ffn/linear_0"].map(InputCovariance.encoderStage(of:)), [0, 1, 2, 13, .max])
        var generator = SeededGenerator(seed: 7)
        let weights = RandomWhisper.make(rng: &generator)
        let blocked = Probe(InputCovariance(blockSize: 32)), whole = Probe(InputCovariance())
        QuantizerTests.run(weights, observer: ObserverGroup([blocked, whole]), utterances: 1)
        XCTAssertTrue(blocked.encoderInSums, "a stage's rows are summed in float while it runs")
        XCTAssertEqual(blocked.earlierStagesInSums, [], "and kept once a later stage runs")
        XCTAssertEqual(blocked.encoderInSumsOnceDecoding, [], "the last one once the decoder runs")
        XCTAssertGreaterThan(blocked.covariance.rows(of: "encoder/layer_0/ffn/linear_1"), 0)
        XCTAssertGreaterThan(blocked.covariance.rows(of: "encoder/conv1"), 0)
        XCTAssertFalse(whole.earlierStagesInSums.isEmpty, "whole moments stay in float sums")
        XCTAssertEqual(whole.encoderInSumsOnceDecoding?.isEmpty, false)
    }

    /// `compact()` (between a pass's two runs, `StatisticsPass.run(served:)`) leaves no float sums or buffered rows:
    /// the same rows, the same moments but for one rounding of each correlation to the kept form's step. Whole moments
    /// (the offline tool's) are left as they are.
    func testCompactLeavesEveryLayerInTheKeptForm() throws {
        var generator = SeededGenerator(seed: 9)
        let weights = RandomWhisper.make(rng: &generator)
        let blocked = InputCovariance(blockSize: 32), whole = InputCovariance()
        QuantizerTests.run(weights, observer: ObserverGroup([blocked, whole]), utterances: 1)
        let decoderLayer = "decoder/layer_0/ffn/linear_0"
        XCTAssertTrue(blocked.floatSumLayers.contains(decoderLayer), "the decoder's rows are in float sums after a run")
        let rows = blocked.layerNames.map { blocked.rows(of: $0) }
        let before = try XCTUnwrap(blocked.secondMoment(of: decoderLayer))
        blocked.compact()
        XCTAssertEqual(blocked.floatSumLayers, [])
        XCTAssertEqual(blocked.layerNames.map { blocked.rows(of: $0) }, rows)
        let after = try XCTUnwrap(blocked.secondMoment(of: decoderLayer))
        let width = Int(Double(before.count).squareRoot())
        for i in 0..<width {
            for j in 0..<width where before[i * width + j] != 0 {
                let bound = (before[i * width + i] * before[j * width + j]).squareRoot() / InputCovariance.correlationScale
                XCTAssertEqual(after[i * width + j], before[i * width + j], accuracy: bound + 1e-12 * abs(before[i * width + j]))
            }
        }
        let wholeSums = whole.floatSumLayers
        XCTAssertFalse(wholeSums.isEmpty)
        whole.compact()
        XCTAssertEqual(whole.floatSumLayers, wholeSums, "whole moments stay in float sums")
    }

    /// What the statistics hold between passes, from tiny.en's shapes: under 16 MB in memory and 32 MB on disk.
    func testTinyEnMomentsFitTheirBounds() throws {
        let model = try Fixtures.model("tiny.en")
        let layers = model.weights.linearLayers
        let keys = layers.filter { InputCovariance.key(for: $0.name) == $0.name }
        XCTAssertEqual(keys.count, 44, "47 layers, the decoder's four cross-attention key/value projections share one")
        let bound = InputCovariance.keptByteCount(widths: keys.map(\.inFeatures), blockSize: StatisticsPass.momentBlockSize)
        XCTAssertLessThanOrEqual(bound, 16_000_000)
        // Filled with a row for every layer and kept, the object holds exactly that, and its file stays under 32 MB.
        let stats = StatisticsPass.emptyStatistics(modelIdentity: "tiny.en")
        for layer in layers {
            let x = [Float](repeating: 0.5, count: layer.inFeatures), y = [Float](repeating: 1, count: layer.outFeatures)
            x.withUnsafeBufferPointer { i in y.withUnsafeBufferPointer { o in stats.observe(layer: layer.name, input: i, output: o, rows: 1) } }
        }
        stats.finishSample()
        let kept = StatisticsPass.emptyStatistics(modelIdentity: "tiny.en")
        try kept.merge(stats)
        XCTAssertEqual(kept.secondMoments?.keptByteCount, bound)
        let file = StatisticsFile.encode(kept).count
        XCTAssertLessThanOrEqual(file, 32_000_000)
        XCTAssertLessThan(file - bound, 1_000_000, "the rest of the file is the small per-layer statistics")
    }
}

/// Second moments through the quantizer: sequential mode, and taken from the statistics.
final class StatisticsSecondMomentTests: XCTestCase {
    private func gathered(seed: UInt64) -> (WhisperWeights, ActivationStatistics) {
        let weights = QuantizerTests.randomWeights()
        let stats = ActivationStatistics(modelIdentity: ModelIdentity.of(name: "syn", weights: weights), momentBlockSize: 32)
        QuantizerTests.run(weights, observer: stats, utterances: 2, seed: seed, statistics: stats)
        return (weights, stats)
    }

    func testMergeRefusesAMixOfMomentsAndBlockSizes() throws {
        let (_, a) = gathered(seed: 4), (_, b) = gathered(seed: 5)
        let layer = "encoder/conv1"
        let rowsA = try XCTUnwrap(a.secondMoments?.rows(of: layer)), rowsB = try XCTUnwrap(b.secondMoments?.rows(of: layer))
        try a.merge(b)
        XCTAssertEqual(a.secondMoments?.rows(of: layer), rowsA + rowsB)
        XCTAssertEqual(b.secondMoments?.layerNames, [], "moved, not copied")
        let plain = ActivationStatistics(modelIdentity: a.modelIdentity)
        XCTAssertThrowsError(try a.merge(plain)) {
            XCTAssertEqual($0 as? ActivationStatisticsError, .secondMomentsMismatch(expected: true))
        }
        let whole = ActivationStatistics(modelIdentity: a.modelIdentity, momentBlockSize: 0)
        XCTAssertThrowsError(try a.merge(whole)) {
            XCTAssertEqual($0 as? ActivationStatisticsError, .momentBlockMismatch(expected: 32, found: 0))
        }
        let copy = a.copy()
        a.reset()
        XCTAssertEqual(a.secondMoments?.rows(of: layer), 0)
        XCTAssertEqual(copy.secondMoments?.rows(of: layer), rowsA + rowsB, "a copy is independent")
    }

    func testDecoderSecondMomentsAreGatheredAgainBehindTheQuantizedEncoder() throws {
        let (weights, stats) = gathered(seed: 4)
        let options = QuantizationOptions(target: .uniform(bits: 3), groupSize: 32, rounding: .compensated)
        var calls = 0
        let sequential = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats, options: options,
                                                decoderSecondMoments: { partial in
            calls += 1
            for l in partial.linearLayers {
                XCTAssertEqual(l.weight is QuantizedMatrix, l.name.hasPrefix("encoder/"), "\(l.name) when the decoder starts")
            }
            let moments = InputCovariance(accepts: { $0.hasPrefix("decoder/") })
            QuantizerTests.run(partial, observer: moments, utterances: 2, seed: 4)
            XCTAssertEqual(moments.rows(of: "encoder/conv1"), 0, "only the decoder is gathered")
            return moments
        })
        XCTAssertEqual(calls, 1)
        let single = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats, options: options)
        func codes(_ r: QuantizationResult, _ prefix: String) -> [[Int8]] {
            r.weights.linearLayers.filter { $0.name.hasPrefix(prefix) }.map { ($0.weight as! QuantizedMatrix).codes() }
        }
        XCTAssertEqual(codes(sequential, "encoder/"), codes(single, "encoder/"))
        XCTAssertNotEqual(codes(sequential, "decoder/"), codes(single, "decoder/"))
        XCTAssertEqual(sequential.report.totalBytes, single.report.totalBytes)
    }

    func testQuantizerTakesTheStatisticsSecondMoments() throws {
        let (weights, stats) = gathered(seed: 4)
        let options = QuantizationOptions(target: .uniform(bits: 3), groupSize: 32, rounding: .compensated)
        let fromStatistics = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats, options: options)
        let explicit = try Quantizer.quantize(name: "syn", weights: weights, statistics: nil, options: options,
                                              covariance: stats.secondMoments)
        let nearest = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats,
                                             options: QuantizationOptions(target: .uniform(bits: 3), groupSize: 32))
        XCTAssertEqual(fromStatistics.metadata.rounding, .compensated)
        for (a, b) in zip(fromStatistics.weights.linearLayers, explicit.weights.linearLayers) {
            XCTAssertEqual((a.weight as! QuantizedMatrix).codes(), (b.weight as! QuantizedMatrix).codes(), a.name)
        }
        XCTAssertNotEqual(fromStatistics.weights.linearLayers.map { ($0.weight as! QuantizedMatrix).codes() },
                          nearest.weights.linearLayers.map { ($0.weight as! QuantizedMatrix).codes() })
        // The daemon's function is the budget defaults with compensated rounding from these moments: at uniform
        // 4's size (groups of 32), groups of 32 and every layer at 4 bits.
        let budget = try BitAllocator(layers: weights.linearLayers.map {
            AllocationLayer(name: $0.name, outFeatures: $0.outFeatures, inFeatures: $0.inFeatures, sensitivity: 0)
        }, fixedBytes: weights.byteSize - weights.linearLayers.reduce(0) { $0 + $1.weight.byteSize }, groupSize: 32).uniformBytes(bits: 4)
        let personal = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats,
                                              options: Quantizer.personalOptions(budget: budget, statistics: stats))
        XCTAssertEqual(personal.metadata.rounding, .compensated)
        XCTAssertEqual(personal.metadata.groupSize, 32)
        XCTAssertLessThanOrEqual(personal.report.totalBytes, budget)
        XCTAssertEqual(Set(personal.report.layers.map(\.bits)), [4])
        // A byte less: groups of 32 would put a layer at 3 bits; the daemon's groups of 64 keep every layer at 4 or
        // more.
        let below = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats,
                                           options: Quantizer.personalOptions(budget: budget - 1, statistics: stats))
        XCTAssertEqual(below.metadata.groupSize, 64)
        XCTAssertLessThanOrEqual(below.report.totalBytes, budget - 1)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(below.report.layers.map(\.bits).min()), 4)
        var thirtyTwo = Quantizer.personalOptions(budget: budget - 1, statistics: stats)
        thirtyTwo.groupSize = 32
        let finer = try Quantizer.quantize(name: "syn", weights: weights, statistics: stats, options: thirtyTwo)
        XCTAssertEqual(finer.report.layers.map(\.bits).min(), 3)
        XCTAssertEqual(Quantizer.personalOptions(budget: budget, statistics: ActivationStatistics(modelIdentity: "m")).rounding, .nearest)
    }
}

/// Widths by expected error follow the user's activations: the same model and outputs, inputs of
/// different energy, different widths.
final class ExpectedErrorWidthTests: XCTestCase {
    typealias Rng = ActivationStatisticsTests.Rng

    /// Statistics of `weights` from synthetic rows: every layer's inputs unit normal except `loud`'s, ten
    /// times larger; outputs the same for every set.
    private func statistics(_ weights: WhisperWeights, loud: String) -> ActivationStatistics {
        let stats = ActivationStatistics(modelIdentity: ModelIdentity.of(name: "syn", weights: weights), momentBlockSize: 32)
        var rng = Rng(state: 8)
        for layer in weights.linearLayers {
            let rows = 40
            let x = (0..<(rows * layer.inFeatures)).map { _ in rng.normal() * (layer.name == loud ? 10 : 1) }
            let y = (0..<(rows * layer.outFeatures)).map { _ in rng.normal() }
            x.withUnsafeBufferPointer { i in y.withUnsafeBufferPointer { o in stats.observe(layer: layer.name, input: i, output: o, rows: rows) } }
        }
        stats.finishSample()
        return stats
    }

    func testDifferentSecondMomentsGiveDifferentWidths() throws {
        let weights = QuantizerTests.randomWeights()
        let a = "encoder/layer_0/ffn/linear_0", b = "decoder/layer_0/ffn/linear_0"
        let uniform = { (bits: Int) in
            try Quantizer.quantize(name: "syn", weights: weights, statistics: nil,
                                   options: QuantizationOptions(target: .uniform(bits: bits), groupSize: 64)).report.totalBytes
        }
        // Room for one of the two (equal) FFN layers at 5 bits, little else.
        let step = BitAllocator.quantizedByteSize(outFeatures: 256, inFeatures: 64, bits: 5, groupSize: 64)
            - BitAllocator.quantizedByteSize(outFeatures: 256, inFeatures: 64, bits: 4, groupSize: 64)
        let budget = try uniform(4) + step + 100
        let options = QuantizationOptions(target: .budget(budget), widths: .expectedError(adjacentWidths: true))
        func widths(loud: String) throws -> [String: Int] {
            let r = try Quantizer.quantize(name: "syn", weights: weights, statistics: statistics(weights, loud: loud), options: options)
            XCTAssertLessThanOrEqual(r.report.totalBytes, budget)
            XCTAssertTrue(r.report.layers.allSatisfy { [4, 5].contains($0.bits) })
            XCTAssertTrue(r.report.layers.allSatisfy { $0.expectedError != nil })
            return Dictionary(uniqueKeysWithValues: r.report.layers.map { ($0.name, $0.bits) })
        }
        let loudA = try widths(loud: a), loudB = try widths(loud: b)
        XCTAssertNotEqual(loudA, loudB)
        XCTAssertEqual(loudA[a], 5, "the layer whose inputs carry a hundred times the energy is kept wider")
        XCTAssertEqual(loudB[b], 5)
        XCTAssertGreaterThan(loudA[a]!, loudB[a]!)
    }
}
