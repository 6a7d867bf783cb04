import CKernels
import XCTest
import WhisperEngine

/// The few-rows product kernel (`mq_gemm_nt_small`: the decoder's cross-attention scores and
/// float layers) against a double-precision loop, over the shapes that exercise its blocks of
/// eight w rows, its tails in both dimensions and strided operands.
final class FewRowsProductTests: XCTestCase {
    func testMatchesADirectProductForEveryShape() {
        var rng = SeededGenerator(seed: 9)
        for (n, k) in [(1, 8), (7, 5), (8, 64), (13, 61), (1500, 64), (40, 384)] {
            for m in [1, 2, 5, 8, 9] {
                let ldx = k + 3, ldw = k + 5, ldy = n + 2
                let x = (0..<(m * ldx)).map { _ in Float.random(in: -1...1, using: &rng) }
                let w = (0..<(n * ldw)).map { _ in Float.random(in: -1...1, using: &rng) }
                var y = [Float](repeating: .nan, count: m * ldy)
                mq_gemm_nt_small(x, m, ldx, w, n, ldw, k, 0.5, &y, ldy)
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
}
