import CKernels
import COpenBLAS
import Dispatch
import WhisperEngine

/// Why a packed matrix could not be built.
public enum QuantizedMatrixError: Error, CustomStringConvertible, Equatable {
    /// Bits other than 2, 3, 4, 5, 6, 8.
    case unsupportedBits(Int)
    /// A group size other than 32, 64, 128.
    case unsupportedGroupSize(Int)
    /// A shape with a zero or negative side.
    case badShape(outFeatures: Int, inFeatures: Int)
    /// The float values do not have `outFeatures * inFeatures` entries.
    case valueCount(expected: Int, actual: Int)
    /// The per-group clip array does not have `outFeatures * groupsPerRow` entries.
    case clipCount(expected: Int, actual: Int)
    /// A clip ratio that is not finite and positive.
    case badClipRatio(index: Int, value: Float)
    /// A weight that is NaN or infinite.
    case nonFiniteWeight(row: Int, column: Int)
    /// Raw packed bytes or scales of the wrong size or alignment.
    case storageSize(what: String, expected: Int, actual: Int)
    /// Raw scales not aligned to 2 bytes.
    case misalignedScales
    /// A code outside `[-codeLimit, codeLimit - 1]` for the width.
    case codeOutOfRange(index: Int, code: Int, bits: Int)
    /// A rotated matrix whose input features are not a whole number of 32-blocks.
    case rotationNeedsWholeBlocks(inFeatures: Int)

    /// A message naming what is wrong.
    public var description: String {
        switch self {
        case let .unsupportedBits(b):
            return "unsupported bit width \(b) (supported: \(QuantizedMatrix.supportedBits.map(String.init).joined(separator: ", ")))"
        case let .unsupportedGroupSize(g):
            return "unsupported group size \(g) (supported: \(QuantizedMatrix.supportedGroupSizes.map(String.init).joined(separator: ", ")))"
        case let .badShape(o, i):
            return "bad matrix shape [\(o), \(i)]: both sides must be positive"
        case let .valueCount(e, a):
            return "expected \(e) weight values, got \(a)"
        case let .clipCount(e, a):
            return "expected \(e) clip ratios (one per row and group), got \(a)"
        case let .badClipRatio(i, v):
            return "clip ratio \(v) at index \(i) is not a finite positive number"
        case let .nonFiniteWeight(r, c):
            return "weight at row \(r), column \(c) is not finite"
        case let .storageSize(what, e, a):
            return "\(what): expected \(e) bytes, got \(a)"
        case .misalignedScales:
            return "scales: storage is not 2-byte aligned"
        case let .codeOutOfRange(i, c, b):
            return "code \(c) at index \(i) is outside the \(b)-bit range"
        case let .rotationNeedsWholeBlocks(i):
            return "cannot rotate \(i) input features: rotation works on whole blocks of 32"
        }
    }
}

/// How a product treats the activations, in both the few-row GEMV (the decoder) and the
/// many-row GEMM (the encoder).
public enum ActivationPrecision: String, Sendable, Codable {
    /// Activations quantized to int8 per block of 32 with a float scale, integer dot
    /// products with the packed codes (VNNI when available). The fast path.
    case int8
    /// Float activations against the dequantized codes: the exact product of
    /// `dequantized()` up to float summation order (the GEMM through OpenBLAS).
    case float
}

