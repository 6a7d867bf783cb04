@_exported import TestSupport

// RandomWhisper and SeededGenerator.floats come from the TestSupport target.

/// Largest |a[i] - b[i]| (arrays of equal length).
func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "maxAbsDifference: lengths \(a.count) and \(b.count)")
    var m: Float = 0
    for i in a.indices { m = max(m, abs(a[i] - b[i])) }
    return m
}

/// `y[m, n] = x[m, k] · W[n, k]ᵀ` in Double, the reference for product tests.
func referenceProduct(x: [Float], rows m: Int, w: [Float], out n: Int, in k: Int) -> [Float] {
    var y = [Float](repeating: 0, count: m * n)
    for i in 0..<m {
        for j in 0..<n {
            var s = 0.0
            for c in 0..<k { s += Double(x[i * k + c]) * Double(w[j * k + c]) }
            y[i * n + j] = Float(s)
        }
    }
    return y
}
