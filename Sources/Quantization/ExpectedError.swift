import CKernels
import Foundation

/// A layer's expected output error at each width, on the user's own activations: what the
/// expected-error allocation (`WidthRule.expectedError`) compares across layers.
///
/// Rounding a weight to a grid of step `s` leaves an error that is, to a good approximation,
/// uniform on `±s/2` and independent of the other weights' errors (variance `s²/12`). For a
/// layer `y = W x` with input second moment `H = E[x xᵀ]`, the expected squared output error
/// per input row, `E trace(ΔW H ΔWᵀ)`, is then
///
///     Σ_rows Σ_k  s_{row, group(k)}² / 12 · H_kk
///
/// with `s = |w_ext| / 2^(bits−1)` the group's step (section 3 of docs/myqasr-method.md), in the
/// basis the codes are written in (`R H Rᵀ` when the layer is rotated). So every layer's error
/// is one constant times `4^(1−bits)`, and the constant weighs each group's largest weight by
/// the energy of the user's inputs it multiplies. It is divided by the layer's output energy
/// `E‖y‖²` per row (from the |output| histogram): the relative error, comparable between layers
/// whose outputs differ in scale.
enum ExpectedError {
    /// The relative expected output error of the layer at each of `widths`.
    /// - Parameters:
    ///   - values: row-major `[outFeatures, inFeatures]` float weights.
    ///   - secondMoment: `E[x xᵀ]` of the `inFeatures` inputs, or nil to
    ///     use `meanSquare` (the diagonal alone; rotated, each block's features then share their mean).
    ///   - outputEnergy: `E‖y‖²` per row (`outFeatures` times the mean square output).
    static func relative(values: [Float], outFeatures: Int, inFeatures: Int, groupSize: Int, rotated: Bool,
                         secondMoment: SecondMoment?, meanSquare: [Double], outputEnergy: Double, widths: [Int]) -> [Double] {
        let n = inFeatures
        var w = values
        var h = [Double](repeating: 0, count: n)   // diagonal of H in the codes' basis
        if let m = secondMoment {
            h = (rotated ? m.rotated() : m).diagonal
        } else {
            h = meanSquare
            if rotated {
                for b in stride(from: 0, to: n, by: 32) {
                    let mean = h[b..<(b + 32)].reduce(0, +) / 32
                    for k in b..<(b + 32) { h[k] = mean }
                }
            }
        }
        if rotated { w.withUnsafeMutableBufferPointer { mq_rotate_blocks($0.baseAddress!, $0.baseAddress!, $0.count, 0) } }
        let groups = (n + groupSize - 1) / groupSize
        var groupEnergy = [Double](repeating: 0, count: groups)
        for k in 0..<n { groupEnergy[k / groupSize] += max(h[k], 0) }
        // Σ_rows Σ_groups w_ext² · (Σ_{k in group} H_kk): the error at one bit times 12.
        var constant = 0.0
        w.withUnsafeBufferPointer { p in
            for r in 0..<outFeatures {
                let row = p.baseAddress! + r * n
                for g in 0..<groups {
                    let c0 = g * groupSize, c1 = min(n, c0 + groupSize)
                    var extreme: Float = 0
                    for k in c0..<c1 { extreme = max(extreme, abs(row[k])) }
                    constant += Double(extreme) * Double(extreme) * groupEnergy[g]
                }
            }
        }
        let energy = outputEnergy > 0 ? outputEnergy : 1
        return widths.map { bits in constant * pow(4, Double(1 - bits)) / 12 / energy }
    }
}
