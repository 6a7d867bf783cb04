import CKernels
import COpenBLAS
import Foundation

/// The scale refit of error-compensated rounding (`ErrorCompensatedRounding.passes`; not in
/// GPTQ), for a chunk of rows: with a row's codes fixed, the group scales `s` that minimise
/// `(w − Q s)ᵀ H (w − Q s)`, with `Q [n, groups]` holding code `i` in column `i / groupSize`,
/// solve `(Qᵀ H Q) s = Qᵀ H w`. `H` is block-diagonal (`MomentBlock`), so per block `b` and
/// for all the chunk's rows at once, with OpenBLAS `sgemm`:
///
///     HW  = W_b H_b           [rows, size]   once per chunk (the weights do not change)
///     Y_g = Q_g H_b[g, g...]  [rows, ≤ size]  for each group g of the block (Q_g: its codes;
///                                             the columns of groups k >= g: QᵀHQ is symmetric)
///     (QᵀHQ)[g, k] = Σ_{i in group k} Y_g[r, i] q_i      (QᵀHw)[g] = Σ_{i in group g} q_i HW[r, i]
///
/// and then per row the small system (`groups × groups`, 0 between blocks) with LAPACK `dposv`.
/// A group whose codes are all zero keeps its scale; if the system cannot be solved, or a scale
/// does not fit a half float, the row keeps its scales.
struct ScaleRefit {
    let blocks: [MomentBlock]
    let n: Int, groupSize: Int
    /// Scratch for at most `maxRows` rows: `H w` per row `[rows, n]`, the block's codes as floats
    /// `[rows, size]`, one `Y_g` `[rows, size]`, the systems `[rows, groups, groups]` and their
    /// right-hand sides `[rows, groups]`.
    private var hw: [Float], q: [Float], y: [Float], system: [Double], rhs: [Double]

    init(blocks: [MomentBlock], n: Int, groupSize: Int, maxRows: Int) {
        self.blocks = blocks
        self.n = n
        self.groupSize = groupSize
        let largest = blocks.map(\.size).max() ?? 0, groups = (n + groupSize - 1) / groupSize
        hw = [Float](repeating: 0, count: maxRows * n)
        q = [Float](repeating: 0, count: maxRows * largest)
        y = q
        system = [Double](repeating: 0, count: maxRows * groups * groups)
        rhs = [Double](repeating: 0, count: maxRows * groups)
    }

    /// `H w` of the chunk's `rows` rows of `weights` (`[rows, n]`), for the refits that follow.
    mutating func prepare(weights w: UnsafePointer<Float>, rows m: Int) {
        let n = n
        hw.withUnsafeMutableBufferPointer { hw in
            for block in blocks {
                block.damped.withUnsafeBufferPointer { h in
                    let size = Int32(block.size)
                    // hw[:, block] = w[:, block] · H_b   (H_b symmetric)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), size, size, 1, w + block.start, Int32(n),
                                h.baseAddress!, size, 0, hw.baseAddress! + block.start, Int32(n))
                }
            }
        }
    }

    /// Refits the scales `halfScales` (`[rows, groups]`) of the chunk's `rows` rows for their
    /// `codes` (`[rows, rowCodes]`); `prepare` must have been called for these rows.
    mutating func refit(codes: UnsafePointer<Int8>, rowCodes: Int, rows m: Int, halfScales: UnsafeMutablePointer<UInt16>) {
        let (n, groupSize, blocks) = (n, groupSize, blocks)
        let groups = (n + groupSize - 1) / groupSize
        hw.withUnsafeBufferPointer { hw in
            q.withUnsafeMutableBufferPointer { q in
                y.withUnsafeMutableBufferPointer { y in
                    system.withUnsafeMutableBufferPointer { a in
                        rhs.withUnsafeMutableBufferPointer { b in
                            let hw = hw.baseAddress!, q = q.baseAddress!, y = y.baseAddress!
                            let a = a.baseAddress!, b = b.baseAddress!
                            a.update(repeating: 0, count: m * groups * groups)
                            for block in blocks {
                                let size = block.size, start = block.start
                                for r in 0..<m {
                                    for k in 0..<size { q[r * size + k] = Float(codes[r * rowCodes + start + k]) }
                                }
                                let g0 = start / groupSize, g1 = (start + size + groupSize - 1) / groupSize
                                // A group's first column in the block, and its number of columns.
                                func columns(_ g: Int) -> (c0: Int, count: Int32) {
                                    let c0 = g * groupSize - start
                                    return (c0, Int32(min(size, c0 + groupSize) - c0))
                                }
                                block.damped.withUnsafeBufferPointer { h in
                                    for g in g0..<g1 {
                                        let (c0, count) = columns(g), rest = size - c0
                                        // y[m, rest] = q[:, group g] · H_b[group g, c0...]: the system is
                                        // symmetric, so only groups k >= g are needed.
                                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(rest), count, 1,
                                                    q + c0, Int32(size), h.baseAddress! + c0 * size + c0, Int32(size), 0, y, Int32(rest))
                                        for r in 0..<m {
                                            let qr = q + r * size, yr = y + r * rest, ar = a + r * groups * groups
                                            for k in g..<g1 {
                                                let (d0, width) = columns(k)
                                                let v = Double(cblas_sdot(width, yr + (d0 - c0), 1, qr + d0, 1))
                                                ar[g * groups + k] = v
                                                ar[k * groups + g] = v
                                            }
                                            b[r * groups + g] = Double(cblas_sdot(count, qr + c0, 1, hw + r * n + start + c0, 1))
                                        }
                                    }
                                }
                            }
                            for r in 0..<m {
                                Self.solve(system: a + r * groups * groups, rhs: b + r * groups, groups: groups,
                                           halfScales: halfScales + r * groups)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Solves one row's `system` (`[groups, groups]`, symmetric) for `rhs` (`[groups]`) on the
    /// groups whose diagonal entry is positive (a group of zero codes keeps its scale) and stores
    /// the scales as half floats, unless the system is singular or a scale does not fit.
    static func solve(system m: UnsafePointer<Double>, rhs: UnsafePointer<Double>, groups: Int,
                      halfScales: UnsafeMutablePointer<UInt16>) {
        let active = (0..<groups).filter { m[$0 * groups + $0] > 0 }
        guard !active.isEmpty else { return }
        var size = Int32(active.count), one: Int32 = 1, info: Int32 = 0
        var a = active.flatMap { g in active.map { m[g * groups + $0] } }   // symmetric: either major
        var x = active.map { rhs[$0] }
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
}