/// A weight matrix `W[outFeatures, inFeatures]` held at 2, 3, 4, 5, 6 or 8 bits.
///
/// Each row is cut into groups of `groupSize` consecutive input features (the last group
/// zero padded); a group has one signed scale `s` (IEEE half float) and codes `q` in
/// `[-2^(bits-1), 2^(bits-1) - 1]` (every one of the `2^bits` codes, zero included), so
/// `w ≈ s·q`. The scale's sign puts the group's largest-magnitude weight on the longer side
/// of the grid: `s = -clip · w_extreme / 2^(bits-1)`, so that weight maps to code
/// `-2^(bits-1)`. (At 2 bits the levels are {-2, -1, 0, 1}·s.) Codes are bit-packed as in
/// docs/quantized-model-format.md, and products read them directly.
///
/// A `rotated` matrix stores `W·Rᵀ` instead of W, R the orthogonal block rotation of
/// `mq_rotate_blocks` (a signed Hadamard transform per 32 input features): outlier weights
/// are spread over their block, so the group scales fit the rest better. Products rotate
/// their input first (`W x = (W Rᵀ)(R x)`), and rows and `dequantized()` are rotated back,
/// so to its users the matrix is still an approximation of W.
public struct QuantizedMatrix: WeightMatrix {
    /// Bit widths this type stores.
    public static let supportedBits = [2, 3, 4, 5, 6, 8]
    /// Group sizes this type stores.
    public static let supportedGroupSizes = [32, 64, 128]
    /// The group size chosen by measuring error against bytes on tiny.en (see the docs).
    public static let defaultGroupSize = 32
    /// Products with at most this many rows run as GEMV over the packed codes; larger ones
    /// as a GEMM that unpacks W once per call (`mq_gemm_q8`; with `.float` activations,
    /// dequantized tiles of W through OpenBLAS's sgemm).
    public static let gemvRowLimit = 16

    /// Output features (rows of W).
    public let outFeatures: Int
    /// Input features (columns of W).
    public let inFeatures: Int
    /// Bits per code.
    public let bits: Int
    /// Input features per scale.
    public let groupSize: Int
    /// Packed codes, `packedByteCount(outFeatures:inFeatures:bits:groupSize:)` bytes.
    public let packed: ByteStorage
    /// Half-float scales `[outFeatures, groupsPerRow]`, little-endian.
    public let scales: ByteStorage
    /// Whether the codes quantize `W·Rᵀ` (see above) rather than W.
    public let rotated: Bool
    /// Activation handling of products; `.int8` by default.
    public var activationPrecision: ActivationPrecision = .int8

    /// Scale groups per row, `ceil(inFeatures / groupSize)`.
    public var groupsPerRow: Int { (inFeatures + groupSize - 1) / groupSize }
    /// 32-element blocks per row (whole groups, so the row is padded to a group multiple).
    public var blocksPerRow: Int { groupsPerRow * groupSize / 32 }

    /// Half the code range at `bits`, `2^(bits-1)`: codes lie in `[-codeLimit, codeLimit - 1]`
    /// and a group's extreme weight maps to `-codeLimit` (at clip 1).
    public static func codeLimit(bits: Int) -> Int { 1 << (bits - 1) }

    /// Bytes of packed codes for a matrix of this shape.
    public static func packedByteCount(outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int) -> Int {
        let groups = (inFeatures + groupSize - 1) / groupSize
        return outFeatures * groups * (groupSize / 32) * 4 * bits
    }

    /// Bytes of scales for a matrix of this shape.
    public static func scaleByteCount(outFeatures: Int, inFeatures: Int, groupSize: Int) -> Int {
        outFeatures * ((inFeatures + groupSize - 1) / groupSize) * 2
    }

    /// Whether a matrix with this many input features can be stored rotated (whole 32-blocks).
    public static func canRotate(inFeatures: Int) -> Bool { inFeatures % 32 == 0 }

    /// Exact resident bytes: packed codes plus scales.
    public var byteSize: Int { packed.count + scales.count }

    private static func validate(outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int, rotated: Bool) throws {
        guard supportedBits.contains(bits) else { throw QuantizedMatrixError.unsupportedBits(bits) }
        guard supportedGroupSizes.contains(groupSize) else { throw QuantizedMatrixError.unsupportedGroupSize(groupSize) }
        guard outFeatures > 0, inFeatures > 0 else {
            throw QuantizedMatrixError.badShape(outFeatures: outFeatures, inFeatures: inFeatures)
        }
        guard !rotated || canRotate(inFeatures: inFeatures) else {
            throw QuantizedMatrixError.rotationNeedsWholeBlocks(inFeatures: inFeatures)
        }
    }

    /// The first value of largest magnitude in `group` (0 for an empty or all-zero group).
    @inline(__always)
    static func extreme(_ group: UnsafeBufferPointer<Float>) -> Float {
        var extreme: Float = 0
        for v in group where abs(v) > abs(extreme) { extreme = v }
        return extreme
    }

