import CKernels
import XCTest
import WhisperEngine

/// The few-rows product kernels (`mq_gemm_nt_small`: the decoder's cross-attention scores and
/// float layers; `mq_gemm_nt_small_h` and `mq_gemm_nn_small_h`: cross-attention over half-precision
/// keys and values; `mq_gemm_nt_small_q8` and `mq_gemm_nn_small_q8`: over the silent window's int8 ones)
/// against a double-precision loop, over the shapes that
/// exercise their blocks of eight, their tails in both dimensions and strided operands.
final class FewRowsProductTests: XCTestCase {
    static let shapes = [(1, 8), (7, 5), (8, 64), (13, 61), (1500, 64), (40, 384)]
    static let rowCounts = [1, 2, 5, 8, 9, 17]

    func testMatchesADirectProductForEveryShape() {
        checkTransposedProduct(.float, seed: 9)
    }

    /// With w in half precision: the product of w's half values, widened exactly.
    func testHalfMatchesADirectProductOfTheHalfValues() {
        checkTransposedProduct(.half, seed: 9)
    }

    /// With w in int8 codes and a scale per row: the product of the values the codes stand for.
    func testInt8MatchesADirectProductOfTheCodedValues() {
        checkTransposedProduct(.int8, seed: 12)
    }

    private enum Form { case float, half, int8 }

    private func checkTransposedProduct(_ form: Form, seed: UInt64) {
        var rng = SeededGenerator(seed: seed)
        for (n, k) in Self.shapes {
            for m in Self.rowCounts {
                let ldx = k + 3, ldw = k + 5, ldy = n + 2
                let x = (0..<(m * ldx)).map { _ in Float.random(in: -1...1, using: &rng) }
                var w = (0..<(n * ldw)).map { _ in Float.random(in: -1...1, using: &rng) }
                var y = [Float](repeating: .nan, count: m * ldy)
                switch form {
                case .float:
                    mq_gemm_nt_small(x, m, ldx, w, n, ldw, k, 0.5, &y, ldy)
                case .half:
                    let bits = w.map { Float16($0).bitPattern }
                    w = bits.map { Float(Float16(bitPattern: $0)) }
                    mq_gemm_nt_small_h(x, m, ldx, bits, n, ldw, k, 0.5, &y, ldy)
                case .int8:
                    let codes = w.map { Int8(($0 * 127).rounded()) }
                    let scales = (0..<n).map { _ in Float.random(in: 0.001...0.02, using: &rng) }
                    w = (0..<(n * ldw)).map { Float(codes[$0]) * scales[$0 / ldw] }
                    mq_gemm_nt_small_q8(x, m, ldx, codes, scales, n, ldw, k, 0.5, &y, ldy)
                }
                var worst = 0.0
                for i in 0..<m {
                    for j in 0..<n {
                        var direct = 0.0
                        for t in 0..<k { direct += Double(x[i * ldx + t]) * Double(w[j * ldw + t]) }
                        worst = max(worst, abs(Double(y[i * ldy + j]) - 0.5 * direct))
                    }
                    // Columns past n are left alone.
                    XCTAssertTrue(y[(i * ldy + n)..<(i * ldy + ldy)].allSatisfy(\.isNaN), "m \(m) n \(n) k \(k): wrote past n")
                }
                XCTAssertLessThan(worst, 1e-4, "m \(m) n \(n) k \(k)")
            }
        }
    }

