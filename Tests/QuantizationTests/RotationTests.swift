import CKernels
import Foundation
import WhisperEngine
import XCTest

@testable import Quantization

/// The block rotation of rotated layers: the C transform against the matrix written out,
/// and rotated `QuantizedMatrix` products, rows and files against their float reference.
final class RotationTests: XCTestCase {
    /// R = H32·D/√32 element by element: H32[i][j] = (-1)^popcount(i & j) (Sylvester), D the
    /// documented signs (bit j of 0x6A09E667 set: column j negated).
    private func rotationMatrix() -> [Double] {
        (0..<32 * 32).map { k in
            let i = k / 32, j = k % 32
            let h: Double = (i & j).nonzeroBitCount % 2 == 0 ? 1 : -1
            let d: Double = (0x6A09_E667 >> j) & 1 == 1 ? -1 : 1
            return h * d / Double(32).squareRoot()
        }
    }

    /// A weight matrix whose rows each have one outlier 20x the rest, like the tied embedding's.
    private func outlierMatrix(_ out: Int, _ inp: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        var v = rng.floats(out * inp, scale: 0.05)
        for r in 0..<out { v[r * inp + Int(rng.next() % UInt64(inp))] *= 20 }
        return v
    }

    func testBlockTransformIsTheWrittenOutRotationAndItsInverse() {
        let r = rotationMatrix()
        var rng = SeededGenerator(seed: 1)
        let x = rng.floats(3 * 32, scale: 1)
        var y = [Float](repeating: .nan, count: x.count)
        mq_rotate_blocks(x, &y, x.count, 0)
        for b in 0..<3 {
            for i in 0..<32 {
                let expected = (0..<32).reduce(0.0) { $0 + r[i * 32 + $1] * Double(x[b * 32 + $1]) }
                XCTAssertEqual(Double(y[b * 32 + i]), expected, accuracy: 1e-5, "block \(b) row \(i)")
            }
        }
        var back = y
        back.withUnsafeMutableBufferPointer { mq_rotate_blocks($0.baseAddress!, $0.baseAddress!, $0.count, 1) }
        XCTAssertLessThan(maxAbsDifference(back, x), 1e-5, "the inverse undoes the rotation, in place")
        var d = x.map(Double.init)
        mq_rotate_blocks_f64(&d, d.count)
        for i in d.indices { XCTAssertEqual(d[i], Double(y[i]), accuracy: 1e-5) }
        // Orthogonal: R Rᵀ = I.
        for i in 0..<32 {
            for j in 0..<32 {
                let dot = (0..<32).reduce(0.0) { $0 + r[i * 32 + $1] * r[j * 32 + $1] }
                XCTAssertEqual(dot, i == j ? 1 : 0, accuracy: 1e-12)
            }
        }
    }