    /// A group's scale: `-clipRatio * extreme / codeLimit` rounded to half precision, so that
    /// `extreme` lands on code `-codeLimit`; returns the half bit pattern and its float value.
    /// A scale that rounds to zero is stored as +0 (the group holds zeros); one that overflows
    /// half becomes the largest half of its sign (beyond any real weight).
    static func groupScale(extreme: Float, clipRatio: Float, bits: Int) -> (half: UInt16, scale: Float) {
        var raw = -clipRatio * extreme / Float(codeLimit(bits: bits))
        var half: UInt16 = 0
        mq_f32_to_f16(&raw, &half, 1)
        var scale: Float = 0
        mq_f16_to_f32(&half, &scale, 1)
        if !scale.isFinite { return raw < 0 ? (0xFBFF, -65504) : (0x7BFF, 65504) }
        return scale == 0 ? (0, 0) : (half, scale)
    }

    /// Quantizes row-major `values[outFeatures, inFeatures]`; every group's scale is
    /// `-clipRatio * w_extreme / codeLimit` (`w_extreme` the group's first weight of largest
    /// magnitude), codes are rounded to nearest and clamped to `[-codeLimit, codeLimit - 1]`.
    /// With `rotated`, `W·Rᵀ` is quantized (groups and their scales are then in that basis).
    public init(quantizing values: [Float], outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                clipRatio: Float = 1, rotated: Bool = false) throws {
        try Self.validate(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize, rotated: rotated)
        let groups = (inFeatures + groupSize - 1) / groupSize
        guard clipRatio.isFinite, clipRatio > 0 else { throw QuantizedMatrixError.badClipRatio(index: 0, value: clipRatio) }
        try self.init(quantizing: values, outFeatures: outFeatures, inFeatures: inFeatures, bits: bits,
                      groupSize: groupSize, clipRatios: [Float](repeating: clipRatio, count: outFeatures * groups),
                      rotated: rotated)
    }