    /// y += x · v with v in half precision: the product of v's half values added to what y held.
    func testHalfRightHandSideAccumulatesADirectProduct() {
        var rng = SeededGenerator(seed: 10)
        for (k, n) in Self.shapes {
            for m in Self.rowCounts {
                let ldx = k + 3, ldv = n + 5, ldy = n + 2
                let x = (0..<(m * ldx)).map { _ in Float.random(in: 0...1, using: &rng) }
                let bits = (0..<(k * ldv)).map { _ in Float16(Float.random(in: -1...1, using: &rng)).bitPattern }
                let start = (0..<(m * ldy)).map { j in j % ldy < n ? Float.random(in: -1...1, using: &rng) : .nan }
                var y = start
                mq_gemm_nn_small_h(x, m, ldx, bits, k, n, ldv, &y, ldy)
                var worst = 0.0
                for i in 0..<m {
                    for j in 0..<n {
                        var direct = Double(start[i * ldy + j])
                        for t in 0..<k { direct += Double(x[i * ldx + t]) * Double(Float16(bitPattern: bits[t * ldv + j])) }
                        worst = max(worst, abs(Double(y[i * ldy + j]) - direct) / max(1, abs(direct)))
                    }
                    XCTAssertTrue(y[(i * ldy + n)..<(i * ldy + ldy)].allSatisfy(\.isNaN), "m \(m) n \(n) k \(k): wrote past n")
                }
                XCTAssertLessThan(worst, 1e-4, "m \(m) n \(n) k \(k)")
            }
        }
    }

    /// Rows of int8 codes: each row's scale is its largest magnitude / 127, its largest value is ±127, and
    /// every value is within half a step of its code times the scale; a row of zeros has scale 0.
    func testRowsRoundToInt8WithinHalfAStep() {
        var rng = SeededGenerator(seed: 11)
        let rows = 9, width = 64
        var x = (0..<(rows * width)).map { _ in Float.random(in: -3...3, using: &rng) }
        for t in 0..<width { x[4 * width + t] = 0 }
        var codes = [Int8](repeating: 0, count: rows * width), scales = [Float](repeating: .nan, count: rows)
        mq_quantize_rows_q8(x, rows, width, &codes, &scales)
        for r in 0..<rows {
            let row = x[(r * width)..<((r + 1) * width)], largest = row.map(abs).max()!
            XCTAssertEqual(scales[r], largest / 127, accuracy: 1e-7)
            if largest > 0 { XCTAssertEqual(codes[(r * width)..<((r + 1) * width)].map { abs(Int($0)) }.max(), 127) }
            for t in 0..<width {
                XCTAssertLessThanOrEqual(abs(Float(codes[r * width + t]) * scales[r] - x[r * width + t]), scales[r] / 2 * 1.0001)
            }
        }
    }

    /// y += x · v with v in int8 codes and a scale per row: the product of the coded values added to y.
    func testInt8RightHandSideAccumulatesADirectProduct() {
        var rng = SeededGenerator(seed: 13)
        for (k, n) in Self.shapes {
            for m in Self.rowCounts {
                let ldx = k + 3, ldv = n + 5, ldy = n + 2
                let x = (0..<(m * ldx)).map { _ in Float.random(in: 0...1, using: &rng) }
                let codes = (0..<(k * ldv)).map { _ in Int8.random(in: -127...127, using: &rng) }
                let scales = (0..<k).map { _ in Float.random(in: 0.001...0.02, using: &rng) }
                let start = (0..<(m * ldy)).map { j in j % ldy < n ? Float.random(in: -1...1, using: &rng) : .nan }
                var y = start
                mq_gemm_nn_small_q8(x, m, ldx, codes, scales, k, n, ldv, &y, ldy)
                var worst = 0.0
                for i in 0..<m {
                    for j in 0..<n {
                        var direct = Double(start[i * ldy + j])
                        for t in 0..<k { direct += Double(x[i * ldx + t]) * Double(codes[t * ldv + j]) * Double(scales[t]) }
                        worst = max(worst, abs(Double(y[i * ldy + j]) - direct) / max(1, abs(direct)))
                    }
                    XCTAssertTrue(y[(i * ldy + n)..<(i * ldy + ldy)].allSatisfy(\.isNaN), "m \(m) n \(n) k \(k): wrote past n")
                }
                XCTAssertLessThan(worst, 1e-4, "m \(m) n \(n) k \(k)")
            }
        }
    }
}