    func testRotatedProductsRowsAndDequantizedAgreeWithTheFloatReference() throws {
        let outF = 40, inF = 96
        let w = outlierMatrix(outF, inF, seed: 2)
        var rng = SeededGenerator(seed: 20)
        for bits in QuantizedMatrix.supportedBits {
            for group in [32, 64] {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits,
                                            groupSize: group, rotated: true)
                XCTAssertTrue(q.rotated)
                let deq = q.dequantized()
                var row = [Float](repeating: .nan, count: inF)
                q.copyRow(7, into: &row)
                XCTAssertLessThan(maxAbsDifference(row, Array(deq[7 * inF ..< 8 * inF])), 1e-6)
                for precision in [ActivationPrecision.float, .int8] {
                    let qp = q.withActivationPrecision(precision)
                    for m in [1, 3, 40] {   // GEMV and tiled GEMM
                        let x = rng.floats(m * inF, scale: 1)
                        var y = [Float](repeating: .nan, count: m * outF)
                        qp.multiply(x, rows: m, threads: 2, into: &y)
                        let ref = referenceProduct(x: x, rows: m, w: deq, out: outF, in: inF)
                        let scale = ref.map(abs).max()!
                        let tolerance: Float = precision == .float ? 1e-4 : 0.02
                        XCTAssertLessThan(maxAbsDifference(y, ref), tolerance * scale,
                                          "bits \(bits) group \(group) \(precision) rows \(m)")
                    }
                }
            }
        }
    }

    func testRotationLowersTheErrorOfMatricesWithOutliers() throws {
        let outF = 64, inF = 384
        let w = outlierMatrix(outF, inF, seed: 3)
        func error(_ q: QuantizedMatrix) -> Double {
            zip(q.dequantized(), w).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        }
        for bits in [3, 4] {
            let plain = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: 32)
            let rotated = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits,
                                              groupSize: 32, rotated: true)
            XCTAssertLessThan(error(rotated), 0.8 * error(plain), "\(bits) bits")
            XCTAssertEqual(rotated.byteSize, plain.byteSize, "rotation costs no bytes")
        }
    }

    func testOnlyWholeBlocksRotate() {
        XCTAssertTrue(QuantizedMatrix.canRotate(inFeatures: 384))
        XCTAssertFalse(QuantizedMatrix.canRotate(inFeatures: 240 + 8))
        XCTAssertThrowsError(try QuantizedMatrix(quantizing: [Float](repeating: 1, count: 2 * 40), outFeatures: 2,
                                                 inFeatures: 40, bits: 4, groupSize: 32, rotated: true)) {
            XCTAssertEqual($0 as? QuantizedMatrixError, .rotationNeedsWholeBlocks(inFeatures: 40))
        }
    }

    /// Compensated rounding in the rotated basis: `R H Rᵀ` equals the product written out, and
    /// the rotated result has a lower output error `E‖(W − Ŵ)x‖²` than rotated nearest rounding.
    func testCompensatedRoundingInTheRotatedBasis() throws {
        let n = 64, outF = 48, rows = 2000
        var rng = SeededGenerator(seed: 4)
        // Correlated inputs with a few loud features.
        let mix = rng.floats(n * n, scale: 0.3)
        var x = rng.floats(rows * n, scale: 1)
        x = (0..<rows * n).map { k in
            let r = k / n, c = k % n
            return (0..<n).reduce(Float(0)) { $0 + x[r * n + $1] * mix[$1 * n + c] } * (c % 16 == 0 ? 6 : 1)
        }
        var h = [Double](repeating: 0, count: n * n)
        for r in 0..<rows { for i in 0..<n { for j in 0..<n { h[i * n + j] += Double(x[r * n + i] * x[r * n + j]) / Double(rows) } } }
        let rot = rotationMatrix()
        var rh = h
        SecondMoment.rotateBothSides(&rh, n: n)
        for i in 0..<n {
            for j in 0..<n where (i / 32) == (j / 32) || (i + j) % 7 == 0 {
                var e = 0.0
                for a in 0..<n where a / 32 == i / 32 {
                    for b in 0..<n where b / 32 == j / 32 {
                        e += rot[(i % 32) * 32 + a % 32] * h[a * n + b] * rot[(j % 32) * 32 + b % 32]
                    }
                }
                XCTAssertEqual(rh[i * n + j], e, accuracy: 1e-9 * max(1, abs(e)), "[\(i), \(j)]")
            }
        }
        let w = outlierMatrix(outF, n, seed: 5)
        func outputError(_ q: QuantizedMatrix) -> Double {
            let d = zip(w, q.dequantized()).map { Double($0 - $1) }
            var s = 0.0
            for o in 0..<outF { for i in 0..<n { for j in 0..<n { s += d[o * n + i] * h[i * n + j] * d[o * n + j] } } }
            return s
        }
        let nearest = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: n, bits: 3, groupSize: 32,
                                          rotated: true)
        let compensated = try XCTUnwrap(ErrorCompensatedRounding().quantize(
            values: w, outFeatures: outF, inFeatures: n, bits: 3, groupSize: 32, secondMoment: h, rows: rows,
            rotated: true))
        XCTAssertTrue(compensated.rotated)
        XCTAssertLessThan(outputError(compensated), 0.8 * outputError(nearest))
    }
}
