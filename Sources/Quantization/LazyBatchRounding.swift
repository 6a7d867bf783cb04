import CKernels
import COpenBLAS
import Foundation

/// The rounding step of error-compensated rounding (`ErrorCompensatedRounding`) for a chunk of
/// rows, block by block of the second moment (`MomentBlock`), with GPTQ's lazy batch updates
/// (Frantar et al., ICLR 2023, section 3, step 2). A block's columns are visited in its order in
/// batches; inside a batch each row rounds column `k` and spreads its error `e_k` over the
/// batch's later columns at once (`x_j −= e_k · U_kj`); the columns after the batch then take
/// all of the batch's errors in one product,
///
///     X[:, after] −= E · U[batch, after]      X [rows, size], E [rows, batch], U [size, size]
///
/// with OpenBLAS `sgemm`. These are the updates of rounding column by column, summed in another
/// order: what was a pass over `U` per row and column is one matrix product per batch for the
/// chunk's rows.
struct LazyBatchRounding {
    /// Where the scales of a pass come from.
    enum Scales {
        /// Each group's extreme original weight, as round-to-nearest sets it (act order, first pass).
        case fromWeights
        /// Each group's extreme weight as updated when its first column is reached (input order,
        /// first pass; batches are whole groups, so the group is up to date then).
        case fromUpdatedWeights
        /// The half-precision scales already in `halfScales` (later passes: the last refit's).
        case given
    }

    let blocks: [MomentBlock]
    let n: Int, groupSize: Int, bits: Int
    /// Columns per batch, a whole number of groups.
    let batch: Int
    /// Scratch for at most `maxRows` rows: the block's weights in visiting order as updated
    /// `[rows, size]`; the batch's columns of it, transposed, `[batch, rows]`, and their scaled
    /// errors `[batch, rows]`; the scales as floats, transposed, `[groups, rows]`; one group's
    /// weights, or one row's scales.
    private var x: [Float], batchColumns: [Float], errors: [Float], scales: [Float], group: [Float]
    private let maxRows: Int

    init(blocks: [MomentBlock], n: Int, groupSize: Int, bits: Int, batch: Int, maxRows: Int) {
        precondition(batch % groupSize == 0, "LazyBatchRounding: a batch is whole groups")
        self.blocks = blocks
        self.n = n
        self.groupSize = groupSize
        self.bits = bits
        self.batch = batch
        self.maxRows = maxRows
        let largest = blocks.map(\.size).max() ?? 0
        x = [Float](repeating: 0, count: maxRows * largest)
        batchColumns = [Float](repeating: 0, count: batch * maxRows)
        errors = batchColumns
        scales = [Float](repeating: 0, count: maxRows * ((n + groupSize - 1) / groupSize))
        group = [Float](repeating: 0, count: max(groupSize, (n + groupSize - 1) / groupSize))
    }

