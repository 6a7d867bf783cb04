import COpenBLAS
import Foundation

/// One diagonal block of a layer's input second moment `H`, as error-compensated rounding
/// (`ErrorCompensatedRounding`) uses it: the features `[start, start + size)`, which `H` couples
/// with no feature outside the block. The objective `Σ_rows (w − ŵ)ᵀ H (w − ŵ)` then splits into
/// one per block, and each block is factorised and compensated on its own. A full `H` is one
/// block; the statistics' moments (`InputCovariance`, blocks of 384 features, `SecondMoment`) give several, and
/// a block's factor costs `size³` instead of `n³` (tiny.en's MLP output layers: four blocks of
/// 384 instead of one of 1536, 16 times less).
struct MomentBlock: Sendable {
    /// First feature and number of features (whole groups, except at the end of the row).
    let start: Int, size: Int
    /// The block's features in visiting order (absolute feature indices), `[size]`.
    let order: [Int]
    /// `U`, the upper Cholesky factor of `(H_b + λI)⁻¹` in visiting order, row-major `[size, size]`
    /// (lower part 0).
    let factor: [Float]
    /// `H_b + λI` in feature order, row-major `[size, size]`, for the scale refit (empty without it).
    let damped: [Float]

    /// The blocks of `moment` on `spans` (`SecondMoment.spans`): each with `order` (every feature in
    /// visiting order) restricted to it, the factor of its damped block and, with `forRefit`, the
    /// damped block itself. The damping is `damping` times the mean of the whole diagonal, so the
    /// split changes nothing. A zero (or negative) diagonal entry, a feature that never varied, is
    /// first set to 1: its weights are rounded to nearest and receive no compensation they could
    /// not use. If a block is not positive definite, all are factorised again with ten times the
    /// damping, twice; then `nil`.
    static func factorise(_ moment: SecondMoment, spans: [(start: Int, size: Int, block: Int)], order: [Int],
                          damping: Double, forRefit: Bool) -> [MomentBlock]? {
        precondition(order.count == moment.width)
        let meanDiagonal = moment.diagonal.reduce(0, +) / Double(moment.width)
        guard meanDiagonal > 0, meanDiagonal.isFinite else { return nil }
        attempts: for attempt in 0..<3 {
            let lambda = damping * pow(10, Double(attempt)) * meanDiagonal
            var blocks: [MomentBlock] = []
            for (start, size, index) in spans {
                let b = moment.blocks[index]
                let features = order.filter { $0 >= start && $0 < start + size }
                let local = features.map { $0 - b.start }
                guard let u = inverseFactor(b.values, n: b.size, features: local, lambda: lambda) else { continue attempts }
                var damped: [Float] = []
                if forRefit {   // always the first damping, in feature order
                    let inOrder = Array((start - b.start)..<(start - b.start + size))
                    damped = dampedBlock(b.values, n: b.size, features: inOrder, lambda: damping * meanDiagonal).map { Float($0) }
                }
                blocks.append(MomentBlock(start: start, size: size, order: features, factor: u, damped: damped))
            }
            return blocks
        }
        return nil
    }

    /// `h` restricted to `features` (in that order), `[size, size]`, with `lambda` added to its
    /// diagonal (a zero or negative diagonal entry first set to 1).
    static func dampedBlock(_ h: [Double], n: Int, features: [Int], lambda: Double) -> [Double] {
        let size = features.count
        var a = [Double](repeating: 0, count: size * size)
        for x in 0..<size {
            let row = features[x] * n
            for y in 0..<size { a[x * size + y] = h[row + features[y]] }
            if a[x * size + x] <= 0 { a[x * size + x] = 1 }
            a[x * size + x] += lambda
        }
        return a
    }

    /// The upper Cholesky factor `U` of `(H_b + λI)⁻¹` for `H_b` = `h` on `features` in that order,
    /// row-major `[size, size]`, or `nil` if the damped block is not positive definite.
    static func inverseFactor(_ h: [Double], n: Int, features: [Int], lambda: Double) -> [Float]? {
        let size = features.count
        // Symmetric, so row- and column-major agree.
        var a = dampedBlock(h, n: n, features: features, lambda: lambda)
        var info: Int32 = 0
        var order = Int32(size), lda = Int32(size)
        var upper = CChar(UInt8(ascii: "U"))
        // Column-major 'U' factor of H_b, then its inverse (upper triangle), then the inverse's 'U' factor.
        dpotrf_(&upper, &order, &a, &lda, &info)
        guard info == 0 else { return nil }
        dpotri_(&upper, &order, &a, &lda, &info)
        guard info == 0 else { return nil }
        dpotrf_(&upper, &order, &a, &lda, &info)
        guard info == 0 else { return nil }
        // Column-major upper element (i, j), i <= j, is a[i + j * size]; store row-major.
        var u = [Float](repeating: 0, count: size * size)
        for j in 0..<size {
            for i in 0...j { u[i * size + j] = Float(a[i + j * size]) }
        }
        return u
    }
}
