import Foundation
import XCTest
@testable import Quantization

final class ActivationStatisticsTests: XCTestCase {
    /// Deterministic pseudo-random floats.
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
        mutating func normal() -> Float {
            let u = max(uniform(), 1e-7), v = uniform()
            return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
        }
    }

    func observe(_ stats: ActivationStatistics, layer: String, input: [Float], output: [Float], rows: Int) {
        input.withUnsafeBufferPointer { i in
            output.withUnsafeBufferPointer { o in stats.observe(layer: layer, input: i, output: o, rows: rows) }
        }
    }

    func testBinEdgesBracketTheirValues() {
        var rng = Rng(state: 1)
        for _ in 0..<10_000 {
            let exponent = Float(rng.uniform() * 40 - 26)
            let v = powf(2, exponent) * (rng.uniform() < 0.5 ? -1 : 1)
            let i = AbsHistogram.binIndex(v)
            XCTAssert(i > 0 && i < AbsHistogram.binCount - 1, "\(v) fell outside the inner bins")
            XCTAssertLessThanOrEqual(AbsHistogram.lowerEdge(i), abs(v))
            XCTAssertLessThan(abs(v), AbsHistogram.upperEdge(i))
            // Relative width at most 1/32.
            XCTAssertLessThanOrEqual(AbsHistogram.upperEdge(i) - AbsHistogram.lowerEdge(i),
                                     AbsHistogram.lowerEdge(i) / 32 * 1.0001)
        }
        XCTAssertEqual(AbsHistogram.binIndex(0), 0)
        XCTAssertEqual(AbsHistogram.binIndex(1e-12), 0)
        XCTAssertEqual(AbsHistogram.binIndex(1e5), AbsHistogram.binCount - 1)
        XCTAssertEqual(AbsHistogram.binIndex(.infinity), AbsHistogram.binCount - 1)
        XCTAssertEqual(AbsHistogram.binIndex(.nan), AbsHistogram.binCount - 1)
        XCTAssertLessThan(AbsHistogram.lowerEdge(1), 1e-8)
        XCTAssertGreaterThan(AbsHistogram.lowerEdge(AbsHistogram.binCount - 1), 1e4)
    }

    func testMedianMatchesExactMedianWithinBinWidth() {
        var rng = Rng(state: 7)
        for scale in [Float(1e-4), 0.05, 1, 30] {
            let values = (0..<20_001).map { _ in rng.normal() * scale * (rng.uniform() < 0.05 ? 50 : 1) }
            var h = AbsHistogram()
            values.withUnsafeBufferPointer { h.add($0) }
            let sorted = values.map { abs($0) }.sorted()
            let exact = Double(sorted[sorted.count / 2])
            let estimate = h.median!
            let bin = AbsHistogram.binIndex(Float(exact))
            let width = Double(AbsHistogram.upperEdge(bin) - AbsHistogram.lowerEdge(bin))
            XCTAssertEqual(estimate, exact, accuracy: width, "scale \(scale)")
            XCTAssertEqual(h.total, UInt64(values.count))
        }
        XCTAssertNil(AbsHistogram().median)
    }

    func testLayerStatisticsAggregatesAndMerges() throws {
        let stats = ActivationStatistics(modelIdentity: "m")
        // Layer "a": 3 rows of 2 inputs, 4 outputs.
        observe(stats, layer: "a", input: [1, -2, 3, 0, -1, 4], output: [Float](repeating: 0.5, count: 12), rows: 3)
        observe(stats, layer: "a", input: [2, 2], output: [1, 1, 1, 1], rows: 1)
        stats.finishSample()
        let a = try XCTUnwrap(stats.layer("a"))
        XCTAssertEqual(a.inFeatures, 2)
        XCTAssertEqual(a.outFeatures, 4)
        XCTAssertEqual(a.inputRowCount, 4)
        XCTAssertEqual(a.outputElementCount, 16)
        let expected: [Double] = [15.0 / 4, 24.0 / 4]  // (1 + 9 + 1 + 4) / 4, (4 + 0 + 16 + 4) / 4
        XCTAssertEqual(a.inputMeanSquare, expected)
        XCTAssertEqual(a.inputAbsMax, [3, 4])
        XCTAssertEqual(a.medianAbsOutput, 0.5, accuracy: 0.5 / 32)
        XCTAssertEqual(stats.sampleCount, 1)

        let other = ActivationStatistics(modelIdentity: "m")
        observe(other, layer: "a", input: [5, 0], output: [9, 9, 9, 9], rows: 1)
        observe(other, layer: "b", input: [1], output: [1], rows: 1)
        other.finishSample()
        try stats.merge(other)
        XCTAssertEqual(stats.sampleCount, 2)
        XCTAssertEqual(stats.layers.map(\.name), ["a", "b"])
        XCTAssertEqual(stats.layer("a")!.inputAbsMax, [5, 4])
        XCTAssertEqual(stats.layer("a")!.inputRowCount, 5)
        XCTAssertEqual(stats.layer("a")!.outputHistogram.total, 20)

        let foreign = ActivationStatistics(modelIdentity: "other")
        XCTAssertThrowsError(try stats.merge(foreign)) { error in
            XCTAssertEqual(error as? ActivationStatisticsError, .modelMismatch(expected: "m", found: "other"))
        }
        let reshaped = ActivationStatistics(modelIdentity: "m")
        observe(reshaped, layer: "a", input: [1, 2, 3], output: [1], rows: 1)
        XCTAssertThrowsError(try stats.merge(reshaped))
        XCTAssertEqual(stats.layer("a")!.inputRowCount, 5, "a failed merge changes nothing")

        // A layer seen with a second shape is reported, not folded in.
        observe(stats, layer: "b", input: [1, 2], output: [1], rows: 1)
        XCTAssertEqual(stats.observationError, .shapeMismatch(layer: "b", expected: [1, 1], found: [1, 2]))

        stats.reset()
        XCTAssertEqual(stats.sampleCount, 0)
        XCTAssertTrue(stats.layers.isEmpty)
        XCTAssertNil(stats.observationError)
    }

    func testMemoryIsBoundedByShape() {
        let stats = ActivationStatistics(modelIdentity: "m")
        var rng = Rng(state: 3)
        for _ in 0..<50 {
            let input = (0..<(16 * 8)).map { _ in rng.normal() }
            let output = (0..<(16 * 4)).map { _ in rng.normal() }
            observe(stats, layer: "l", input: input, output: output, rows: 16)
            stats.finishSample()
        }
        let l = stats.layer("l")!
        XCTAssertEqual(l.inputSquareSums.count, 8)
        XCTAssertEqual(l.outputHistogram.counts.count, AbsHistogram.binCount)
        XCTAssertEqual(l.outputElementCount, 50 * 64)
        // Half-normal median is 0.6745.
        XCTAssertEqual(l.medianAbsOutput, 0.6745, accuracy: 0.05)
        XCTAssertEqual(stats.sampleCount, 50)
    }

    func testConcurrentObservationCountsEverything() {
        let stats = ActivationStatistics(modelIdentity: "m")
        let input = [Float](repeating: 1, count: 32), output = [Float](repeating: 2, count: 64)
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for _ in 0..<100 { self.observe(stats, layer: "l\(t % 2)", input: input, output: output, rows: 4) }
        }
        XCTAssertEqual(stats.layer("l0")!.inputRowCount + stats.layer("l1")!.inputRowCount, 8 * 100 * 4)
        XCTAssertEqual(stats.layer("l0")!.outputElementCount, 4 * 100 * 64)
    }

    // MARK: statistics file

    func sampleStatistics() -> ActivationStatistics {
        let stats = ActivationStatistics(modelIdentity: "tiny.en (test)")
        var rng = Rng(state: 11)
        for layer in ["encoder/conv1", "decoder/embeddings"] {
            let input = (0..<(10 * 6)).map { _ in rng.normal() }
            let output = (0..<(10 * 3)).map { _ in rng.normal() * 3 }
            observe(stats, layer: layer, input: input, output: output, rows: 10)
        }
        stats.finishSample()
        stats.finishSample()
        return stats
    }

    /// A path in a directory of this test's own, removed when the test ends.
    func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("myqs-tests-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir.appendingPathComponent(name).path
    }

    func testFileRoundTripAndDigest() throws {
        let stats = sampleStatistics()
        let path = temporaryPath("round.myqs")
        try StatisticsFile.write(stats, to: path)
        let loaded = try StatisticsFile.load(path: path)
        XCTAssertEqual(loaded.modelIdentity, stats.modelIdentity)
        XCTAssertEqual(loaded.sampleCount, 2)
        XCTAssertEqual(loaded.layers, stats.layers)
        XCTAssertEqual(StatisticsFile.digest(loaded), StatisticsFile.digest(stats))
        XCTAssertTrue(StatisticsFile.digest(stats).hasPrefix("myqs1-"))
        XCTAssertEqual(StatisticsFile.digest(stats).count, 6 + 8 + 16)
        let more = sampleStatistics()
        more.finishSample()
        XCTAssertNotEqual(StatisticsFile.digest(more), StatisticsFile.digest(stats))
    }

    func testLoadRejectsForeignTruncatedAndCorruptFiles() throws {
        let image = StatisticsFile.encode(sampleStatistics())
        func decodeError(_ bytes: [UInt8]) -> StatisticsFileError? {
            do {
                _ = try StatisticsFile.decode(bytes, path: "/x/s.myqs")
                return nil
            } catch {
                return error as? StatisticsFileError
            }
        }
        XCTAssertEqual(decodeError(Array("RIFF....WAVE".utf8)), .notStatisticsFile(path: "/x/s.myqs"))
        XCTAssertEqual(decodeError([]), .truncated(path: "/x/s.myqs"))
        for cut in [6, 16, image.count / 2, image.count - 1] {
            XCTAssertEqual(decodeError(Array(image.prefix(cut))), .truncated(path: "/x/s.myqs"), "cut at \(cut)")
        }
        var flipped = image
        flipped[image.count / 2] ^= 0x10
        guard case .checksumMismatch(let path, _, _)? = decodeError(flipped) else {
            return XCTFail("a flipped bit must fail the checksum")
        }
        XCTAssertEqual(path, "/x/s.myqs")
        var future = image
        future[4] = 9
        XCTAssertEqual(decodeError(future), .unsupportedVersion(path: "/x/s.myqs", version: 9))
        XCTAssertEqual(decodeError(image + [0]), .corrupt(path: "/x/s.myqs", reason: "1 unexpected bytes after the checksum"))

        // Every message names the file.
        for e in [decodeError(flipped)!, .truncated(path: "/x/s.myqs"), .notStatisticsFile(path: "/x/s.myqs")] {
            XCTAssertTrue(e.description.contains("/x/s.myqs"), e.description)
        }
        XCTAssertThrowsError(try StatisticsFile.load(path: temporaryPath("missing.myqs"))) { error in
            XCTAssertTrue("\(error)".contains("missing.myqs"))
        }
    }
}
