import CKernels
import COpenBLAS
import Foundation

/// Error-compensated rounding (the GPTQ procedure, Frantar et al., ICLR 2023), written here
/// for this project's grid: every weight still ends on its group's grid (scale times an
/// integer code, no training), but the codes are chosen one input column at a time, and the
/// rounding error of each column is pushed onto the columns not yet rounded so that the
/// layer's *output* error on the calibration inputs stays small:
///
///     minimise  E_x ‖(W − Ŵ) x‖²  =  Σ_rows (w − ŵ)ᵀ H (w − ŵ),   H = E[x xᵀ]  (+ damping)
///
/// With `U` the upper Cholesky factor of `H⁻¹` (`H⁻¹ = Uᵀ U`), column `i` of a row is
/// rounded, its error `e = (w_i − ŵ_i) / U_ii` is spread as `w_j −= e · U_ij` for `j > i`.
/// Rows are independent (they share `H`), so they run in parallel.
///
/// Order and scales: by default the features are visited in decreasing `H_ii` (GPTQ's "act
/// order", measured better on tiny.en) and each group's scale is fixed beforehand from the
/// original weights, as in round-to-nearest (`QuantizedMatrix.groupScale`: the extreme
/// weight on the grid's end); codes pushed beyond the grid by the compensation are clamped.
/// With `activationOrder: false` the columns go in order and a group's scale is taken from
/// the weights *as updated* when its first column is reached.
///
/// Written by hand: no Debian or Swift library implements it; the linear algebra (Cholesky,
/// inverse) is LAPACK's from OpenBLAS.
public struct ErrorCompensatedRounding: Sendable {
    /// Damping added to `H`'s diagonal, as a fraction of its mean diagonal (GPTQ uses 0.01),
    /// before the share that grows with `inFeatures / rows` (see `quantize`).
    public var dampening: Double
    /// Round the input features in order of decreasing `H_ii` (GPTQ's "act order") with every
    /// group's scale fixed from the original weights, instead of in column order with each
    /// group's scale taken when its first column is reached.
    public var activationOrder: Bool

    /// Rounding with the given damping and order.
    public init(dampening: Double = 0.01, activationOrder: Bool = true) {
        self.dampening = dampening
        self.activationOrder = activationOrder
    }

    /// The upper Cholesky factor `U` of `(H + λI)⁻¹`, row-major `[n, n]` (lower part 0), or
    /// `nil` if `H` is not positive definite even after damping ten times harder.
    /// Input features that never varied (`H_ii = 0`) get `H_ii = 1`: their weights are
    /// rounded to nearest and receive no compensation they could not use.
    func inverseFactor(secondMoment h: [Double], n: Int, dampening: Double) -> [Float]? {
        precondition(h.count == n * n)
        var meanDiagonal = 0.0
        for i in 0..<n { meanDiagonal += h[i * n + i] }
        meanDiagonal /= Double(n)
        guard meanDiagonal > 0, meanDiagonal.isFinite else { return nil }
        for attempt in 0..<3 {
            var a = h   // symmetric, so row- and column-major agree
            let damp = dampening * pow(10, Double(attempt)) * meanDiagonal
            for i in 0..<n {
                if a[i * n + i] <= 0 { a[i * n + i] = 1 }
                a[i * n + i] += damp
            }
            var info: Int32 = 0
            var size = Int32(n), lda = Int32(n)
            var upper = CChar(UInt8(ascii: "U"))
            // Column-major 'U' factor of H, then H⁻¹ (upper triangle), then its 'U' factor.
            dpotrf_(&upper, &size, &a, &lda, &info)
            guard info == 0 else { continue }
            dpotri_(&upper, &size, &a, &lda, &info)
            guard info == 0 else { continue }
            dpotrf_(&upper, &size, &a, &lda, &info)
            guard info == 0 else { continue }
            // Column-major upper element (i, j), i <= j, is a[i + j*n]; store row-major.
            var u = [Float](repeating: 0, count: n * n)
            for j in 0..<n {
                for i in 0...j { u[i * n + j] = Float(a[i + j * n]) }
            }
            return u
        }
        return nil
    }

