import CKernels
import COpenBLAS
import Foundation
import WhisperEngine

/// Per linear layer, the input second moment `H = E[x xᵀ]` that error-compensated rounding
/// (`ErrorCompensatedRounding`) weighs the rounding error with, kept in bounded memory.
///
/// **Blocks.** `H` is kept on blocks along its diagonal only: input features `[0, B)`,
/// `[B, 2B)`, … (the last block shorter), `B = blockSize`; `blockSize == 0` keeps the whole
/// `width × width` matrix. Entries between blocks are taken as 0.
///
/// **Two forms.** While rows arrive (one statistics pass, or the offline tool's calibration
/// run) each block's `Σ x xᵀ` is summed in float32 (upper triangle, packed) with OpenBLAS
/// `ssyrk`; calls with fewer rows than `bufferedRows` (the decoder: one row per token) are
/// buffered and folded in together. `merge(_:)` folds everything into the **kept** form, which
/// is what the statistics file stores: the row count, the diagonal `E[x_i²]` in float64, and
/// each block's strict upper triangle as correlations `E[x_i x_j] / √(E[x_i²] E[x_j²])` in
/// 16-bit fixed point (`correlationScale`: scale-free and within ±1, so a fixed step fits them
/// whatever the activations' range). Merging is weighted by row counts: means, not growing sums.
/// Each merge rounds the correlations to the fixed step once more (at most 2⁻¹⁶ each time), so `k`
/// merges stay within `k · 2⁻¹⁶` of gathering the same rows in one go. Half precision (version 3 of
/// the file) has a step 16 times as coarse near ±1 (2⁻¹¹), where strongly correlated inputs put
/// many values, and a daemon rounds once per utterance (docs/myqasr-method.md section 18).
/// With blocks, an encoder layer's sums go to the kept form as soon as a later encoder block or
/// the decoder runs (the window's rows of that layer are all in by then), which counts as one
/// merge more per window.
///
/// **Shared inputs.** The cross-attention key/value projection of every decoder block
/// (`decoder/layer_<i>/attention/linear_1`) reads the same encoder output: block 0's moments
/// stand for all of them (`key(for:)`), and the others' calls are not gathered again.
///
/// Aggregates only, like `ActivationStatistics`: no row survives an `observe` call (the row
/// buffer is folded in and cleared by `merge`, `flush` and every read).
public final class InputCovariance: ActivationObserver, @unchecked Sendable {
    /// Rows buffered per layer before they are folded in with one `ssyrk`.
    public static let bufferedRows = 64

    /// Features per diagonal block (0: the whole width).
    public let blockSize: Int

    private struct Entry {
        var width: Int
        /// Kept form: rows folded in, `E[x_i²]`, fixed-point correlations (empty while no rows were kept).
        var keptRows: UInt64 = 0
        var diagonal: [Double] = []
        var correlations = Correlations.inMemory([])
        /// Rows summed since the last merge, their packed `Σ x xᵀ` per block (empty when none), and rows
        /// waiting in `buffer` ([bufferedRows, width]).
        var pendingRows: UInt64 = 0
        var pendingSums: [Float] = []
        var buffer: [Float] = []
        var buffered = 0

        init(width: Int) { self.width = width }

        /// An entry holding `kept` only.
        init(_ kept: Kept) {
            width = kept.width
            keptRows = kept.rows
            diagonal = kept.diagonal
            correlations = .inMemory(kept.correlations)
        }
    }

    /// A kept form's correlations: in memory, or left in a statistics file's mapping
    /// (`StatisticsFile.load(path:mappingMoments:)`) and read each time they are used, their pages leaving the
    /// resident set again. A build that reads one layer's moment at a time then holds one layer's, not all of them
    /// (11.5 MiB for tiny.en) from its start.
    private enum Correlations {
        case inMemory([Int16])
        /// `2 * count` bytes (little-endian), at any alignment.
        case mapped(ByteStorage)

        var count: Int {
            switch self {
            case let .inMemory(values): return values.count
            case let .mapped(bytes): return bytes.count / 2
            }
        }

        /// The values (a copy of the mapped bytes, read once).
        var values: [Int16] {
            switch self {
            case let .inMemory(values): return values
            case let .mapped(bytes):
                let values = [Int16](unsafeUninitializedCapacity: bytes.count / 2) { buffer, count in
                    bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
                    count = bytes.count / 2
                }
                bytes.releaseResidentPages()
                return values
            }
        }
    }
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    /// The encoder stage (`encoderStage(of:)`) of the last rows observed, nil when they were the decoder's.
    private var lastEncoderStage: Int?
    private var scratch: [Float] = []
    private let accepts: @Sendable (String) -> Bool

