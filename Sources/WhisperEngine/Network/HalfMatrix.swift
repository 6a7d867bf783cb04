import CKernels
import Foundation

/// A float16 weight matrix read in place from the model file's memory mapping: no float32 copy is
/// made, so its pages belong to the page cache (shared, and given back under memory pressure)
/// rather than to the process. Products convert tiles of rows to float32 in a small scratch
/// buffer and multiply them with OpenBLAS; slower than `FloatMatrix`, meant for passes that run
/// beside a quantized model (the daemon's statistics of the full-precision model, its self-check
/// and shadow evaluation) and for the quantizer's source. The values are exactly the float32 ones
/// `FloatMatrix` would hold (float16 widens exactly).
///
/// Once a tile (or an embedding row) has been read, its pages leave the process's resident set
/// again (`mq_release_mapped_pages`, madvise MADV_DONTNEED on the file mapping): mapped file pages
/// count in RSS, and a pass over every matrix would otherwise leave the whole file (75 MB for
/// tiny.en) resident until the model is dropped. The page cache keeps them, so the next pass maps
/// them again with minor faults (cost measured in docs/daemon.md, "Memory"). Chosen over reading
/// each tile with pread into the scratch: the same bound, without a file descriptor and offsets
/// kept beside the mapping, and no copy besides the widening itself.
public struct HalfMatrix: WeightMatrix, @unchecked Sendable {
    /// Rows converted per tile in `multiply` (64 KiB-ish of scratch per 128 input features).
    static let tileRows = 128

    /// Output features (rows).
    public let outFeatures: Int
    /// Input features (columns).
    public let inFeatures: Int
    /// The mapped file and the byte offset of row 0: `outFeatures · inFeatures` little-endian halves.
    private let file: Data
    private let offset: Int
    /// Whether `file` is a file mapping whose pages may be released (never for bytes held in memory).
    private let releasesPages: Bool

    /// The float16 values of `variable` in place, shaped `[outFeatures, inFeatures]`.
    init(variable: StoredVariable, outFeatures: Int, inFeatures: Int) {
        precondition(variable.dtype == .float16 && variable.count == outFeatures * inFeatures)
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        file = variable.file
        offset = variable.range.lowerBound
        releasesPages = variable.fileMapped
    }

    /// Two bytes per weight, mapped from the file.
    public var byteSize: Int { outFeatures * inFeatures * 2 }

    private func withHalves<R>(_ body: (UnsafePointer<UInt16>) -> R) -> R {
        file.withUnsafeBytes { raw in body(raw.baseAddress!.advanced(by: offset).assumingMemoryBound(to: UInt16.self)) }
    }

    /// Releases the pages of `count` halves from `first` (and the rest of their 2 MiB spans, `mq_release_mapped_pages`)
    /// when the file is mapped.
    private func release(_ first: UnsafePointer<UInt16>, count: Int) {
        guard releasesPages else { return }
        file.withUnsafeBytes { raw in mq_release_mapped_pages(first, count * 2, raw.baseAddress!, raw.count) }
    }

    /// Calls `body` with consecutive tiles of up to `tileRows` rows widened to float32: the first
    /// row's index, the row count and the values `[rows, inFeatures]` (valid during the call only).
    /// Pages are released a whole span (`MQ_RELEASE_SPAN`) at a time, once the tiles have moved past it: a
    /// tile's read maps its whole span, and releasing it after each tile would fault it in again for the next.
    public func forEachFloatTile(_ body: (_ firstRow: Int, _ rows: Int, UnsafeBufferPointer<Float>) -> Void) {
        let k = inFeatures, span = Int(MQ_RELEASE_SPAN) / 2   // halves per span
        // [tileRows, k] float32 rows of W; every element used is written by the conversion first.
        var tile = [Float](unsafeUninitializedCapacity: Self.tileRows * k) { _, count in count = Self.tileRows * k }
        withHalves { w in
            tile.withUnsafeMutableBufferPointer { t in
                var r0 = 0
                var released = 0   // halves of this matrix, from row 0, whose spans were released
                while r0 < outFeatures {
                    let rows = min(Self.tileRows, outFeatures - r0)
                    mq_f16_to_f32(w + r0 * k, t.baseAddress!, rows * k)
                    // The spans (counted from the file's start) that end before this tile's end are done with.
                    let done = ((offset / 2 + (r0 + rows) * k) / span * span) - offset / 2
                    if done > released {
                        release(w + released, count: done - released)
                        released = done
                    }
                    body(r0, rows, UnsafeBufferPointer(rebasing: t[0..<rows * k]))
                    r0 += rows
                }
                release(w + released, count: outFeatures * k - released)
            }
        }
    }

    /// Rows `rows` widened to float32, `[rows.count, inFeatures]` row-major (their pages released as
    /// the tiles' are): what the quantizer reads a layer by, a bounded chunk at a time.
    public func floats(rows: Range<Int>) -> [Float] {
        precondition(rows.lowerBound >= 0 && rows.upperBound <= outFeatures)
        let n = rows.count * inFeatures
        return [Float](unsafeUninitializedCapacity: n) { out, count in
            withHalves { w in
                let first = w + rows.lowerBound * inFeatures
                mq_f16_to_f32(first, out.baseAddress!, n)
                release(first, count: n)
            }
            count = n
        }
    }

    /// `y[m, outFeatures] = x[m, inFeatures] · Wᵀ`, one float32 tile of W at a time.
    public func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        let k = inFeatures
        forEachFloatTile { r0, rows, tile in
            Kernels.gemmABt(m: m, n: rows, k: k, a: x, lda: k, b: tile.baseAddress!, ldb: k, c: y + r0, ldc: outFeatures,
                            threads: threads)
        }
    }

    /// Row `index` widened to float32 (the embedding lookup).
    public func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>) {
        withHalves { w in
            mq_f16_to_f32(w + index * inFeatures, out, inFeatures)
            release(w + index * inFeatures, count: inFeatures)
        }
    }
}
