import CKernels
import Foundation
import WhisperEngine

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
/// Rows are independent (they share `H`): they are rounded in chunks of `rowChunk` rows, with
/// GPTQ's lazy batch updates (`LazyBatchRounding`), and the chunks run in parallel.
/// Features that `H` does not couple (its diagonal blocks, `MomentBlock`) are independent too:
/// each block is factorised and compensated on its own.
///
/// Order and scales: by default the features are visited in decreasing `H_ii` (GPTQ's "act
/// order", measured better on tiny.en) and each group's scale is fixed beforehand from the
/// original weights, as in round-to-nearest (`QuantizedMatrix.groupScale`: the extreme
/// weight on the grid's end); codes pushed beyond the grid by the compensation are clamped.
/// With `activationOrder: false` the columns go in order and a group's scale is taken from
/// the weights *as updated* when its first column is reached.
///
/// Scale refit (not in GPTQ): with a row's codes fixed, the group scales that minimise the
/// same objective solve a small linear system (`ScaleRefit`). `passes` alternates the two:
/// round the codes for the scales, refit the scales for the codes, round again with the
/// refit scales, and so on; each step lowers the objective for the other's choice.
///
/// Written by hand: no Debian or Swift library implements it; the linear algebra (products,
/// Cholesky, inverse, small solves) is OpenBLAS and its LAPACK.
public struct ErrorCompensatedRounding: Sendable {
    /// Damping added to `H`'s diagonal, as a fraction of its mean diagonal (GPTQ uses 0.01),
    /// before the share that grows with `inFeatures / rows` (see `quantize`).
    public var dampening: Double
    /// Round the input features in order of decreasing `H_ii` (GPTQ's "act order") with every
    /// group's scale fixed from the original weights, instead of in column order with each
    /// group's scale taken when its first column is reached.
    public var activationOrder: Bool

    /// Rounding passes per row, each followed by a least-squares refit of the row's group
    /// scales for the codes it chose (`ScaleRefit`); every pass after the first rounds with
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

    /// Rows rounded together: one matrix product per column batch updates all of them.
    /// Chunks start at fixed rows (multiples of this), so the codes do not depend on `threads`.
    static let rowChunk = 128

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
    /// `columnBatch` (GPTQ's "lazy batch"): columns rounded, and their errors spread inside the
    /// batch, before the rest of the row takes the batch's errors in one matrix product
    /// (`LazyBatchRounding`); rounded up to whole groups. Any value gives the same codes up to
    /// the order of float sums; `inFeatures` or more rounds column by column.
    public func quantize(values: [Float], outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                         secondMoment: [Double], rows: Int, rotated: Bool = false,
                         columnBatch: Int = 64) throws -> QuantizedMatrix? {
        guard secondMoment.count == inFeatures * inFeatures else {
            throw QuantizedMatrixError.valueCount(expected: inFeatures * inFeatures, actual: secondMoment.count)
        }
        return try quantize(values: values, outFeatures: outFeatures, inFeatures: inFeatures, bits: bits,
                            groupSize: groupSize, secondMoment: SecondMoment(dense: secondMoment, width: inFeatures),
                            rows: rows, rotated: rotated, columnBatch: columnBatch)
    }