    /// An empty accumulator for the layers `accepts` names (all by default), with blocks of
    /// `blockSize` features along the diagonal (0: whole matrices).
    public init(blockSize: Int = 0, accepts: @escaping @Sendable (String) -> Bool = { _ in true }) {
        precondition(blockSize >= 0, "InputCovariance: negative block size")
        self.blockSize = blockSize
        self.accepts = accepts
        OpenBLASThreads.keepOnCallingThread()
    }

    /// The name under which `layer`'s second moment is kept: itself, or for the decoder's
    /// cross-attention key/value projections (which all read the encoder output) block 0's.
    public static func key(for layer: String) -> String {
        let prefix = "decoder/layer_", suffix = "/attention/linear_1"
        guard layer.hasPrefix(prefix), layer.hasSuffix(suffix), layer.count > prefix.count + suffix.count else { return layer }
        let index = layer.dropFirst(prefix.count).dropLast(suffix.count)
        guard index.allSatisfy(\.isASCII), index.allSatisfy(\.isNumber) else { return layer }
        return prefix + "0" + suffix
    }

    // MARK: - Block layout

    /// The diagonal blocks of a `width`-wide moment: `(start, size)` each.
    public static func blocks(width: Int, blockSize: Int) -> [(start: Int, size: Int)] {
        let b = blockSize == 0 ? width : blockSize
        return stride(from: 0, to: width, by: max(b, 1)).map { ($0, min(b, width - $0)) }
    }

    /// Values in the blocks' upper triangles, diagonal included (the float32 sums).
    static func packedCount(width: Int, blockSize: Int) -> Int {
        blocks(width: width, blockSize: blockSize).reduce(0) { $0 + $1.size * ($1.size + 1) / 2 }
    }

    /// Values in the blocks' strict upper triangles (the kept correlations).
    public static func correlationCount(width: Int, blockSize: Int) -> Int {
        blocks(width: width, blockSize: blockSize).reduce(0) { $0 + $1.size * ($1.size - 1) / 2 }
    }

    /// Bytes of one key's kept form in memory and in the statistics file, beside its name:
    /// the row count (8), the diagonal (8 per feature) and the correlations (2 each).
    public static func keptByteCount(width: Int, blockSize: Int) -> Int {
        8 + 8 * width + 2 * correlationCount(width: width, blockSize: blockSize)
    }

    /// Bytes of the kept form for layers of these input widths (one per key: pass each
    /// `key(for:)` once): the bound on what the statistics hold between passes.
    public static func keptByteCount(widths: [Int], blockSize: Int) -> Int {
        widths.reduce(0) { $0 + keptByteCount(width: $1, blockSize: blockSize) }
    }

    /// Bytes the kept form holds now (the arrays' contents).
    public var keptByteCount: Int {
        locked { entries.values.reduce(0) { $0 + 8 + 8 * $1.diagonal.count + 2 * $1.correlations.count } }
    }

    // MARK: - Gathering

