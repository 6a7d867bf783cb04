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
/// Scale refit (not in GPTQ): with a row's codes fixed, the group scales that minimise the
/// same objective solve a small linear system (`refitScales`). `passes` alternates the two:
/// round the codes for the scales, refit the scales for the codes, round again with the
/// refit scales, and so on; each step lowers the objective for the other's choice.
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

    /// Rounding passes per row, each followed by a least-squares refit of the row's group
    /// scales for the codes it chose (`refitScales`); every pass after the first rounds with
    /// the scales the previous one refit. 0 rounds once with the initial scales and no refit
    /// (plain GPTQ). Default 3 (measured on tiny.en, docs/myqasr-method.md section 9).
    public var passes: Int
    /// Threads the rows are shared among (the daemon's background builds use 1).
    public var threads: Int

    /// Rounding with the given damping, order, number of passes and threads.
    public init(dampening: Double = 0.01, activationOrder: Bool = true, passes: Int = 3,
                threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.dampening = dampening
        self.activationOrder = activationOrder
        self.passes = max(0, passes)
        self.threads = max(1, threads)
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
            // Symmetric, so row- and column-major agree.
            var a = Self.damped(h, n: n, by: dampening * pow(10, Double(attempt)) * meanDiagonal)
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

    /// `h` with `damp` added to its diagonal, a zero (or negative) diagonal entry first set to 1.
    static func damped(_ h: [Double], n: Int, by damp: Double) -> [Double] {
        var a = h
        for i in 0..<n {
            if a[i * n + i] <= 0 { a[i * n + i] = 1 }
            a[i * n + i] += damp
        }
        return a
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
    ///
    /// Memory: `secondMoment` is taken (`consuming`: pass a fresh array, not one kept elsewhere) and each
    /// `[n, n]` form of it is dropped once the next is made, so at most three are held at once (19 MB
    /// each in double precision for tiny.en's 1536-input layers) besides the factor.
    public func quantize(values: [Float], outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                         secondMoment: consuming [Double], rows: Int, rotated: Bool = false) throws -> QuantizedMatrix? {
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
        var values = values
        if rotated {
            values.withUnsafeMutableBufferPointer { mq_rotate_blocks($0.baseAddress!, $0.baseAddress!, $0.count, 0) }
            secondMoment = Self.rotatedBothSides(consume secondMoment, n: n)
        }
        // Column visiting order; the second moment is permuted to match.
        let order: [Int] = activationOrder
            ? (0..<n).sorted { secondMoment[$0 * n + $0] > secondMoment[$1 * n + $1] } : Array(0..<n)
        let damping = dampening + Double(n) / Double(max(rows, 1))
        // The damped H in input order, for the scale refit ([n, n], empty without it).
        var meanDiagonal = 0.0
        for i in 0..<n { meanDiagonal += secondMoment[i * n + i] / Double(n) }
        let hRefit = passes > 0 ? Self.damped(secondMoment, n: n, by: damping * meanDiagonal).map { Float($0) } : []
        var permuted = copy secondMoment
        if activationOrder {
            for a in 0..<n { for b in 0..<n { permuted[a * n + b] = secondMoment[order[a] * n + order[b]] } }
        }
        _ = consume secondMoment   // only the permuted form is needed from here, and only for the factor
        guard let u = inverseFactor(secondMoment: consume permuted, n: n, dampening: damping) else { return nil }
        let groups = (n + groupSize - 1) / groupSize
        let rowCodes = groups * groupSize   // whole groups are whole 32-code blocks
        let limit = Float(QuantizedMatrix.codeLimit(bits: bits))
        var codes = [Int8](repeating: 0, count: outFeatures * rowCodes)
        var halfScales = [UInt16](repeating: 0, count: outFeatures * groups)
        let workers = max(1, min(threads, outFeatures / 64))
        let rowsPerWorker = (outFeatures + workers - 1) / workers
        values.withUnsafeBufferPointer { w in
            u.withUnsafeBufferPointer { u in
                codes.withUnsafeMutableBufferPointer { c in
                    halfScales.withUnsafeMutableBufferPointer { s in
                        let c = c, s = s
                        DispatchQueue.concurrentPerform(iterations: workers) { worker in
                            var row = [Float](repeating: 0, count: n)
                            var hw = [Float](repeating: 0, count: passes > 0 ? n : 0)   // H w of the row, for the refit
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
                                    if passes > 0 {   // the same for every pass: the codes change, w does not
                                        hRefit.withUnsafeBufferPointer { h in
                                            hw.withUnsafeMutableBufferPointer {
                                                cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(n), 1, h.baseAddress!,
                                                            Int32(n), wr, 1, 0, $0.baseAddress!, 1)
                                            }
                                        }
                                    }
                                    for pass in 0..<max(1, passes) {
                                        if pass > 0 {   // round again with the scales refit last pass
                                            scales.withUnsafeMutableBufferPointer {
                                                mq_f16_to_f32(s.baseAddress! + r * groups, $0.baseAddress!, groups)
                                            }
                                        }
                                        // row[k] is the weight of input feature order[k].
                                        for k in 0..<n { row[k] = wr[order[k]] }
                                        for k in 0..<n {
                                            let i = order[k]
                                            if !activationOrder && pass == 0 && i % groupSize == 0 {
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
                                        guard passes > 0 else { break }
                                        hRefit.withUnsafeBufferPointer { h in
                                            hw.withUnsafeBufferPointer { hw in
                                                Self.refitScales(codes: c.baseAddress! + r * rowCodes, hw: hw.baseAddress!,
                                                                 h: h.baseAddress!, n: n, groupSize: groupSize,
                                                                 halfScales: s.baseAddress! + r * groups)
                                            }
                                        }
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

    /// Least-squares scales for one row's codes: with `Q[n, groups]` holding code i in column
    /// `i / groupSize`, the scales s minimising `(w − Q s)ᵀ H (w − Q s)` solve
    /// `(Qᵀ H Q) s = Qᵀ H w`. The codes stay; a group whose codes are all zero keeps its scale.
    /// If the system cannot be solved, or a scale does not fit a half float, the row keeps
    /// its scales. `hw` is `H w` for the row's weights w, `h` is `[n, n]`; `halfScales` is the
    /// row's `[groups]`.
    static func refitScales(codes: UnsafePointer<Int8>, hw: UnsafePointer<Float>, h: UnsafePointer<Float>,
                            n: Int, groupSize: Int, halfScales: UnsafeMutablePointer<UInt16>) {
        let groups = (n + groupSize - 1) / groupSize
        var m = [Double](repeating: 0, count: groups * groups)   // Qᵀ H Q  [groups, groups]
        var b = [Double](repeating: 0, count: groups)            // Qᵀ H w  [groups]
        // With OpenBLAS (float sums in Swift do not vectorise): Y[:, g] = H[:, g] q_g, the
        // product with group g's codes alone; then row g of QᵀHQ is q_gᵀ Y[g rows, :].
        let scratch = n + n * groups + groups
        withUnsafeTemporaryAllocation(of: Float.self, capacity: scratch) { buffer in
            let q = buffer.baseAddress!        // codes as floats [n]
            let y = q + n                      // [n, groups]
            let row = y + n * groups           // [groups]
            for j in 0..<n { q[j] = Float(codes[j]) }
            let size = Int32(n), width = Int32(groups)
            for g in 0..<groups {
                let c0 = g * groupSize, count = Int32(min(n, c0 + groupSize) - c0)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, size, count, 1, h + c0, size, q + c0, 1, 0, y + g, width)
            }
            for g in 0..<groups {
                let c0 = g * groupSize, count = Int32(min(n, c0 + groupSize) - c0)
                cblas_sgemv(CblasRowMajor, CblasTrans, count, width, 1, y + c0 * groups, width, q + c0, 1, 0, row, 1)
                for k in 0..<groups { m[g * groups + k] = Double(row[k]) }
                b[g] = Double(cblas_sdot(count, q + c0, 1, hw + c0, 1))
            }
        }
        let active = (0..<groups).filter { m[$0 * groups + $0] > 0 }
        guard !active.isEmpty else { return }
        var size = Int32(active.count), one: Int32 = 1, info: Int32 = 0
        var a = active.flatMap { g in active.map { m[g * groups + $0] } }   // symmetric: either major
        var x = active.map { b[$0] }
        var upper = CChar(UInt8(ascii: "U"))
        dposv_(&upper, &size, &one, &a, &size, &x, &size, &info)
        guard info == 0 else { return }
        var fitted = x.map { Float($0) }
        var halves = [UInt16](repeating: 0, count: active.count)
        mq_f32_to_f16(&fitted, &halves, active.count)
        var back = [Float](repeating: 0, count: active.count)
        mq_f16_to_f32(&halves, &back, active.count)
        guard back.allSatisfy({ $0.isFinite }) else { return }
        for (k, g) in active.enumerated() { halfScales[g] = halves[k] }
    }

    /// `R H Rᵀ` for a symmetric `h[n, n]`: each row rotated (`H Rᵀ`), the result transposed
    /// (`R H`, as H is symmetric) and its rows rotated again.
    static func rotatedBothSides(_ h: consuming [Double], n: Int) -> [Double] {
        var a = consume h
        a.withUnsafeMutableBufferPointer { mq_rotate_blocks_f64($0.baseAddress!, $0.count) }
        var t = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { t[j * n + i] = a[i * n + j] } }
        t.withUnsafeMutableBufferPointer { mq_rotate_blocks_f64($0.baseAddress!, $0.count) }
        return t
    }
}
