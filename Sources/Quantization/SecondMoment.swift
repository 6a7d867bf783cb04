import CKernels

/// A layer's input second moment `H = E[x xᵀ]`, `[width, width]`, held as its diagonal blocks:
/// the entries between blocks are 0. What error-compensated rounding (`ErrorCompensatedRounding`)
/// and the expected-error widths (`ExpectedError`) read.
///
/// The statistics keep `H` on blocks of 384 features (`InputCovariance.blockSize`), so the daemon's
/// builds read it block by block and never hold the dense matrix: for tiny.en's 1536-input layers
/// the dense double-precision `H` and its rotated copy were 19 MB each, the four blocks 4.7 MB in
/// all. The offline tool's exact moments are one block of `width`.
public struct SecondMoment: Sendable {
    /// One diagonal block: features `[start, start + size)` and their moment, row-major
    /// `[size, size]`, symmetric.
    public struct Block: Sendable {
        public let start: Int
        public let size: Int
        public var values: [Double]
    }

    /// Input features.
    public let width: Int
    /// Consecutive blocks covering `[0, width)`.
    public private(set) var blocks: [Block]

    /// A dense symmetric `h[width, width]` as one block.
    public init(dense h: [Double], width: Int) {
        precondition(h.count == width * width, "SecondMoment: \(h.count) values for width \(width)")
        self.width = width
        blocks = [Block(start: 0, size: width, values: h)]
    }

    /// Blocks given in order, covering `[0, width)`.
    init(width: Int, blocks: [Block]) {
        precondition(blocks.reduce(0) { $0 + $1.size } == width, "SecondMoment: blocks do not cover \(width)")
        self.width = width
        self.blocks = blocks
    }

    /// `H_kk` for every feature.
    public var diagonal: [Double] {
        var d = [Double](repeating: 0, count: width)
        for b in blocks {
            for i in 0..<b.size { d[b.start + i] = b.values[i * b.size + i] }
        }
        return d
    }

    /// The dense `[width, width]` matrix (tests and inspection; builds use the blocks).
    public var dense: [Double] {
        var h = [Double](repeating: 0, count: width * width)
        for b in blocks {
            for i in 0..<b.size {
                for j in 0..<b.size { h[(b.start + i) * width + b.start + j] = b.values[i * b.size + j] }
            }
        }
        return h
    }

    /// Whether every block boundary falls on a multiple of `features` (whole groups or rotation blocks).
    public func blockBoundaries(fallOnMultiplesOf features: Int) -> Bool {
        blocks.dropFirst().allSatisfy { $0.start % features == 0 }
    }

    /// The same blocks merged into one (for a layout whose boundaries split a group).
    public var asOneBlock: SecondMoment {
        blocks.count == 1 ? self : SecondMoment(dense: dense, width: width)
    }

    /// `R H Rᵀ`, the moment in the rotated basis (`QuantizedMatrix.rotated`: 32-feature Hadamard
    /// blocks), block by block; blocks whose boundaries split a rotation block are merged first. The
    /// width must be a multiple of 32 (`QuantizedMatrix.canRotate`).
    public func rotated() -> SecondMoment {
        var moment = self
        moment.rotate()
        return moment
    }

    /// `rotated()` in place, one block at a time: a moment held nowhere else never has both bases of more than one
    /// block at once (for tiny.en's 1536-input layers, 4.5 MiB of the two bases' 9 at a build's peak).
    public mutating func rotate() {
        precondition(width % 32 == 0, "SecondMoment: width \(width) is not whole rotation blocks")
        if !blockBoundaries(fallOnMultiplesOf: 32) { self = asOneBlock }
        for index in blocks.indices { Self.rotateBothSides(&blocks[index].values, n: blocks[index].size) }
    }

    /// `R H Rᵀ` for a symmetric `h[n, n]`, in its place: each row rotated (`H Rᵀ`), the result transposed
    /// (`R H`, as H is symmetric) and its rows rotated again.
    static func rotateBothSides(_ h: inout [Double], n: Int) {
        h.withUnsafeMutableBufferPointer { mq_rotate_blocks_f64($0.baseAddress!, $0.count) }
        var t = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { t[j * n + i] = h[i * n + j] } }
        t.withUnsafeMutableBufferPointer { mq_rotate_blocks_f64($0.baseAddress!, $0.count) }
        h = t
    }

    /// The finest split of `[0, width)` into consecutive spans that `H` couples with nothing outside,
    /// each ending on a multiple of `groupSize` (or at `width`), with the block each lies in. The
    /// blocks' boundaries must fall on multiples of `groupSize` (`blockBoundaries`).
    func spans(groupSize: Int) -> [(start: Int, size: Int, block: Int)] {
        precondition(blockBoundaries(fallOnMultiplesOf: groupSize), "SecondMoment: blocks split a group")
        var spans: [(start: Int, size: Int, block: Int)] = []
        for (index, b) in blocks.enumerated() {
            let h = b.values, n = b.size
            var start = 0, end = 0
            for i in 0..<n {
                // The last feature that row i is coupled with (h is symmetric: looking right is enough).
                var last = i
                for j in stride(from: n - 1, to: i, by: -1) where h[i * n + j] != 0 {
                    last = j
                    break
                }
                end = max(end, last + 1)
                if i + 1 == end && ((b.start + end) % groupSize == 0 || end == n) {
                    spans.append((b.start + start, end - start, index))
                    start = end
                }
            }
        }
        return spans
    }
}