    /// Quantizes row-major `values[outFeatures, inFeatures]` at `bits` with groups of
    /// `groupSize` input features, compensating each rounding error through `secondMoment`
    /// (`E[x xᵀ]`, `[inFeatures, inFeatures]`, estimated from `rows` input rows). Returns
    /// `nil` when `secondMoment` cannot be factorised (the caller then rounds to nearest).
    ///
    /// The damping is `dampening + inFeatures / rows` times the mean diagonal: a layer that saw
    /// fewer rows than it has inputs (the decoder's, which see one row per token) has a
    /// singular `H`, and compensating along directions the calibration never visited only
    /// adds error elsewhere; the extra damping pulls such layers towards plain rounding.
    ///
    /// With `rotated`, the codes quantize `W·Rᵀ` (see `QuantizedMatrix.rotated`): the weights
    /// and the second moment move to the rotated basis first (`R H Rᵀ`, the moment of `R x`).
    public func quantize(values: [Float], outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                         secondMoment: [Double], rows: Int, rotated: Bool = false) throws -> QuantizedMatrix? {
        guard values.count == outFeatures * inFeatures else {
            throw QuantizedMatrixError.valueCount(expected: outFeatures * inFeatures, actual: values.count)
        }
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw QuantizedMatrixError.nonFiniteWeight(row: bad / inFeatures, column: bad % inFeatures)
        }
        let n = inFeatures
        guard !rotated || QuantizedMatrix.canRotate(inFeatures: n) else {
            throw QuantizedMatrixError.rotationNeedsWholeBlocks(inFeatures: n)
        }
        var values = values, secondMoment = secondMoment
        if rotated {
            values.withUnsafeMutableBufferPointer { mq_rotate_blocks($0.baseAddress!, $0.baseAddress!, $0.count, 0) }
            secondMoment = Self.rotatedBothSides(secondMoment, n: n)
        }
        // Column visiting order; the second moment is permuted to match.
        let order: [Int] = activationOrder
            ? (0..<n).sorted { secondMoment[$0 * n + $0] > secondMoment[$1 * n + $1] } : Array(0..<n)
        var permuted = secondMoment
        if activationOrder {
            for a in 0..<n { for b in 0..<n { permuted[a * n + b] = secondMoment[order[a] * n + order[b]] } }
        }
        let damping = dampening + Double(n) / Double(max(rows, 1))
        guard let u = inverseFactor(secondMoment: permuted, n: n, dampening: damping) else { return nil }
        let groups = (n + groupSize - 1) / groupSize
        let rowCodes = groups * groupSize   // whole groups are whole 32-code blocks
        let limit = Float(QuantizedMatrix.codeLimit(bits: bits))
        var codes = [Int8](repeating: 0, count: outFeatures * rowCodes)
        var halfScales = [UInt16](repeating: 0, count: outFeatures * groups)
        let workers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, outFeatures / 64))
        let rowsPerWorker = (outFeatures + workers - 1) / workers
        values.withUnsafeBufferPointer { w in
            u.withUnsafeBufferPointer { u in
                codes.withUnsafeMutableBufferPointer { c in
                    halfScales.withUnsafeMutableBufferPointer { s in
                        let c = c, s = s
                        DispatchQueue.concurrentPerform(iterations: workers) { worker in
                            var row = [Float](repeating: 0, count: n)
                            let r0 = worker * rowsPerWorker, r1 = min(outFeatures, r0 + rowsPerWorker)
                            guard r0 < r1 else { return }
                            var scales = [Float](repeating: 0, count: groups)
                            row.withUnsafeMutableBufferPointer { row in
                                for r in r0..<r1 {
                                    let wr = w.baseAddress! + r * n
                                    for g in 0..<groups where activationOrder {
                                        let c0 = g * groupSize, c1 = min(n, c0 + groupSize)
                                        let extreme = QuantizedMatrix.extreme(UnsafeBufferPointer(start: wr + c0, count: c1 - c0))
                                        let (half, scale) = QuantizedMatrix.groupScale(extreme: extreme, clipRatio: 1, bits: bits)
                                        s[r * groups + g] = half
                                        scales[g] = scale
                                    }
                                    // row[k] is the weight of input feature order[k].
                                    for k in 0..<n { row[k] = wr[order[k]] }
                                    for k in 0..<n {
                                        let i = order[k]
                                        if !activationOrder && i % groupSize == 0 {
                                            // Scale from the weights as updated so far (columns in order).
                                            let g = i / groupSize, c1 = min(n, i + groupSize)
                                            let extreme = QuantizedMatrix.extreme(UnsafeBufferPointer(rebasing: row[i..<c1]))
                                            let (half, scale) = QuantizedMatrix.groupScale(extreme: extreme, clipRatio: 1, bits: bits)
                                            s[r * groups + g] = half
                                            scales[g] = scale
                                        }
                                        let scale = scales[i / groupSize]
                                        let q = scale == 0 ? 0 : max(-limit, min(limit - 1, (row[k] / scale).rounded()))
                                        c[r * rowCodes + i] = Int8(q)
                                        let e = (row[k] - q * scale) / u[k * n + k]
                                        // Spread the error over the features not yet rounded.
                                        let uk = u.baseAddress! + k * n
                                        for j in (k + 1)..<n { row[j] -= e * uk[j] }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return try QuantizedMatrix(codes: codes, halfScales: halfScales, outFeatures: outFeatures,
                                   inFeatures: inFeatures, bits: bits, groupSize: groupSize, rotated: rotated)
    }

    /// `R H Rᵀ` for a symmetric `h[n, n]`: each row rotated (`H Rᵀ`), the result transposed
    /// (`R H`, as H is symmetric) and its rows rotated again.
    static func rotatedBothSides(_ h: [Double], n: Int) -> [Double] {
        var a = h
        a.withUnsafeMutableBufferPointer { mq_rotate_blocks_f64($0.baseAddress!, $0.count) }
        var t = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { t[j * n + i] = a[i * n + j] } }
        t.withUnsafeMutableBufferPointer { mq_rotate_blocks_f64($0.baseAddress!, $0.count) }
        return t
    }
}
