import Foundation
import XCTest
import WhisperEngine

/// `NextTokenDivergence` from a reference's log-probabilities kept in half precision
/// (`ReferenceDistributions`): the KL within a thousandth of a nat of the one from float32 rows, and the
/// top-1 agreement taken from the reference's own leader (random logits leave many near-ties that the rounding
/// would break either way).
final class DivergenceTests: XCTestCase {
    private func logSoftmax(_ logits: [Float]) -> [Float] {
        let top = logits.max()!
        let logSum = Foundation.log(logits.reduce(0.0) { $0 + Foundation.exp(Double($1 - top)) })
        return logits.map { Float(Double($0 - top) - logSum) }
    }

    func testHalfPrecisionReferenceGivesTheKLWithinAThousandthOfANat() {
        var rng = SeededGenerator(seed: 21)
        let vocabulary = 51_864
        for spread in [Float(0.1), 1, 3] {
            let p = logSoftmax((0..<vocabulary).map { _ in Float.random(in: -8...8, using: &rng) })
            let q = logSoftmax(p.map { $0 + Float.random(in: -spread...spread, using: &rng) })
            var exact = 0.0
            for (a, b) in zip(p, q) { exact += Foundation.exp(Double(a)) * Double(a - b) }
            let half = ArraySlice(p.map { Float16($0) })
            var measured = NextTokenDivergence(), itself = NextTokenDivergence()
            let top = p.indices.max(by: { p[$0] < p[$1] })!
            q.withUnsafeBufferPointer { measured.add(reference: half, top: top, model: $0) }
            p.withUnsafeBufferPointer { itself.add(reference: half, top: top, model: $0) }
            XCTAssertGreaterThan(exact, 0.001, "spread \(spread)")
            XCTAssertEqual(measured.meanKL, exact, accuracy: 1e-3, "spread \(spread)")
            XCTAssertLessThan(itself.meanKL, 1e-3)
            XCTAssertEqual(itself.topOneAgreement, 1)
        }
    }
}