    /// Rounds `rows` rows of `weights` (`[rows, n]`) into `codes` (`[rows, rowCodes]`), with the
    /// scales `mode` says; `halfScales` (`[rows, groups]`) is read (`given`) or written.
    ///
    /// Inside a batch the rows go together column by column (the batch is held transposed): one
    /// column's codes and errors for all rows, then its errors spread over the batch's later
    /// columns with one rank-1 update (`sger`). The rows do not wait on each other, so the
    /// divisions and roundings of different rows overlap.
    mutating func round(weights w: UnsafePointer<Float>, rows m: Int, scales mode: Scales,
                        codes: UnsafeMutablePointer<Int8>, rowCodes: Int, halfScales: UnsafeMutablePointer<UInt16>) {
        precondition(m <= maxRows)
        let groups = (n + groupSize - 1) / groupSize
        let (n, groupSize, bits, batch, blocks) = (n, groupSize, bits, batch, blocks)
        let limit = Float(QuantizedMatrix.codeLimit(bits: bits))
        withScratch { x, xt, et, s, group in
            // s[g, r]: row r's scale of group g.
            switch mode {
            case .fromWeights:
                for r in 0..<m {
                    for g in 0..<groups {
                        let c0 = g * groupSize, c1 = min(n, c0 + groupSize)
                        let extreme = QuantizedMatrix.extreme(UnsafeBufferPointer(start: w + r * n + c0, count: c1 - c0))
                        let (half, scale) = QuantizedMatrix.groupScale(extreme: extreme, clipRatio: 1, bits: bits)
                        halfScales[r * groups + g] = half
                        s[g * m + r] = scale
                    }
                }
            case .given:
                for r in 0..<m {
                    mq_f16_to_f32(halfScales + r * groups, group, groups)
                    for g in 0..<groups { s[g * m + r] = group[g] }
                }
            case .fromUpdatedWeights:
                break
            }
            for block in blocks {
                let size = block.size
                block.order.withUnsafeBufferPointer { order in
                    // x[r, k]: row r's weight of feature order[k].
                    for r in 0..<m {
                        for k in 0..<size { x[r * size + k] = w[r * n + order[k]] }
                    }
                    block.factor.withUnsafeBufferPointer { u in
                        let u = u.baseAddress!
                        for k0 in stride(from: 0, to: size, by: batch) {
                            let k1 = min(size, k0 + batch), width = k1 - k0
                            // xt[c, r] = x[r, k0 + c]
                            for r in 0..<m {
                                for c in 0..<width { xt[c * m + r] = x[r * size + k0 + c] }
                            }
                            for c in 0..<width {
                                let k = k0 + c, i = order[k], g = i / groupSize
                                let column = xt + c * m, e = et + c * m, sg = s + g * m
                                if mode == .fromUpdatedWeights && i % groupSize == 0 {
                                    // The group is columns c..<c + count of this batch, up to date.
                                    let count = min(n, i + groupSize) - i
                                    for r in 0..<m {
                                        for a in 0..<count { group[a] = xt[(c + a) * m + r] }
                                        let extreme = QuantizedMatrix.extreme(UnsafeBufferPointer(start: group, count: count))
                                        let (half, scale) = QuantizedMatrix.groupScale(extreme: extreme, clipRatio: 1, bits: bits)
                                        halfScales[r * groups + g] = half
                                        sg[r] = scale
                                    }
                                }
                                let diagonal = u[k * size + k]
                                for r in 0..<m {
                                    let scale = sg[r]
                                    let q = scale == 0 ? 0 : max(-limit, min(limit - 1, (column[r] / scale).rounded()))
                                    codes[r * rowCodes + i] = Int8(q)
                                    e[r] = (column[r] - q * scale) / diagonal
                                }
                                guard c + 1 < width else { continue }
                                // Spread the errors over the batch's later columns: xt[c+1..., :] −= U[k, k+1..<k1]ᵀ eᵀ
                                cblas_sger(CblasRowMajor, Int32(width - c - 1), Int32(m), -1, u + k * size + k + 1, 1, e, 1,
                                           column + m, Int32(m))
                            }
                            guard k1 < size else { continue }
                            // x[:, k1...] −= E · U[k0..<k1, k1...], E = etᵀ [m, width]
                            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(size - k1), Int32(width),
                                        -1, et, Int32(m), u + k0 * size + k1, Int32(size), 1, x + k1, Int32(size))
                        }
                    }
                }
            }
        }
    }

    private mutating func withScratch(_ body: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>,
                                               UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) -> Void) {
        x.withUnsafeMutableBufferPointer { x in
            batchColumns.withUnsafeMutableBufferPointer { xt in
                errors.withUnsafeMutableBufferPointer { et in
                    scales.withUnsafeMutableBufferPointer { s in
                        group.withUnsafeMutableBufferPointer { g in
                            body(x.baseAddress!, xt.baseAddress!, et.baseAddress!, s.baseAddress!, g.baseAddress!)
                        }
                    }
                }
            }
        }
    }
}
