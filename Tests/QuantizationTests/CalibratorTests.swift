import Foundation
import WhisperEngine
import XCTest
@testable import Quantization

final class CalibratorTests: XCTestCase {
    typealias Rng = ActivationStatisticsTests.Rng

    /// A 48 x 128 layer with Gaussian weights and a few large outliers per row, and inputs
    /// whose features have very different scales.
    struct Synthetic {
        let layer: Linear
        let inputs: [Float]
        let rows: Int
        let meanSquare: [Double]
    }

    func synthetic(seed: UInt64 = 5) -> Synthetic {
        var rng = Rng(state: seed)
        let out = 48, inF = 128, rows = 200
        var w = (0..<(out * inF)).map { _ in rng.normal() * 0.05 }
        for r in 0..<out {
            for _ in 0..<2 { w[r * inF + Int(rng.next() % UInt64(inF))] = (rng.uniform() < 0.5 ? -1 : 1) * 0.6 }
        }
        let featureScale = (0..<inF).map { _ in 0.2 + 2 * rng.uniform() }
        var x = [Float](repeating: 0, count: rows * inF)
        for r in 0..<rows { for i in 0..<inF { x[r * inF + i] = rng.normal() * featureScale[i] } }
        var ms = [Double](repeating: 0, count: inF)
        for r in 0..<rows { for i in 0..<inF { ms[i] += Double(x[r * inF + i] * x[r * inF + i]) / Double(rows) } }
        let bias = (0..<out).map { _ in rng.normal() * 0.1 }
        return Synthetic(layer: Linear(name: "syn", weight: FloatMatrix(outFeatures: out, inFeatures: inF, values: w),
                                       bias: bias),
                         inputs: x, rows: rows, meanSquare: ms)
    }

    /// The true output error of quantizing with `ratio`, on the synthetic inputs.
    func outputError(_ s: Synthetic, bits: Int, ratios: [Float], objective: CalibrationObjective) throws -> Double {
        let w = s.layer.weight as! FloatMatrix
        let q = try QuantizedMatrix(quantizing: w.values, outFeatures: w.outFeatures, inFeatures: w.inFeatures,
                                    bits: bits, groupSize: 32, clipRatios: ratios)
        func run(_ m: any WeightMatrix) -> [Float] {
            var y = [Float](repeating: 0, count: s.rows * w.outFeatures)
            s.inputs.withUnsafeBufferPointer { x in
                y.withUnsafeMutableBufferPointer {
                    s.layer.replacingWeight(m).forward(x.baseAddress!, rows: s.rows, into: $0.baseAddress!, threads: 1,
                                                      observer: nil)
                }
            }
            return y
        }
        let dq = FloatMatrix(outFeatures: w.outFeatures, inFeatures: w.inFeatures, values: q.dequantized())
        return Calibrator.distance(run(w), run(dq), rows: s.rows, width: w.outFeatures, objective: objective)
    }

    func testCalibratedClipBeatsNoClipAt3BitsForBothObjectivesAndSources() throws {
        let s = synthetic()
        let groups = 128 / 32
        for objective in CalibrationObjective.allCases {
            let calibrator = try Calibrator(objective: objective)
            let fromMoments = try calibrator.calibrate(layer: s.layer, bits: 3, groupSize: 32, meanSquare: s.meanSquare)
            let exact = try calibrator.calibrate(layer: s.layer, bits: 3, groupSize: 32, inputs: s.inputs, rows: s.rows)
            let unclipped = try outputError(s, bits: 3, ratios: [Float](repeating: 1, count: 48 * groups), objective: objective)
            for c in [fromMoments, exact] {
                XCTAssertLessThan(c.clipRatio, 1, "\(objective) exact=\(c.exact): outliers call for clipping")
                XCTAssertLessThan(c.calibratedError, c.unclippedError)
                let achieved = try outputError(s, bits: 3, ratios: c.clipRatios(outFeatures: 48, groupsPerRow: groups),
                                               objective: objective)
                XCTAssertLessThan(achieved, unclipped * 0.99,
                                  "\(objective) exact=\(c.exact): clip \(c.clipRatio) error \(achieved) vs \(unclipped)")
            }
            // The exact score is the measured output error.
            XCTAssertEqual(exact.calibratedError,
                           try outputError(s, bits: 3, ratios: exact.clipRatios(outFeatures: 48, groupsPerRow: groups),
                                           objective: objective), accuracy: 1e-9 + exact.calibratedError * 1e-4)
            XCTAssertEqual(exact.unclippedError, unclipped, accuracy: unclipped * 1e-4)
        }
    }