    /// Quantizes with one clip ratio per group: `clipRatios[row * groupsPerRow + group]`.
    public init(quantizing values: [Float], outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                clipRatios: [Float], rotated: Bool = false) throws {
        try Self.validate(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize, rotated: rotated)
        guard values.count == outFeatures * inFeatures else {
            throw QuantizedMatrixError.valueCount(expected: outFeatures * inFeatures, actual: values.count)
        }
        let groups = (inFeatures + groupSize - 1) / groupSize
        guard clipRatios.count == outFeatures * groups else {
            throw QuantizedMatrixError.clipCount(expected: outFeatures * groups, actual: clipRatios.count)
        }
        if let bad = clipRatios.firstIndex(where: { !($0.isFinite && $0 > 0) }) {
            throw QuantizedMatrixError.badClipRatio(index: bad, value: clipRatios[bad])
        }
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw QuantizedMatrixError.nonFiniteWeight(row: bad / inFeatures, column: bad % inFeatures)
        }
        var values = values
        if rotated { values.withUnsafeMutableBufferPointer { mq_rotate_blocks($0.baseAddress!, $0.baseAddress!, $0.count, 0) } }
        let blocks = groups * groupSize / 32
        let rowCodes = blocks * 32
        let limit = Float(Self.codeLimit(bits: bits))
        var codes = [Int8](repeating: 0, count: outFeatures * rowCodes)
        var halfScales = [UInt16](repeating: 0, count: outFeatures * groups)
        values.withUnsafeBufferPointer { w in
            codes.withUnsafeMutableBufferPointer { c in
                for r in 0..<outFeatures {
                    for g in 0..<groups {
                        let c0 = g * groupSize, c1 = Swift.min(inFeatures, c0 + groupSize)
                        let extreme = Self.extreme(UnsafeBufferPointer(rebasing: w[r * inFeatures + c0 ..< r * inFeatures + c1]))
                        let (half, scale) = Self.groupScale(extreme: extreme, clipRatio: clipRatios[r * groups + g], bits: bits)
                        halfScales[r * groups + g] = half
                        guard scale != 0 else { continue }
                        let inv = 1 / scale
                        for col in c0..<c1 {
                            let q = (w[r * inFeatures + col] * inv).rounded()
                            c[r * rowCodes + col] = Int8(Swift.max(-limit, Swift.min(limit - 1, q)))
                        }
                    }
                }
            }
        }
        try self.init(codes: codes, halfScales: halfScales, outFeatures: outFeatures, inFeatures: inFeatures,
                      bits: bits, groupSize: groupSize, rotated: rotated)
    }

    /// Packs codes chosen elsewhere (for example by `ErrorCompensatedRounding`):
    /// `codes[outFeatures, rowCodes]` with `rowCodes` the row padded to whole 32-code blocks
    /// (padding codes 0), each in `[-codeLimit, codeLimit - 1]`, and one half-float scale bit
    /// pattern per group, `halfScales[outFeatures, groups]`; `rotated` if the codes quantize `W·Rᵀ`.
    public init(codes: [Int8], halfScales: [UInt16], outFeatures: Int, inFeatures: Int, bits: Int,
                groupSize: Int, rotated: Bool = false) throws {
        try Self.validate(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize, rotated: rotated)
        let groups = (inFeatures + groupSize - 1) / groupSize
        let blocks = groups * groupSize / 32
        guard codes.count == outFeatures * blocks * 32 else {
            throw QuantizedMatrixError.valueCount(expected: outFeatures * blocks * 32, actual: codes.count)
        }
        guard halfScales.count == outFeatures * groups else {
            throw QuantizedMatrixError.storageSize(what: "scales", expected: outFeatures * groups * 2, actual: halfScales.count * 2)
        }
        let limit = Self.codeLimit(bits: bits)
        if let bad = codes.firstIndex(where: { Int($0) < -limit || Int($0) >= limit }) {
            throw QuantizedMatrixError.codeOutOfRange(index: bad, code: Int(codes[bad]), bits: bits)
        }
        let packedCount = Self.packedByteCount(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize)
        let packed = ByteStorage(count: packedCount) { dst in
            codes.withUnsafeBufferPointer { c in
                mq_pack_codes(c.baseAddress!, outFeatures, blocks, Int32(bits), dst.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        let scales = halfScales.withUnsafeBytes { ByteStorage(copying: $0) }
        try self.init(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize,
                      packed: packed, scales: scales, rotated: rotated)
    }

    /// Wraps packed codes and half-float scales already laid out as documented (for example
    /// a slice of a mapped model file); nothing is copied.
    public init(outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int,
                packed: ByteStorage, scales: ByteStorage, rotated: Bool = false) throws {
        try Self.validate(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize, rotated: rotated)
        let expectedPacked = Self.packedByteCount(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize)
        guard packed.count == expectedPacked else {
            throw QuantizedMatrixError.storageSize(what: "packed codes", expected: expectedPacked, actual: packed.count)
        }
        let expectedScales = Self.scaleByteCount(outFeatures: outFeatures, inFeatures: inFeatures, groupSize: groupSize)
        guard scales.count == expectedScales else {
            throw QuantizedMatrixError.storageSize(what: "scales", expected: expectedScales, actual: scales.count)
        }
        guard Int(bitPattern: scales.baseAddress) % 2 == 0 else { throw QuantizedMatrixError.misalignedScales }
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.bits = bits
        self.groupSize = groupSize
        self.packed = packed
        self.scales = scales
        self.rotated = rotated
    }

    /// Takes the codes' and scales' pages out of the resident set when they are mapped from a file (`LayerFile`, a
    /// `.myq` file); the next product reads them again.
    public func releaseResidentPages() {
        packed.releaseResidentPages()
        scales.releaseResidentPages()
    }

    /// The same matrix with another activation precision for small products.
    public func withActivationPrecision(_ precision: ActivationPrecision) -> QuantizedMatrix {
        var copy = self
        copy.activationPrecision = precision
        return copy
    }

    /// Calls `body` with the C description of this matrix, valid during the call.
    private func withDescriptor<R>(_ body: (UnsafePointer<mq_packed_matrix>) -> R) -> R {
        withExtendedLifetime((packed, scales)) {
            var d = mq_packed_matrix(
                packed: packed.baseAddress.assumingMemoryBound(to: UInt8.self),
                scales: scales.baseAddress.assumingMemoryBound(to: UInt16.self),
                bits: Int32(bits), rows: outFeatures, blocks: blocksPerRow,
                blocksPerGroup: groupSize / 32)
            return body(&d)
        }
    }

    /// The scales as floats, `[outFeatures, groupsPerRow]`.
    public func scaleValues() -> [Float] {
        let n = outFeatures * groupsPerRow
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            mq_f16_to_f32(scales.baseAddress.assumingMemoryBound(to: UInt16.self), buf.baseAddress!, n)
            count = n
        }
    }

    /// The signed codes, `[outFeatures, blocksPerRow * 32]` (padding columns included, zero).
    public func codes() -> [Int8] {
        let n = outFeatures * blocksPerRow * 32
        return [Int8](unsafeUninitializedCapacity: n) { buf, count in
            withDescriptor { mq_unpack_codes($0, 0, outFeatures, buf.baseAddress!) }
            count = n
        }
    }

    /// The matrix as floats, row-major `[outFeatures, inFeatures]` (tests, calibration),
    /// rotated back if `rotated`.
    public func dequantized() -> [Float] {
        let n = outFeatures * inFeatures
        return [Float](unsafeUninitializedCapacity: n) { buf, count in
            withDescriptor { mq_dequantize_rows($0, 0, outFeatures, inFeatures, buf.baseAddress!, inFeatures) }
            if rotated { mq_rotate_blocks(buf.baseAddress!, buf.baseAddress!, n, 1) }
            count = n
        }
    }

    /// Dequantizes row `index` into `out[inFeatures]` (rotated back if `rotated`).
    public func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(index >= 0 && index < outFeatures, "QuantizedMatrix.copyRow: row \(index) out of range")
        withDescriptor { mq_dequantize_rows($0, index, index + 1, inFeatures, out, inFeatures) }
        if rotated { mq_rotate_blocks(out, out, inFeatures, 1) }
    }

    /// `y[m, outFeatures] = x[m, inFeatures] · Wᵀ`. Up to `gemvRowLimit` rows: GEMV over the
    /// packed codes (int8 or float activations, see `activationPrecision`); more rows: with
    /// int8 activations the integer GEMM of `mq_gemm_q8`, with float activations tiles of W
    /// dequantized into cache and multiplied by OpenBLAS. A rotated matrix rotates the rows
    /// of x before a GEMV or the int8 GEMM (as they are quantized), and each dequantized
    /// tile of W back before the float GEMM (fewer values than x there: the encoder's 1500
    /// rows, measured with quant-bench).
    public func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        guard m > 0 else { return }
        guard m <= Self.gemvRowLimit else {
            switch activationPrecision {
            case .int8: return gemmInt8(x, rows: m, threads: threads, into: y)
            case .float: return gemmTiled(x, rows: m, threads: threads, into: y)
            }
        }
        guard rotated else { return gemv(x, rows: m, threads: threads, into: y) }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: m * inFeatures) { xr in
            mq_rotate_blocks(x, xr.baseAddress!, m * inFeatures, 0)
            gemv(xr.baseAddress!, rows: m, threads: threads, into: y)
        }
    }

    /// `y = x · (stored matrix)ᵀ` over the packed codes, x already in the stored basis.
    private func gemv(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        let parts = outFeatures * inFeatures * m >= Self.parallelWork ? threads : 1
        switch activationPrecision {
        case .int8: gemvInt8(x, rows: m, parts: parts, into: y)
        case .float: gemvFloat(x, rows: m, parts: parts, into: y)
        }
    }

    /// Work (weights × rows) above which a GEMV is split across threads.
    static let parallelWork = 1 << 18

    /// Runs `body` over up to `parts` contiguous ranges of `0..<outFeatures` (multiples of
    /// 16 rows, at least 64 rows each), concurrently.
    private func splitRows(parts: Int, _ body: (Int, Int) -> Void) {
        let parts = Swift.max(1, Swift.min(parts, outFeatures / 64))
        if parts <= 1 { return body(0, outFeatures) }
        let chunk = ((outFeatures + parts - 1) / parts + 15) / 16 * 16
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            let r0 = p * chunk, r1 = Swift.min(outFeatures, r0 + chunk)
            if r0 < r1 { body(r0, r1) }
        }
    }

    private func gemvInt8(_ x: UnsafePointer<Float>, rows m: Int, parts: Int, into y: UnsafeMutablePointer<Float>) {
        let blocks = blocksPerRow
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: m * blocks * 32) { xq in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: m * blocks) { xs in
                mq_quantize_activations(x, m, inFeatures, inFeatures, blocks, xq.baseAddress!, xs.baseAddress!)
                let xqp = UnsafePointer(xq.baseAddress!), xsp = UnsafePointer(xs.baseAddress!)
                let outF = outFeatures
                withDescriptor { d in
                    splitRows(parts: parts) { r0, r1 in
                        mq_gemv_q8(d, r0, r1, xqp, xsp, m, y, outF)
                    }
                }
            }
        }
    }

    private func gemvFloat(_ x: UnsafePointer<Float>, rows m: Int, parts: Int, into y: UnsafeMutablePointer<Float>) {
        let padded = blocksPerRow * 32
        withUnsafeTemporaryAllocation(of: Float.self, capacity: padded) { xp in
            let xpp = xp.baseAddress!
            for i in 0..<m {
                xpp.update(from: x + i * inFeatures, count: inFeatures)
                (xpp + inFeatures).update(repeating: 0, count: padded - inFeatures)
                let yi = y + i * outFeatures
                withDescriptor { d in
                    splitRows(parts: parts) { r0, r1 in mq_gemv_f32(d, r0, r1, xpp, yi) }
                }
            }
        }
    }

    /// The int8 GEMM: x quantized per block of 32 (rows split across the threads), then W's
    /// rows split across the threads, each unpacking its rows once into its own scratch
    /// (`mq_gemm_q8`). Buffers, for the call: xq `[m, blocksPerRow * 32]` int8 codes, xs and
    /// xsum `[m, blocksPerRow]` (block scales, code sums); the encoder's fc2 input (1500 x
    /// 1536) makes 2.3 MB of codes.
    private func gemmInt8(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        let blocks = blocksPerRow, k = inFeatures, rotate: Int32 = rotated ? 1 : 0
        let xq = UnsafeMutablePointer<Int8>.allocate(capacity: m * blocks * 32)
        let xs = UnsafeMutablePointer<Float>.allocate(capacity: m * blocks)
        let xsum = UnsafeMutablePointer<Int32>.allocate(capacity: m * blocks)
        defer { xq.deallocate(); xs.deallocate(); xsum.deallocate() }
        let parts = Swift.max(1, Swift.min(threads, m / 64))
        let quantize = { (p: Int) in
            let r0 = m * p / parts, r1 = m * (p + 1) / parts
            mq_quantize_activations_sums(x + r0 * k, r1 - r0, k, k, blocks, rotate, xq + r0 * blocks * 32,
                                         xs + r0 * blocks, xsum + r0 * blocks)
        }
        if parts == 1 { quantize(0) } else { DispatchQueue.concurrentPerform(iterations: parts, execute: quantize) }
        let outF = outFeatures
        withDescriptor { d in
            let scratchBytes = mq_gemm_q8_scratch_size(d)
            splitRows(parts: threads) { r0, r1 in
                let scratch = UnsafeMutableRawPointer.allocate(byteCount: scratchBytes, alignment: 64)
                defer { scratch.deallocate() }
                mq_gemm_q8(d, r0, r1, xq, xs, xsum, m, y, outF, scratch)
            }
        }
    }

    /// Most rows of W dequantized per tile in the float GEMM (the tile is also kept within 1 MiB, in L2).
    /// Few large tiles beat many small ones: sgemm repacks x on every call (measured).
    static let gemmTileRows = 512

    private func gemmTiled(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        let k = inFeatures
        let tileRows = Swift.max(16, Swift.min(Self.gemmTileRows, (1 << 18) / k))   // tile <= 1 MiB
        // Each thread takes its own rows of W and dequantizes them into its own tiles.
        withDescriptor { d in
            splitRows(parts: threads) { first, end in
                withUnsafeTemporaryAllocation(of: Float.self, capacity: tileRows * k) { tile in
                    let t = tile.baseAddress!   // [tileRows, k]
                    var r0 = first
                    while r0 < end {
                        let r1 = Swift.min(end, r0 + tileRows)
                        mq_dequantize_rows(d, r0, r1, k, t, k)
                        if rotated { mq_rotate_blocks(t, t, (r1 - r0) * k, 1) }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(r1 - r0), Int32(k),
                                    1, x, Int32(k), t, Int32(k), 0, y + r0, Int32(outFeatures))
                        r0 = r1
                    }
                }
            }
        }
    }
}
