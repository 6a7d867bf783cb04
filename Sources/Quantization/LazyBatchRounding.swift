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
    /// `[rows, size]`, the batch's scaled errors `[rows, batch]`, the scales as floats `[rows, groups]`.
    private var x: [Float], errors: [Float], scales: [Float]

    init(blocks: [MomentBlock], n: Int, groupSize: Int, bits: Int, batch: Int, maxRows: Int) {
        precondition(batch % groupSize == 0, "LazyBatchRounding: a batch is whole groups")
        self.blocks = blocks
        self.n = n
        self.groupSize = groupSize
        self.bits = bits
        self.batch = batch
        let largest = blocks.map(\.size).max() ?? 0
        x = [Float](repeating: 0, count: maxRows * largest)
        errors = [Float](repeating: 0, count: maxRows * batch)
        scales = [Float](repeating: 0, count: maxRows * ((n + groupSize - 1) / groupSize))
    }

    /// Rounds `rows` rows of `weights` (`[rows, n]`) into `codes` (`[rows, rowCodes]`), with the
    /// scales `mode` says; `halfScales` (`[rows, groups]`) is read (`given`) or written.
    mutating func round(weights w: UnsafePointer<Float>, rows m: Int, scales mode: Scales,
                        codes: UnsafeMutablePointer<Int8>, rowCodes: Int, halfScales: UnsafeMutablePointer<UInt16>) {
        let groups = (n + groupSize - 1) / groupSize
        let (n, groupSize, bits, batch, blocks) = (n, groupSize, bits, batch, blocks)
        let limit = Float(QuantizedMatrix.codeLimit(bits: bits))
        x.withUnsafeMutableBufferPointer { x in
            errors.withUnsafeMutableBufferPointer { e in
                scales.withUnsafeMutableBufferPointer { s in
                    let x = x.baseAddress!, e = e.baseAddress!, s = s.baseAddress!
                    switch mode {
                    case .fromWeights:
                        for r in 0..<m {
                            for g in 0..<groups {
                                let c0 = g * groupSize, c1 = min(n, c0 + groupSize)
                                let extreme = QuantizedMatrix.extreme(UnsafeBufferPointer(start: w + r * n + c0, count: c1 - c0))
                                let (half, scale) = QuantizedMatrix.groupScale(extreme: extreme, clipRatio: 1, bits: bits)
                                halfScales[r * groups + g] = half
                                s[r * groups + g] = scale
                            }
                        }
                    case .given:
                        mq_f16_to_f32(halfScales, s, m * groups)
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
                                    for r in 0..<m {
                                        let xr = x + r * size, er = e + r * width, sr = s + r * groups
                                        for k in k0..<k1 {
                                            let i = order[k], g = i / groupSize
                                            if mode == .fromUpdatedWeights && i % groupSize == 0 {
                                                let count = min(n, i + groupSize) - i
                                                let extreme = QuantizedMatrix.extreme(UnsafeBufferPointer(start: xr + k, count: count))
                                                let (half, scale) = QuantizedMatrix.groupScale(extreme: extreme, clipRatio: 1, bits: bits)
                                                halfScales[r * groups + g] = half
                                                sr[g] = scale
                                            }
                                            let scale = sr[g]
                                            let q = scale == 0 ? 0 : max(-limit, min(limit - 1, (xr[k] / scale).rounded()))
                                            codes[r * rowCodes + i] = Int8(q)
                                            let ek = (xr[k] - q * scale) / u[k * size + k]
                                            er[k - k0] = ek
                                            // Spread the error over the batch's columns not yet rounded.
                                            let uk = u + k * size
                                            for j in (k + 1)..<k1 { xr[j] -= ek * uk[j] }
                                        }
                                    }
                                    guard k1 < size else { continue }
                                    // x[:, k1...] −= e[m, width] · U[k0..<k1, k1...]
                                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(size - k1), Int32(width),
                                                -1, e, Int32(width), u + k0 * size + k1, Int32(size), 1, x + k1, Int32(size))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