    func testPerGroupClipIsAtLeastAsGoodAsPerLayerOnItsObjective() throws {
        let s = synthetic(seed: 9)
        let perLayer = try Calibrator(objective: .mse).calibrate(layer: s.layer, bits: 3, groupSize: 32, meanSquare: s.meanSquare)
        let perGroup = try Calibrator(objective: .mse, perGroup: true)
            .calibrate(layer: s.layer, bits: 3, groupSize: 32, meanSquare: s.meanSquare)
        let ratios = try XCTUnwrap(perGroup.groupClipRatios)
        XCTAssertEqual(ratios.count, 48 * 4)
        XCTAssertGreaterThan(Set(ratios).count, 1, "groups choose different ratios")
        XCTAssertLessThanOrEqual(perGroup.calibratedError, perLayer.calibratedError * (1 + 1e-9))
    }

    func testMomentObjectivesMatchTheirDefinitions() throws {
        // One row, moments m: MSE = Σ m (w - ŵ)², cosine = 1 - Σ m w ŵ / √(Σ m w² Σ m ŵ²).
        let w: [Float] = (0..<32).map { Float($0 % 7) - 3.2 }
        let m: [Double] = (0..<32).map { 0.5 + Double($0 % 3) }
        let q = try QuantizedMatrix(quantizing: w, outFeatures: 1, inFeatures: 32, bits: 2, groupSize: 32).dequantized()
        var mse = 0.0, dot = 0.0, nw = 0.0, nq = 0.0
        for i in 0..<32 {
            let a = Double(w[i]), b = Double(q[i])
            mse += m[i] * (a - b) * (a - b); dot += m[i] * a * b; nw += m[i] * a * a; nq += m[i] * b * b
        }
        let grid: [Float] = [1]
        let cMSE = try Calibrator(objective: .mse, grid: grid, refine: false)
            .calibrate(name: "r", weights: w, outFeatures: 1, inFeatures: 32, bits: 2, groupSize: 32, meanSquare: m)
        let cCos = try Calibrator(objective: .cosine, grid: grid, refine: false)
            .calibrate(name: "r", weights: w, outFeatures: 1, inFeatures: 32, bits: 2, groupSize: 32, meanSquare: m)
        XCTAssertEqual(cMSE.unclippedError, mse, accuracy: mse * 1e-5)
        XCTAssertEqual(cCos.unclippedError, 1 - dot / (nw * nq).squareRoot(), accuracy: 1e-6)
    }

    func testBadInputsAreTypedErrors() throws {
        let s = synthetic()
        XCTAssertThrowsError(try Calibrator(grid: []))
        XCTAssertThrowsError(try Calibrator(grid: [1.2]))
        XCTAssertThrowsError(try Calibrator().calibrate(layer: s.layer, bits: 3, groupSize: 32, meanSquare: [1, 2])) { e in
            XCTAssertEqual(e as? CalibrationError, .inputWidthMismatch(layer: "syn", expected: 128, found: 2))
        }
        XCTAssertThrowsError(try Calibrator().calibrate(layer: s.layer, bits: 3, groupSize: 32, inputs: [], rows: 0)) { e in
            XCTAssertEqual(e as? CalibrationError, .noInputs(layer: "syn"))
        }
    }

    func testReservoirIsBoundedAndUniform() {
        let reservoir = ActivationReservoir(capacity: 50, seed: 1)
        let width = 3
        var next: Float = 0
        // 40 calls of 25 rows: 1000 rows, each row tagged with its index.
        for _ in 0..<40 {
            var x = [Float](repeating: 0, count: 25 * width)
            for r in 0..<25 { for c in 0..<width { x[r * width + c] = next }; next += 1 }
            let y = [Float](repeating: 0, count: 25)
            x.withUnsafeBufferPointer { xb in y.withUnsafeBufferPointer { reservoir.observe(layer: "l", input: xb, output: $0, rows: 25) } }
            XCTAssertLessThanOrEqual(reservoir.storedFloatCount, 50 * width)
        }
        let (values, rows) = reservoir.inputs(of: "l")
        XCTAssertEqual(rows, 50)
        XCTAssertEqual(reservoir.rowsSeen(by: "l"), 1000)
        // Rows stay intact and come from the whole stream, not only its start.
        let tags = (0..<rows).map { values[$0 * width] }
        for r in 0..<rows { XCTAssertEqual(values[r * width + 2], tags[r]) }
        XCTAssertEqual(Set(tags).count, 50)
        XCTAssertGreaterThan(tags.filter { $0 >= 500 }.count, 10)
        XCTAssertEqual(reservoir.inputs(of: "other").rows, 0)
        reservoir.reset()
        XCTAssertEqual(reservoir.storedFloatCount, 0)
    }
}
