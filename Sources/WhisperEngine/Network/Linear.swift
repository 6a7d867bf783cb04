/// A weight matrix `W[outFeatures, inFeatures]` in whatever precision it is stored,
/// together with the product that reads it. The float form lives here; packed low-bit
/// forms implement the same protocol, so every layer can carry its own precision.
public protocol WeightMatrix: Sendable {
    /// Output features (rows of W).
    var outFeatures: Int { get }
    /// Input features (columns of W).
    var inFeatures: Int { get }
    /// Bytes this matrix keeps resident (values plus any scales).
    var byteSize: Int { get }
    /// `y[m, outFeatures] = x[m, inFeatures] · Wᵀ` (no bias), split across up to `threads`
    /// threads when large. `y` is overwritten.
    func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>)
    /// Copies row `index` of W, as floats, into `out[inFeatures]` (the embedding lookup).
    func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>)
    /// Takes W's pages out of the resident set where they are a mapped file's (read again when next used);
    /// nothing for memory of its own.
    func releaseResidentPages()
}

extension WeightMatrix {
    /// Memory of its own: nothing to release.
    public func releaseResidentPages() {}
}

/// A float32 weight matrix multiplied through OpenBLAS.
public struct FloatMatrix: WeightMatrix {
    /// Output features (rows).
    public let outFeatures: Int
    /// Input features (columns).
    public let inFeatures: Int
    /// Row-major values, `outFeatures * inFeatures`.
    public let values: [Float]

    /// Wraps row-major values of shape `[outFeatures, inFeatures]`.
    public init(outFeatures: Int, inFeatures: Int, values: [Float]) {
        precondition(values.count == outFeatures * inFeatures, "FloatMatrix: value count does not match shape")
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.values = values
    }

    /// Four bytes per weight.
    public var byteSize: Int { values.count * MemoryLayout<Float>.size }

    /// `y = x · Wᵀ`: the few-row kernel for up to 8 rows (decoder), OpenBLAS sgemm above.
    public func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        values.withUnsafeBufferPointer { w in
            if m <= 8 {
                Kernels.gemmFewRows(m: m, n: outFeatures, k: inFeatures, x: x, w: w.baseAddress!, y: y, threads: threads)
            } else {
                Kernels.gemmABt(m: m, n: outFeatures, k: inFeatures, a: x, lda: inFeatures,
                                b: w.baseAddress!, ldb: inFeatures, c: y, ldc: outFeatures, threads: threads)
            }
        }
    }

    /// Copies row `index` (the embedding of one token).
    public func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>) {
        values.withUnsafeBufferPointer { w in
            out.update(from: w.baseAddress! + index * inFeatures, count: inFeatures)
        }
    }
}

/// Sees the input and output of every linear layer as the network runs: the hook the
/// personalisation statistics use. Called on the inference thread; keep it cheap.
public protocol ActivationObserver: AnyObject {
    /// `input` is `[rows, inFeatures]`, `output` is `[rows, outFeatures]` (bias included).
    func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int)
}

/// One quantizable layer: `y = x · Wᵀ + b`. Every weight matrix of the network,
/// convolutions and the token embedding included, is a `Linear`.
public final class Linear: @unchecked Sendable {
    /// Stable layer name, the CTranslate2 variable prefix (e.g. `encoder/layer_0/ffn/linear_0`).
    public let name: String
    /// The weights in their stored precision.
    public let weight: any WeightMatrix
    /// Optional bias `[outFeatures]`, always float.
    public let bias: [Float]?

    /// Creates a layer; `bias` must have `weight.outFeatures` entries when present.
    public init(name: String, weight: any WeightMatrix, bias: [Float]?) {
        precondition(bias == nil || bias!.count == weight.outFeatures, "Linear \(name): bias size")
        self.name = name
        self.weight = weight
        self.bias = bias
    }

    /// Input features.
    public var inFeatures: Int { weight.inFeatures }
    /// Output features.
    public var outFeatures: Int { weight.outFeatures }

    /// A copy of this layer with other weights (same shape), e.g. a quantized form.
    public func replacingWeight(_ newWeight: any WeightMatrix) -> Linear {
        precondition(newWeight.outFeatures == outFeatures && newWeight.inFeatures == inFeatures)
        return Linear(name: name, weight: newWeight, bias: bias)
    }

    /// `y[rows, outFeatures] = x[rows, inFeatures] · Wᵀ + b` on up to `threads` threads (the
    /// calling pass's own), reported to `observer`.
    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>,
                        threads: Int, observer: ActivationObserver?) {
        weight.multiply(x, rows: rows, threads: threads, into: y)
        if let bias {
            bias.withUnsafeBufferPointer { b in
                for r in 0..<rows { Kernels.add(y + r * outFeatures, b.baseAddress!, count: outFeatures) }
            }
        }
        observer?.observe(layer: name,
                          input: UnsafeBufferPointer(start: x, count: rows * inFeatures),
                          output: UnsafeBufferPointer(start: y, count: rows * outFeatures),
                          rows: rows)
    }
}
