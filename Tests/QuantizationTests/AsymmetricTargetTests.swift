import Foundation
import XCTest

@testable import Quantization

/// Asymmetric targets: the float weights that map a layer's drifted inputs back to the float
/// outputs, and the recorder that pairs the two models' rows.
final class AsymmetricTargetTests: XCTestCase {
    typealias Rng = ActivationStatisticsTests.Rng

    /// `rows` inputs of width `n` with correlated features (x = z + M z, M random).
    private func inputs(rows: Int, n: Int, rng: inout Rng) -> [Float] {
        let mixing = (0..<(n * n)).map { _ in rng.normal() * 0.3 }
        var x = [Float](repeating: 0, count: rows * n)
        for r in 0..<rows {
            let z = (0..<n).map { _ in rng.normal() }
            for i in 0..<n {
                var v = z[i]
                for k in 0..<n { v += mixing[i * n + k] * z[k] }
                x[r * n + i] = v
            }
        }
        return x
    }

    /// `x` passed through a small random linear map plus noise: the inputs a layer sees once the
    /// layers before it are quantized.
    private func drifted(_ x: [Float], rows: Int, n: Int, rng: inout Rng) -> [Float] {
        let map = (0..<(n * n)).map { _ in rng.normal() * 0.08 }
        var out = x
        for r in 0..<rows {
            for i in 0..<n {
                var v = x[r * n + i] + rng.normal() * 0.05
                for k in 0..<n { v += map[i * n + k] * x[r * n + k] }
                out[r * n + i] = v
            }
        }
        return out
    }

    /// Mean over rows of ‖x̃ vᵀ − x wᵀ‖²: how far `v` fed the drifted rows lands from `w` fed the float rows.
    private func outputError(_ v: [Float], onto w: [Float], out: Int, _ paired: PairedInputs) -> Double {
        let n = paired.width
        var total = 0.0
        for r in 0..<paired.rows {
            for o in 0..<out {
                var e = 0.0
                for i in 0..<n {
                    e += Double(v[o * n + i]) * Double(paired.quantized[r * n + i])
                        - Double(w[o * n + i]) * Double(paired.float[r * n + i])
                }
                total += e * e
            }
        }
        return total / Double(paired.rows)
    }

    func testIdenticalInputsKeepTheWeights() throws {
        var rng = Rng(state: 3)
        let out = 24, n = 32, rows = 1000
        let w = (0..<(out * n)).map { _ in rng.normal() * 0.1 }
        let x = inputs(rows: rows, n: n, rng: &rng)
        let paired = try XCTUnwrap(PairedInputs(float: x, quantized: x, width: n))
        let target = try XCTUnwrap(AsymmetricTarget.solve(values: w, outFeatures: out, inputs: paired))
        for (a, b) in zip(target.values, w) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        // H̃ is the mean outer product of the rows.
        var h01 = 0.0
        for r in 0..<rows { h01 += Double(x[r * n]) * Double(x[r * n + 1]) }
        XCTAssertEqual(target.secondMoment[1], h01 / Double(rows), accuracy: 1e-3 * max(1, abs(h01 / Double(rows))))
    }

    func testTargetMapsDriftedInputsBackToTheFloatOutputs() throws {
        var rng = Rng(state: 7)
        let out = 40, n = 64, rows = 2000
        let w = (0..<(out * n)).map { _ in rng.normal() * 0.1 }
        let x = inputs(rows: rows, n: n, rng: &rng)
        let paired = try XCTUnwrap(PairedInputs(float: x, quantized: drifted(x, rows: rows, n: n, rng: &rng), width: n))
        let target = try XCTUnwrap(AsymmetricTarget.solve(values: w, outFeatures: out, inputs: paired))
        let kept = outputError(w, onto: w, out: out, paired), corrected = outputError(target.values, onto: w, out: out, paired)
        // Measured: 1.1 against 69.9, the drift's output error almost gone.
        XCTAssertLessThan(corrected, 0.2 * kept, "\(corrected) vs \(kept)")

        // Rounded at 3 bits for the drifted rows' second moment, the target still lands closer
        // to the float outputs than the weights themselves rounded the same way.
        let rounding = ErrorCompensatedRounding()
        let fromTarget = try XCTUnwrap(try rounding.quantize(values: target.values, outFeatures: out, inFeatures: n, bits: 3,
                                                             groupSize: 32, secondMoment: target.secondMoment, rows: rows))
        let fromWeights = try XCTUnwrap(try rounding.quantize(values: w, outFeatures: out, inFeatures: n, bits: 3,
                                                              groupSize: 32, secondMoment: target.secondMoment, rows: rows))
        let a = outputError(fromTarget.dequantized(), onto: w, out: out, paired)
        let b = outputError(fromWeights.dequantized(), onto: w, out: out, paired)
        XCTAssertLessThan(a, 0.8 * b, "\(a) vs \(b)")   // measured 4.6 against 71.1
    }

    func testFewRowsHoldTheTargetNearTheWeights() throws {
        var rng = Rng(state: 11)
        let out = 16, n = 64
        let w = (0..<(out * n)).map { _ in rng.normal() * 0.1 }
        func distance(rows: Int) throws -> Double {
            let x = inputs(rows: rows, n: n, rng: &rng)
            let paired = try XCTUnwrap(PairedInputs(float: x, quantized: drifted(x, rows: rows, n: n, rng: &rng), width: n))
            let target = try XCTUnwrap(AsymmetricTarget.solve(values: w, outFeatures: out, inputs: paired))
            return zip(target.values, w).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        }
        // The ridge grows with width / rows: 16 rows for 64 inputs move the weights far less than 4000.
        XCTAssertLessThan(try distance(rows: 16), 0.5 * (try distance(rows: 4000)))
    }

    func testPairsMustHaveOneShape() {
        XCTAssertNil(PairedInputs(float: [1, 2, 3, 4], quantized: [1, 2, 3], width: 2))
        XCTAssertNil(PairedInputs(float: [1, 2, 3], quantized: [1, 2, 3], width: 2))
        XCTAssertNil(PairedInputs(float: [], quantized: [], width: 2))
        XCTAssertEqual(PairedInputs(float: [1, 2, 3, 4], quantized: [0, 2, 3, 5], width: 2)?.rows, 2)
    }

    func testRecorderKeepsTheChosenLayersRowsInOrder() throws {
        let recorder = LayerInputRecorder(accepts: { $0 == "a" })
        func feed(_ layer: String, _ values: [Float], rows: Int) {
            values.withUnsafeBufferPointer { recorder.observe(layer: layer, input: $0, output: $0, rows: rows) }
        }
        feed("a", [1, 2, 3, 4], rows: 2)
        feed("b", [9, 9], rows: 1)
        feed("a", [5, 6], rows: 1)
        feed("a", [7, 8, 9], rows: 1)   // another width: not mixed in
        let a = try XCTUnwrap(recorder.inputs(of: "a"))
        XCTAssertEqual(a.rows, 3)
        XCTAssertEqual(a.width, 2)
        XCTAssertEqual(a.values, [1, 2, 3, 4, 5, 6])
        XCTAssertNil(recorder.inputs(of: "b"))
    }
}
