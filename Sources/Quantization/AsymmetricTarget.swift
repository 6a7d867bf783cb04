import COpenBLAS
import Foundation

/// One layer's inputs in two models, row by row: `float` in the full-precision model and
/// `quantized` in the model whose earlier layers are already quantized, both `[rows, width]`
/// row-major, from the same audio and the same tokens.
public struct PairedInputs: Sendable {
    /// Rows of each.
    public var rows: Int
    /// Input features.
    public var width: Int
    /// The full-precision model's inputs, `[rows, width]`.
    public var float: [Float]
    /// The partly quantized model's inputs, `[rows, width]`.
    public var quantized: [Float]

    /// Pairs two recordings of the same rows; `nil` if their shapes differ.
    public init?(float: [Float], quantized: [Float], width: Int) {
        guard width > 0, !float.isEmpty, float.count == quantized.count, float.count % width == 0 else { return nil }
        self.rows = float.count / width
        self.width = width
        self.float = float
        self.quantized = quantized
    }
}

/// Asymmetric targets (the idea of GPTAQ, Li et al. 2025): a layer deep in a quantized network
/// does not see the float model's inputs `X` but the drifted inputs `X̃` its quantized
/// predecessors give it. Instead of rounding `W` for `X̃` (which keeps the drift), round the
/// float weights `W'` that best map `X̃` back to the float model's outputs `X Wᵀ`, held
/// towards `W` by a ridge:
///
///     W' = argmin ‖X̃ W'ᵀ − X Wᵀ‖² + λ‖W' − W‖²  =  W (XᵀX̃ + λI)(X̃ᵀX̃ + λI)⁻¹
///
/// and then round `W'` with error-compensated rounding against `H̃ = X̃ᵀX̃ / rows`.
/// λ is error-compensated rounding's own damping (`ErrorCompensatedRounding`: the damping
/// fraction plus `width / rows`, times the mean of `diag H̃`), so a layer that saw few rows
/// stays close to `W`. Only the rounding target changes: the stored weights are still codes
/// on each group's grid.
///
/// Written by hand: no library computes it; the products and the solve are OpenBLAS's.
public enum AsymmetricTarget {
    /// The target weights `W'` (`[outFeatures, width]` row-major) for `values` (`W`, same
    /// shape) and `H̃ = X̃ᵀX̃ / rows` in double precision (`[width, width]`, for the rounding),
    /// or `nil` if the system is singular even with the ridge.
    public static func solve(values: [Float], outFeatures: Int, inputs: PairedInputs,
                             dampening: Double = 0.01) -> (values: [Float], secondMoment: [Double])? {
        let n = inputs.width, r = inputs.rows
        precondition(values.count == outFeatures * n, "AsymmetricTarget: weights are not [out, \(n)]")
        // cross[n, n] = Xᵀ X̃ / rows; second[n, n] = X̃ᵀ X̃ / rows.
        var cross = [Float](repeating: 0, count: n * n)
        var second = [Float](repeating: 0, count: n * n)
        let scale = 1 / Float(r)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(n), Int32(n), Int32(r), scale,
                    inputs.float, Int32(n), inputs.quantized, Int32(n), 0, &cross, Int32(n))
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(n), Int32(n), Int32(r), scale,
                    inputs.quantized, Int32(n), inputs.quantized, Int32(n), 0, &second, Int32(n))
        var meanDiagonal = 0.0
        for i in 0..<n { meanDiagonal += Double(second[i * n + i]) }
        meanDiagonal /= Double(n)
        guard meanDiagonal > 0, meanDiagonal.isFinite else { return nil }
        let lambda = (dampening + Double(n) / Double(r)) * meanDiagonal
        // a = H̃ + λI (symmetric: row- and column-major agree).
        var a = second.map(Double.init)
        for i in 0..<n { a[i * n + i] += lambda }
        // b holds Xᵀ X̃ + λI row-major, which LAPACK reads column-major as its transpose
        // X̃ᵀ X + λI; it returns M = (H̃ + λI)⁻¹ (X̃ᵀ X + λI) column-major, i.e. Mᵀ row-major,
        // and W' = W Mᵀ.
        var b = cross.map(Double.init)
        for i in 0..<n { b[i * n + i] += lambda }
        var size = Int32(n), columns = Int32(n), lda = Int32(n), ldb = Int32(n), info: Int32 = 0
        var upper = CChar(UInt8(ascii: "U"))
        dposv_(&upper, &size, &columns, &a, &lda, &b, &ldb, &info)
        guard info == 0 else { return nil }
        let mTransposed = b.map(Float.init)
        var target = [Float](repeating: 0, count: outFeatures * n)
        // target[out, n] = W[out, n] · Mᵀ[n, n]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(outFeatures), Int32(n), Int32(n), 1,
                    values, Int32(n), mTransposed, Int32(n), 0, &target, Int32(n))
        return (target, second.map(Double.init))
    }
}