    /// The same with the second moment given by its diagonal blocks (the statistics' form): each
    /// block is rotated and factorised on its own, and the dense `[n, n]` matrix is never made. Blocks
    /// whose boundaries split a group are merged first.
    /// The moment is consumed: what this call alone holds is freed once factorised, before the rounding.
    /// Once `cancellation` is set it stops before its next `rowChunk` rows (`DecodingError.cancelled`).
    public func quantize(values: [Float], outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                         secondMoment: consuming SecondMoment, rows: Int, rotated: Bool = false,
                         columnBatch: Int = 64, cancellation: Cancellation? = nil) throws -> QuantizedMatrix? {
        guard values.count == outFeatures * inFeatures else {
            throw QuantizedMatrixError.valueCount(expected: outFeatures * inFeatures, actual: values.count)
        }
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw QuantizedMatrixError.nonFiniteWeight(row: bad / inFeatures, column: bad % inFeatures)
        }
        OpenBLASThreads.keepOnCallingThread()   // the rows below are split across `threads` here
        let n = inFeatures
        guard !rotated || QuantizedMatrix.canRotate(inFeatures: n) else {
            throw QuantizedMatrixError.rotationNeedsWholeBlocks(inFeatures: n)
        }
        guard secondMoment.width == n else {
            throw QuantizedMatrixError.valueCount(expected: n, actual: secondMoment.width)
        }
        guard let blocks = factorise(consume secondMoment, groupSize: groupSize, rows: rows, rotated: rotated) else { return nil }
        let groups = (n + groupSize - 1) / groupSize
        let rowCodes = groups * groupSize   // whole groups are whole 32-code blocks
        var codes = [Int8](repeating: 0, count: outFeatures * rowCodes)
        var halfScales = [UInt16](repeating: 0, count: outFeatures * groups)
        let batch = (max(1, columnBatch) + groupSize - 1) / groupSize * groupSize
        let chunks = (outFeatures + Self.rowChunk - 1) / Self.rowChunk
        let workers = max(1, min(threads, chunks))
        var stopped = [Bool](repeating: false, count: workers)   // per worker: it stopped before its last chunk
        values.withUnsafeBufferPointer { w in
          stopped.withUnsafeMutableBufferPointer { stopped in
            let stopped = stopped
            codes.withUnsafeMutableBufferPointer { c in
                halfScales.withUnsafeMutableBufferPointer { s in
                    let c = c, s = s
                    DispatchQueue.concurrentPerform(iterations: workers) { worker in
                        var rounding = LazyBatchRounding(blocks: blocks, n: n, groupSize: groupSize, bits: bits,
                                                         batch: batch, maxRows: Self.rowChunk)
                        var refit = passes > 0 ? ScaleRefit(blocks: blocks, n: n, groupSize: groupSize,
                                                            maxRows: Self.rowChunk) : nil
                        // [rowChunk, n]: the chunk's rows rotated (rotated matrices only), a chunk at a time: a rotated
                        // copy of the whole was as large as the values (4 MiB for a chunk of the token embedding, at a
                        // build's peak).
                        let rotatedRows = UnsafeMutablePointer<Float>.allocate(capacity: rotated ? Self.rowChunk * n : 0)
                        defer { rotatedRows.deallocate() }
                        for chunk in stride(from: worker, to: chunks, by: workers) {
                            if cancellation?.isCancelled == true {
                                stopped[worker] = true
                                break
                            }
                            let r0 = chunk * Self.rowChunk, r1 = min(outFeatures, r0 + Self.rowChunk)
                            var weights = w.baseAddress! + r0 * n
                            if rotated {
                                mq_rotate_blocks(weights, rotatedRows, (r1 - r0) * n, 0)
                                weights = UnsafePointer(rotatedRows)
                            }
                            let chunkCodes = c.baseAddress! + r0 * rowCodes
                            let chunkScales = s.baseAddress! + r0 * groups
                            refit?.prepare(weights: weights, rows: r1 - r0)   // H w per row: w stays, the codes change
                            for pass in 0..<max(1, passes) {
                                // Pass 0 in act order: every group's scale from the original weights, as
                                // round-to-nearest sets it; in input order each group's scale is set when its
                                // first column is reached. Later passes: the scales the last refit chose.
                                let scales: LazyBatchRounding.Scales = pass > 0 ? .given
                                    : activationOrder ? .fromWeights : .fromUpdatedWeights
                                rounding.round(weights: weights, rows: r1 - r0, scales: scales,
                                               codes: chunkCodes, rowCodes: rowCodes, halfScales: chunkScales)
                                refit?.refit(codes: chunkCodes, rowCodes: rowCodes, rows: r1 - r0, halfScales: chunkScales)
                            }
                        }
                    }
                }
            }
          }
        }
        if stopped.contains(true) { throw DecodingError.cancelled }
        return try QuantizedMatrix(codes: codes, halfScales: halfScales, outFeatures: outFeatures,
                                   inFeatures: inFeatures, bits: bits, groupSize: groupSize, rotated: rotated)
    }

    /// The blocks `quantize` rounds with: `moment` (of a layer with `rows` input rows) on whole groups, in the
    /// rotated basis with `rotated` (in place), factorised with its visiting order. The moment goes when this
    /// returns: the rounding holds only the factors.
    private func factorise(_ moment: consuming SecondMoment, groupSize: Int, rows: Int, rotated: Bool) -> [MomentBlock]? {
        var moment = consume moment
        if !moment.blockBoundaries(fallOnMultiplesOf: groupSize) { moment = moment.asOneBlock }
        if rotated { moment.rotate() }
        // Column visiting order: decreasing H_ii (act order) or input order.
        let n = moment.width, diagonal = moment.diagonal
        let order: [Int] = activationOrder ? (0..<n).sorted { diagonal[$0] > diagonal[$1] } : Array(0..<n)
        let damping = dampening + Double(n) / Double(max(rows, 1))
        return MomentBlock.factorise(moment, spans: moment.spans(groupSize: groupSize), order: order,
                                     damping: damping, forRefit: passes > 0)
    }
}