    /// Adds the layer's input rows (the network calls this).
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        guard rows > 0, let x = input.baseAddress, input.count % rows == 0, Self.key(for: layer) == layer,
              accepts(layer) else { return }
        let width = input.count / rows
        lock.lock()
        defer { lock.unlock() }
        let stage = Self.encoderStage(of: layer)
        if blockSize > 0, let last = lastEncoderStage, stage > last { compactEncoder(before: stage) }
        var entry = entries[layer] ?? Entry(width: width)
        guard entry.width == width else { return }
        entries[layer] = nil   // keep the arrays uniquely referenced while they are updated
        if rows >= Self.bufferedRows {
            fold(x, rows: rows, into: &entry)
        } else {
            if entry.buffered + rows > Self.bufferedRows { foldBuffer(&entry) }
            if entry.buffer.isEmpty { entry.buffer = [Float](repeating: 0, count: Self.bufferedRows * width) }
            entry.buffer.withUnsafeMutableBufferPointer {
                ($0.baseAddress! + entry.buffered * width).update(from: x, count: rows * width)
            }
            entry.buffered += rows
        }
        entries[layer] = entry
        lastEncoderStage = stage == .max ? nil : stage
    }

    /// Where `layer` runs in a window: the encoder's convolutions 0 and 1, its block i at i + 2, in the order the
    /// encoder runs them; any other layer (the decoder's) after all of them (`Int.max`).
    static func encoderStage(of layer: String) -> Int {
        switch layer {
        case "encoder/conv1": return 0
        case "encoder/conv2": return 1
        default:
            let prefix = "encoder/layer_"
            guard layer.hasPrefix(prefix), let index = Int(layer.dropFirst(prefix.count).prefix { $0.isNumber })
            else { return .max }
            return index + 2
        }
    }

    /// Turns the float sums of the encoder layers that run before `stage` (`encoderStage(of:)`) into the kept form,
    /// once a later stage runs: every row of the window is in for those, and a pass would otherwise hold them
    /// (8.9 MiB for tiny.en, 4.5 MiB kept) through the rest of its encoder, its decoding and its merge; one
    /// block's sums at most are in float at a time. In the bounded form only (`blockSize > 0`, what the daemon and
    /// `myqasr stats` gather); a window more rounds the correlations to the fixed-point step once more (see the type's
    /// comment).
    private func compactEncoder(before stage: Int) {
        compact { Self.encoderStage(of: $0) < stage }
    }

    /// Turns every layer's float sums and buffered rows into the kept form: for a pass that runs the decoder again
    /// (`StatisticsPass.run(served:)`), so that the first run's decoder sums (float32, twice their kept size) are not held
    /// through the second run's window. In the bounded form only; one merge more, as `compactEncoder`.
    public func compact() {
        guard blockSize > 0 else { return }
        locked { compact { _ in true } }
    }

    /// Turns the float sums of the keys `selected` names into the kept form (`compacted`); under the lock.
    private func compact(_ selected: (String) -> Bool) {
        for key in entries.keys where selected(key) {
            guard let e = entries[key], e.pendingRows > 0 || e.buffered > 0,
                  let (width, rows, means) = packedMeans(key) else { continue }
            entries[key] = Entry(compacted(width: width, rows: rows, means: means))
        }
    }

    /// Adds `rows` rows at `x` ([rows, width]) to the entry's float32 sums, block by block: one
    /// `ssyrk` into a scratch square, whose upper triangle is then added to the packed sums.
    private func fold(_ x: UnsafePointer<Float>, rows: Int, into entry: inout Entry) {
        let width = entry.width
        if entry.pendingSums.isEmpty {
            entry.pendingSums = [Float](repeating: 0, count: Self.packedCount(width: width, blockSize: blockSize))
        }
        var offset = 0
        for (start, size) in Self.blocks(width: width, blockSize: blockSize) {
            if scratch.count < size * size { scratch = [Float](repeating: 0, count: size * size) }
            scratch.withUnsafeMutableBufferPointer { s in
                // s[size, size] = x[:, block]ᵀ x[:, block], upper triangle (row-major).
                cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(size), Int32(rows), 1, x + start, Int32(width),
                            0, s.baseAddress!, Int32(size))
                entry.pendingSums.withUnsafeMutableBufferPointer { p in
                    var k = offset
                    for i in 0..<size {
                        let row = s.baseAddress! + i * size
                        for j in i..<size { p[k] += row[j]; k += 1 }
                    }
                }
            }
            offset += size * (size + 1) / 2
        }
        entry.pendingRows += UInt64(rows)
    }

    private func foldBuffer(_ entry: inout Entry) {
        guard entry.buffered > 0 else { return }
        let buffer = entry.buffer, rows = entry.buffered
        buffer.withUnsafeBufferPointer { fold($0.baseAddress!, rows: rows, into: &entry) }
        entry.buffered = 0
    }

    /// Folds every layer's buffered rows into its sums and releases the buffers (call when a
    /// pass ends; reads and merges do it themselves).
    public func flush() {
        lock.lock()
        defer { lock.unlock() }
        for key in Array(entries.keys) { flushLocked(key) }
    }

    private func flushLocked(_ key: String) {
        guard var entry = entries[key], !entry.buffer.isEmpty else { return }
        entries[key] = nil
        foldBuffer(&entry)
        entry.buffer = []
        entries[key] = entry
    }

    // MARK: - Reading

    /// Layers whose kept correlations are read from a file's mapping when used (for tests).
    var mappedLayers: [String] {
        locked {
            entries.filter {
                if case .mapped = $0.value.correlations { return true }
                return false
            }.keys.sorted()
        }
    }

    /// Layers whose rows are (partly) in float sums or the row buffer rather than the kept form (for tests).
    var floatSumLayers: [String] {
        locked { entries.filter { $0.value.pendingRows > 0 || $0.value.buffered > 0 }.keys.sorted() }
    }

    /// Layers whose moments are held (keys, see `key(for:)`), sorted by name.
    public var layerNames: [String] { locked { entries.keys.sorted() } }

    /// Rows behind `layer`'s moment (0 if none).
    public func rows(of layer: String) -> Int {
        locked {
            flushLocked(Self.key(for: layer))
            guard let e = entries[Self.key(for: layer)] else { return 0 }
            return Int(clamping: e.keptRows &+ e.pendingRows)
        }
    }

    /// The means behind `key`: rows, and per block the packed upper triangle of `E[x xᵀ]`
    /// (diagonal included), kept and pending rows combined by their counts.
    private func packedMeans(_ key: String) -> (width: Int, rows: UInt64, means: [Double])? {
        flushLocked(key)
        guard let e = entries[key] else { return nil }
        let total = e.keptRows + e.pendingRows
        guard total > 0 else { return nil }
        var means = [Double](repeating: 0, count: Self.packedCount(width: e.width, blockSize: blockSize))
        let keptShare = Double(e.keptRows) / Double(total)
        if e.keptRows > 0 {
            var k = 0, m = 0
            let correlations = e.correlations.values, correlationShare = keptShare / Self.correlationScale
            for (start, size) in Self.blocks(width: e.width, blockSize: blockSize) {
                for i in 0..<size {
                    let di = e.diagonal[start + i]
                    means[k] = keptShare * di
                    k += 1
                    for j in (i + 1)..<size {
                        means[k] = correlationShare * Double(correlations[m]) * (di * e.diagonal[start + j]).squareRoot()
                        k += 1
                        m += 1
                    }
                }
            }
        }
        if e.pendingRows > 0 {
            let scale = 1 / Double(total)
            for k in means.indices { means[k] += Double(e.pendingSums[k]) * scale }
        }
        return (e.width, total, means)
    }

    /// `E[x xᵀ]` of `layer`'s inputs (through `key(for:)`) as its diagonal blocks in double
    /// precision; `nil` if no rows were seen.
    public func moment(of layer: String) -> SecondMoment? {
        guard let (n, _, means) = locked({ packedMeans(Self.key(for: layer)) }) else { return nil }
        var k = 0
        let blocks = Self.blocks(width: n, blockSize: blockSize).map { start, size -> SecondMoment.Block in
            var m = [Double](repeating: 0, count: size * size)
            for i in 0..<size {
                for j in i..<size {
                    m[i * size + j] = means[k]
                    m[j * size + i] = means[k]
                    k += 1
                }
            }
            return SecondMoment.Block(start: start, size: size, values: m)
        }
        return SecondMoment(width: n, blocks: blocks)
    }

    /// Drops what is held for `layer` (through `key(for:)`): for a build that owns these statistics, once the last
    /// layer that reads that moment is quantized. Returns the bytes its arrays held.
    @discardableResult
    public func release(_ layer: String) -> Int {
        locked {
            guard let e = entries.removeValue(forKey: Self.key(for: layer)) else { return 0 }
            return 8 * e.diagonal.count + 2 * e.correlations.count + 4 * (e.pendingSums.count + e.buffer.count)
        }
    }

    /// `moment(of:)` as a full symmetric `[width, width]` matrix, 0 between blocks.
    public func secondMoment(of layer: String) -> [Double]? {
        moment(of: layer)?.dense
    }

    // MARK: - The kept form

    /// One key's kept form (pending rows folded in, without changing this object): what the
    /// statistics file stores.
    public struct Kept: Sendable, Equatable {
        /// Input features.
        public var width: Int
        /// Rows behind the moment.
        public var rows: UInt64
        /// `E[x_i²]` per feature.
        public var diagonal: [Double]
        /// Correlations times `correlationScale`, block by block, each block's strict upper triangle row by row.
        public var correlations: [Int16]

        /// A kept form with every field given.
        public init(width: Int, rows: UInt64, diagonal: [Double], correlations: [Int16]) {
            self.width = width
            self.rows = rows
            self.diagonal = diagonal
            self.correlations = correlations
        }
    }

    /// The kept form of `key`, or `nil` if it saw no rows.
    public func kept(_ key: String) -> Kept? {
        locked { () -> Kept? in
            guard let e = entries[key] else { return nil }
            if e.pendingRows == 0 && e.buffered == 0 {
                return e.keptRows > 0
                    ? Kept(width: e.width, rows: e.keptRows, diagonal: e.diagonal, correlations: e.correlations.values) : nil
            }
            return packedMeans(key).map { compacted(width: $0.width, rows: $0.rows, means: $0.means) }
        }
    }

    /// Sets `key`'s kept form (the file reader); `false` (nothing set) if its sizes do not fit
    /// this object's block size.
    @discardableResult
    public func setKept(_ key: String, _ kept: Kept) -> Bool {
        guard fits(width: kept.width, rows: kept.rows, diagonal: kept.diagonal, correlations: kept.correlations.count)
        else { return false }
        locked { entries[key] = Entry(kept) }
        return true
    }

    /// `setKept` with the correlations left where they are: `mappedCorrelations` (2 bytes each, in the order `Kept`
    /// holds them) are read from it each time they are used, and its pages released after (a statistics file's
    /// mapping, which must not change while this object holds it).
    @discardableResult
    func setKept(_ key: String, width: Int, rows: UInt64, diagonal: [Double], mappedCorrelations: ByteStorage) -> Bool {
        guard mappedCorrelations.count % 2 == 0,
              fits(width: width, rows: rows, diagonal: diagonal, correlations: mappedCorrelations.count / 2) else { return false }
        var entry = Entry(width: width)
        entry.keptRows = rows
        entry.diagonal = diagonal
        entry.correlations = .mapped(mappedCorrelations)
        locked { entries[key] = entry }
        return true
    }

    private func fits(width: Int, rows: UInt64, diagonal: [Double], correlations: Int) -> Bool {
        width > 0 && rows > 0 && diagonal.count == width
            && correlations == Self.correlationCount(width: width, blockSize: blockSize)
    }

    /// A kept correlation `c` in [-1, 1] is stored as `c · correlationScale` rounded to the nearest integer.
    public static let correlationScale = 32767.0

    /// Packed means → the kept form: the diagonal as it is, the rest as fixed-point correlations.
    private func compacted(width: Int, rows: UInt64, means: [Double]) -> Kept {
        var diagonal = [Double](repeating: 0, count: width)
        var correlations = [Int16]()
        correlations.reserveCapacity(Self.correlationCount(width: width, blockSize: blockSize))
        var k = 0
        for (start, size) in Self.blocks(width: width, blockSize: blockSize) {
            let first = k
            for i in 0..<size {
                diagonal[start + i] = max(means[k], 0)
                k += size - i
            }
            k = first
            for i in 0..<size {
                let di = diagonal[start + i]
                k += 1
                for j in (i + 1)..<size {
                    let dd = di * diagonal[start + j]
                    let c = dd > 0 ? min(max(means[k] / dd.squareRoot(), -1), 1) : 0
                    correlations.append(Int16((c * Self.correlationScale).rounded()))
                    k += 1
                }
            }
        }
        return Kept(width: width, rows: rows, diagonal: diagonal, correlations: correlations)
    }

    /// The least share of the result a merged pass has: past about this many passes' worth of rows the kept
    /// moments become a moving average rather than a mean of everything. Without a floor each new utterance's
    /// share would fall towards nothing as the utterances add up, and a daemon's statistics would stop following
    /// its user (a new microphone, a new room).
    public static let leastMergedShare = 1.0 / 64

    /// Folds `other` (another pass, another session; the same block size) into this object's
    /// kept form, weighted by row counts, with `other` weighing at least `leastMergedShare`; this object's
    /// own pending rows are folded in too. A layer whose width differs is left as it is.
    ///
    /// `other`'s moments are moved, not copied: each key leaves `other` as it is folded in, so a pass's
    /// float sums (tiny.en: about 18 MB, the decoder's made from its buffered rows here) and the kept form
    /// they go into are never both whole in memory.
    public func merge(_ other: InputCovariance) {
        guard other !== self else { return }
        precondition(other.blockSize == blockSize, "InputCovariance.merge: block sizes differ")
        for name in other.layerNames {
            let taken = other.locked { () -> (width: Int, rows: UInt64, means: [Double])? in
                defer { other.entries[name] = nil }
                return other.packedMeans(name)
            }
            guard let theirs = taken else { continue }
            locked {
                var width = theirs.width, rows = theirs.rows, means = theirs.means
                if let mine = packedMeans(name) {
                    guard mine.width == theirs.width else { return }
                    rows = mine.rows + theirs.rows
                    let b = max(Double(theirs.rows) / Double(rows), Self.leastMergedShare), a = 1 - b
                    for k in means.indices { means[k] = a * mine.means[k] + b * theirs.means[k] }
                    width = mine.width
                }
                entries[name] = Entry(compacted(width: width, rows: rows, means: means))
            }
        }
    }

    /// An independent copy (the arrays are shared until either side changes them).
    public func copy() -> InputCovariance {
        let c = InputCovariance(blockSize: blockSize, accepts: accepts)
        locked {
            for key in Array(entries.keys) { flushLocked(key) }
            c.entries = entries
        }
        return c
    }

    /// Forgets everything.
    public func reset() {
        locked { entries = [:] }
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}
