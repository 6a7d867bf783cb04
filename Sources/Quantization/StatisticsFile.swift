import CKernels
import CZlib
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import WhisperEngine

/// A stable identity string for a model's weights: its name, shape, and a digest (CRC32
/// and 64-bit FNV-1a, 96 bits together) over every float weight of its linear layers in
/// network order (a `HalfMatrix` counts as the float32 values it widens to). Statistics and
/// quantized models record it so that they are never applied to another model. Not
/// cryptographic: it guards against mix-ups, not against forgery.
public enum ModelIdentity {
    /// `name (n_state 384, layers 4+4, vocab 51864, weights 1a2b3c4d-0123456789abcdef)`.
    /// Layers that are not float (already quantized) contribute their name, shape and byte size.
    public static func of(name: String, weights: WhisperWeights) -> String {
        let d = weights.dimensions
        return "\(name) (n_state \(d.nState), layers \(d.nAudioLayers)+\(d.nTextLayers), vocab \(d.nVocab), "
            + "weights \(digest(weights)))"
    }

    /// The identity of a loaded model (see `of(name:weights:)`).
    public static func of(_ model: WhisperModel) -> String { of(name: model.name, weights: model.weights) }

    /// `crc32-fnv1a64` in hex over the layers' weights.
    public static func digest(_ weights: WhisperWeights) -> String {
        var d = Digest()
        for layer in weights.linearLayers {
            if let f = layer.weight as? FloatMatrix {
                f.values.withUnsafeBytes { d.fold($0) }
            } else if let h = layer.weight as? HalfMatrix {
                // The same full-precision values, mapped rather than copied: the same identity
                // (folded a tile at a time, so no float32 copy of the matrix is made here either; tiles of
                // 128 rows of an even width are whole 8-byte words, which the word-wise hash needs to agree).
                h.forEachFloatTile { _, _, tile in d.fold(UnsafeRawBufferPointer(tile)) }
            } else {
                let tag = Array("\(layer.name):\(layer.outFeatures)x\(layer.inFeatures):\(layer.weight.byteSize)".utf8)
                tag.withUnsafeBytes { d.fold($0) }
            }
        }
        return d.hex
    }

    /// `vocab-crc32-fnv1a64` over the model's vocabulary (every token, in id order): what a
    /// quantized model needs from its source besides the weights it carries. Cheap, so a
    /// `.myq` can be paired with its source's vocabulary without loading the source's weights.
    public static func vocabularyDigest(_ model: WhisperModel) -> String {
        var d = Digest()
        for id in 0..<model.tokenizer.vocabularySize {
            Array((model.tokenizer.token(id) + "\n").utf8).withUnsafeBytes { d.fold($0) }
        }
        return "vocab-" + d.hex
    }
}

/// CRC32 (zlib) and FNV-1a-64 over a byte stream.
struct Digest {
    private var crc: uLong = crc32(0, nil, 0)
    private var fnv: UInt64 = 0xcbf2_9ce4_8422_2325

    /// Folds `raw` in.
    mutating func fold(_ raw: UnsafeRawBufferPointer) {
        crc = crc32(crc, raw.bindMemory(to: Bytef.self).baseAddress, uInt(raw.count))
        // FNV-1a over 64-bit words (then the tail bytes): fast enough for 150 MB of weights.
        let words = raw.count / 8
        for i in 0..<words {
            fnv ^= raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
            fnv = fnv &* 0x0000_0100_0000_01b3
        }
        for i in (words * 8)..<raw.count {
            fnv ^= UInt64(raw[i])
            fnv = fnv &* 0x0000_0100_0000_01b3
        }
    }

    /// `crc32-fnv1a64` in hex.
    var hex: String { String(format: "%08x", UInt32(truncatingIfNeeded: crc)) + "-" + String(format: "%016llx", fnv) }
}

/// Errors reading or writing a statistics file; each names the file.
public enum StatisticsFileError: Error, Equatable, CustomStringConvertible {
    /// The file could not be opened or read.
    case cannotRead(path: String, reason: String)
    /// The file could not be written.
    case cannotWrite(path: String, reason: String)
    /// The file does not start with the statistics magic.
    case notStatisticsFile(path: String)
    /// The file has a format version this build does not read.
    case unsupportedVersion(path: String, version: UInt32)
    /// The file ends before its declared size.
    case truncated(path: String)
    /// The stored checksum does not match the contents.
    case checksumMismatch(path: String, stored: UInt32, computed: UInt32)
    /// A field holds what no statistics could (a count or size beyond what the file holds, a value out of
    /// range, contents that disagree).
    case corrupt(path: String, reason: String)

    /// A one-line explanation naming the file.
    public var description: String {
        switch self {
        case let .cannotRead(path, reason): return "cannot read statistics file \(path): \(reason)"
        case let .cannotWrite(path, reason): return "cannot write statistics file \(path): \(reason)"
        case let .notStatisticsFile(path):
            return "\(path) is not a myqasr statistics file (expected magic \"MYQS\"; make one with `myqasr stats`)"
        case let .unsupportedVersion(path, version):
            return "statistics file \(path) has format version \(version); this build reads version "
                + "\(StatisticsFile.version) only (gather the statistics again with `myqasr stats`)"
        case let .truncated(path): return "statistics file \(path) is truncated"
        case let .checksumMismatch(path, stored, computed):
            return "statistics file \(path) is corrupt: CRC32 " + String(format: "%08x", computed)
                + " does not match the stored " + String(format: "%08x", stored)
        case let .corrupt(path, reason): return "statistics file \(path) is corrupt: \(reason)"
        }
    }
}

/// The on-disk form of `ActivationStatistics` (`.myqs`), described field by field in
/// docs/quantized-model-format.md ("The statistics file"). Little-endian binary:
///
///     "MYQS" | version u32 (4) | payload length u64 | payload | CRC32 u32 (of everything before it)
///     payload: model identity (u32 length + UTF-8) | sample count u64 | layer count u32 | layers |
///              moments kept u8 (0 or 1) | moment block size u32 | moment count u32 | moments
///     layer:   name | in u32 | out u32 | output elements u64 | input rows u64 |
///              non-empty bins u32 × (bin u16, count u64) | Σx² f64 × in | max|x| f32 × in
///     moment:  name | width u32 | rows u64 | E[x_i²] f64 × width |
///              correlations i16 × (per block of the block size, its strict upper triangle; value / 32767)
///
/// `load` checks every field against what the file can hold before using it, so a lying count is
/// a `corrupt` error, never a trap. Aggregates only: no audio, features, tokens or text.
public enum StatisticsFile {
    /// File magic.
    public static let magic: [UInt8] = Array("MYQS".utf8)
    /// The format version this build writes and reads (4: bounded second moments, fixed-point
    /// correlations; versions 1 to 3 are refused with a message to gather the statistics again).
    public static let version: UInt32 = 4

    /// Where `write` puts the file's new contents before renaming them over `path`: `path` + `.tmp`, in the
    /// same directory. A process killed mid-write leaves it behind; whoever owns `path` may delete it.
    public static func temporaryPath(for path: String) -> String { path + ".tmp" }

    /// The canonical payload encoding of `statistics` (what the file stores and the digest hashes).
    public static func payload(_ statistics: ActivationStatistics) -> [UInt8] {
        var w = ByteWriter()
        writePayload(statistics, to: &w)
        return w.bytes
    }

    /// Writes the payload of `statistics` into `w` (which may pass it on in pieces: `ByteWriter(drain:)`).
    static func writePayload(_ statistics: ActivationStatistics, to w: inout ByteWriter) {
        w.string(statistics.modelIdentity)
        w.u64(UInt64(statistics.sampleCount))
        let layers = statistics.layers
        w.u32(UInt32(layers.count))
        for l in layers {
            w.string(l.name)
            w.u32(UInt32(l.inFeatures))
            w.u32(UInt32(l.outFeatures))
            w.u64(l.outputElementCount)
            w.u64(l.inputRowCount)
            let nonEmpty = l.outputHistogram.counts.enumerated().filter { $0.element > 0 }
            w.u32(UInt32(nonEmpty.count))
            for (bin, count) in nonEmpty {
                w.u16(UInt16(bin))
                w.u64(count)
            }
            for v in l.inputSquareSums { w.u64(v.bitPattern) }
            for v in l.inputAbsMax { w.u32(v.bitPattern) }
        }
        let moments = statistics.secondMoments
        let kept = (moments?.layerNames ?? []).compactMap { name in moments!.kept(name).map { (name, $0) } }
        w.u8(moments == nil ? 0 : 1)
        w.u32(UInt32(moments?.blockSize ?? 0))
        w.u32(UInt32(kept.count))
        for (name, k) in kept {
            w.string(name)
            w.u32(UInt32(k.width))
            w.u64(k.rows)
            for v in k.diagonal { w.u64(v.bitPattern) }
            k.correlations.withUnsafeBytes { w.append($0) }
        }
    }

    /// The whole file image of `statistics`.
    public static func encode(_ statistics: ActivationStatistics) -> [UInt8] {
        let body = payload(statistics)
        var w = ByteWriter()
        w.bytes += magic
        w.u32(version)
        w.u64(UInt64(body.count))
        w.bytes += body
        w.u32(crc(w.bytes))
        return w.bytes
    }

    /// Writes `statistics` to `path`, readable by the owner only (0600): into
    /// `temporaryPath(for: path)` (created 0600, or truncated and set to 0600 if an earlier write
    /// left it), synced to disk, then renamed over `path`; the directory is synced too. A crash leaves
    /// either the old file or the new one, and possibly the temporary file. The payload goes to the file
    /// in pieces of `ByteWriter.drainBytes` as it is encoded (the header, which holds its length, last):
    /// no image of the file (10.5 MB for tiny.en) is made in memory.
    public static func write(_ statistics: ActivationStatistics, to path: String) throws {
        let temporary = temporaryPath(for: path)
        func failure(_ what: String) -> StatisticsFileError {
            .cannotWrite(path: path, reason: "\(what) \(temporary): \(String(cString: strerror(errno)))")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw failure("cannot create") }
        let headerBytes = magic.count + 4 + 8
        var payloadCRC: UInt32 = 0, length = 0, failed = false
        var body = ByteWriter { raw in
            guard !failed else { return }
            payloadCRC = QuantizedModelFile.crc32Update(payloadCRC, raw)
            failed = !writeAll(fd, raw, at: headerBytes + length)
            length += raw.count
        }
        var ok = fchmod(fd, 0o600) == 0
        if ok {
            writePayload(statistics, to: &body)
            body.flush()
            var header = ByteWriter()
            header.append(magic)
            header.u32(version)
            header.u64(UInt64(length))
            // The checksum covers the header and the payload: the header's CRC extended by the payload's.
            var tail = ByteWriter()
            tail.u32(UInt32(truncatingIfNeeded: crc32_combine(uLong(crc(header.bytes)), uLong(payloadCRC), off_t(length))))
            ok = !failed && header.bytes.withUnsafeBytes { writeAll(fd, $0, at: 0) }
                && tail.bytes.withUnsafeBytes { writeAll(fd, $0, at: headerBytes + length) } && fsync(fd) == 0
        }
        let error = ok ? nil : failure("cannot write")
        close(fd)
        if let error {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let error = failure("cannot rename")
            unlink(temporary)
            throw error
        }
        let directory = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent,
                             O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            _ = fsync(directory)
            close(directory)
        }
    }

    /// Reads a statistics file, rejecting foreign, truncated or corrupt files. The file is mapped, and its pages
    /// leave the resident set again once read (`mq_release_mapped_pages`): what stays is the statistics decoded,
    /// not a copy of the file beside them. With `mappingMoments`, the second moments' correlations (most of the
    /// file) stay in the mapping, checked but not copied, and are read again each time one is used: for a caller that
    /// reads one moment at a time (the daemon's builds and merges), and a file that is replaced (as `write` does) but
    /// never changed in place while they are held.
    public static func load(path: String, mappingMoments: Bool = false) throws -> ActivationStatistics {
        let file: ByteStorage
        do {
            file = try ByteStorage.mapping(file: path)
        } catch {
            throw StatisticsFileError.cannotRead(path: path, reason: "\(error)")
        }
        return try file.withUnsafeBytes {
            try decode($0, path: path, mapped: file.isMemoryMapped, momentsIn: mappingMoments && file.isMemoryMapped ? file : nil)
        }
    }

    /// Parses a file image; `path` only names the file in errors. Every count and size is checked
    /// against the bytes left before anything is allocated or converted.
    public static func decode(_ bytes: [UInt8], path: String) throws -> ActivationStatistics {
        try bytes.withUnsafeBytes { try decode($0, path: path, mapped: false) }
    }

    /// Parses the file image `bytes`; with `mapped` (a read-only file mapping), each part's pages are released
    /// once read. With `momentsIn` (the storage of `bytes`), the correlations are left there.
    private static func decode(_ bytes: UnsafeRawBufferPointer, path: String, mapped: Bool,
                               momentsIn file: ByteStorage? = nil) throws -> ActivationStatistics {
        var released = 0
        func release(upTo end: Int) {
            guard mapped, end > released else { return }
            mq_release_mapped_pages(bytes.baseAddress! + released, end - released, bytes.baseAddress!, bytes.count)
            released = end
        }
        guard bytes.count >= 4 else {
            throw bytes.isEmpty ? StatisticsFileError.truncated(path: path) : .notStatisticsFile(path: path)
        }
        guard bytes.prefix(4).elementsEqual(magic) else { throw StatisticsFileError.notStatisticsFile(path: path) }
        var header = ByteReader(bytes: bytes, path: path, position: 4)
        let fileVersion = try header.u32()
        guard fileVersion == version else { throw StatisticsFileError.unsupportedVersion(path: path, version: fileVersion) }
        let length = try header.u64()
        let bodyStart = header.position
        guard length <= UInt64(bytes.count - bodyStart), bytes.count - bodyStart - Int(length) >= 4 else {
            throw StatisticsFileError.truncated(path: path)
        }
        let bodyEnd = bodyStart + Int(length)
        guard bytes.count == bodyEnd + 4 else {
            throw StatisticsFileError.corrupt(path: path, reason: "\(bytes.count - bodyEnd - 4) unexpected bytes after the checksum")
        }
        var tail = ByteReader(bytes: bytes, path: path, position: bodyEnd)
        let stored = try tail.u32()
        // The checksum a MiB at a time, each MiB's pages released after it.
        var computed: UInt32 = 0
        for start in stride(from: 0, to: bodyEnd, by: 1 << 20) {
            let end = min(bodyEnd, start + (1 << 20))
            computed = QuantizedModelFile.crc32Update(computed, UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            release(upTo: end)
        }
        released = 0
        guard stored == computed else {
            throw StatisticsFileError.checksumMismatch(path: path, stored: stored, computed: computed)
        }
        func corrupt(_ reason: String) -> StatisticsFileError { .corrupt(path: path, reason: reason) }
        var r = ByteReader(bytes: bytes, path: path, position: bodyStart, end: bodyEnd)
        let identity = try r.string()
        let storedSamples = try r.u64()
        let layerCount = try r.u32()
        // The smallest layer record: an empty name, in = out = 1, no bins, one Σx² and one max|x|.
        guard Int(layerCount) <= r.remaining / 44 else {
            throw corrupt("\(layerCount) layers cannot fit in \(r.remaining) bytes")
        }
        var layers: [LayerActivationStatistics] = []
        var seen = Set<String>()
        for _ in 0..<layerCount {
            let name = try r.string()
            guard seen.insert(name).inserted else { throw corrupt("layer \(name) appears twice") }
            let inFeatures = Int(try r.u32()), outFeatures = Int(try r.u32())
            guard inFeatures >= 1, outFeatures >= 1 else {
                throw corrupt("layer \(name) has shape \(outFeatures)x\(inFeatures)")
            }
            let elements = try r.u64(), rows = try r.u64()
            let (product, overflow) = rows.multipliedReportingOverflow(by: UInt64(outFeatures))
            guard !overflow, product == elements else {
                throw corrupt("layer \(name): \(elements) output values for \(rows) rows of \(outFeatures)")
            }
            let nonEmpty = Int(try r.u32())
            guard nonEmpty <= AbsHistogram.binCount, nonEmpty <= r.remaining / 10 else {
                throw corrupt("layer \(name): \(nonEmpty) histogram bins")
            }
            var counts = [UInt64](repeating: 0, count: AbsHistogram.binCount)
            var total: UInt64 = 0, previous = -1
            for _ in 0..<nonEmpty {
                let bin = Int(try r.u16()), count = try r.u64()
                guard bin > previous, bin < counts.count, count > 0 else {
                    throw corrupt("layer \(name): histogram bin \(bin) out of order, out of range or empty")
                }
                let (sum, over) = total.addingReportingOverflow(count)
                guard !over else { throw corrupt("layer \(name): histogram counts overflow") }
                counts[bin] = count
                total = sum
                previous = bin
            }
            guard total == elements else {
                throw corrupt("layer \(name): histogram holds \(total) values, header says \(elements)")
            }
            guard inFeatures <= r.remaining / 12 else { throw StatisticsFileError.truncated(path: path) }
            let sums = try r.doubles(inFeatures), maxima = try r.floats(inFeatures)
            guard sums.allSatisfy({ $0.isFinite && $0 >= 0 }), maxima.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw corrupt("layer \(name): a sum of squares or a maximum is negative or not finite")
            }
            layers.append(LayerActivationStatistics(
                name: name, inFeatures: inFeatures, outFeatures: outFeatures, outputHistogram: AbsHistogram(counts: counts)!,
                outputElementCount: elements, inputRowCount: rows, inputSquareSums: sums, inputAbsMax: maxima)!)
        }
        // Every utterance gives every layer at least one row.
        let fewestRows = layers.map(\.inputRowCount).min() ?? 0
        guard storedSamples <= fewestRows, let samples = Int(exactly: storedSamples) else {
            throw corrupt("sample count \(storedSamples) is more than the \(fewestRows) rows the layers saw")
        }
        let momentsKept = try r.u8()
        let blockSize = Int(try r.u32())
        let momentCount = Int(try r.u32())
        guard momentsKept <= 1, momentsKept == 1 || (blockSize == 0 && momentCount == 0) else {
            throw corrupt("second-moment flag \(momentsKept) with block size \(blockSize) and \(momentCount) moments")
        }
        guard momentCount <= layers.count else { throw corrupt("\(momentCount) second moments for \(layers.count) layers") }
        let secondMoments = momentsKept == 1 ? InputCovariance(blockSize: blockSize) : nil
        var seenMoments = Set<String>()
        for _ in 0..<momentCount {
            let name = try r.string()
            guard seenMoments.insert(name).inserted, InputCovariance.key(for: name) == name,
                  let layer = layers.first(where: { $0.name == name }) else {
                throw corrupt("second moment of \(name): repeated, shared with another layer, or no such layer")
            }
            let width = Int(try r.u32()), rows = try r.u64()
            guard width == layer.inFeatures else {
                throw corrupt("second moment of \(name) is \(width) wide, the layer has \(layer.inFeatures) inputs")
            }
            guard rows >= 1, rows <= layer.inputRowCount else {
                throw corrupt("second moment of \(name) has \(rows) rows, the layer saw \(layer.inputRowCount)")
            }
            let diagonal = try r.doubles(width)
            guard diagonal.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw corrupt("second moment of \(name): a diagonal value is negative or not finite")
            }
            let count = InputCovariance.correlationCount(width: width, blockSize: blockSize)
            guard count <= r.remaining / 2 else { throw StatisticsFileError.truncated(path: path) }
            let correlationsOffset = r.position
            let correlations = try r.int16s(count)
            guard correlations.allSatisfy({ $0 >= -Int16(InputCovariance.correlationScale) }) else {
                throw corrupt("second moment of \(name): a correlation is beyond ±1")
            }
            if let file {
                secondMoments!.setKept(name, width: width, rows: rows, diagonal: diagonal,
                                       mappedCorrelations: try file.slice(offset: correlationsOffset, count: 2 * count))
            } else {
                secondMoments!.setKept(name, InputCovariance.Kept(width: width, rows: rows, diagonal: diagonal,
                                                                  correlations: correlations))
            }
            release(upTo: r.position)
        }
        guard r.position == bodyEnd else { throw corrupt("\(bodyEnd - r.position) unread payload bytes") }
        return ActivationStatistics(modelIdentity: identity, sampleCount: samples, layers: layers,
                                    secondMoments: secondMoments)
    }

    /// A stable digest of a statistics set: `myqs1-` + CRC32 + FNV-1a-64 of the canonical
    /// payload, in hex. Equal statistics give equal digests on every machine.
    public static func digest(_ statistics: ActivationStatistics) -> String {
        var crc: UInt32 = 0
        var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
        var w = ByteWriter { raw in
            crc = QuantizedModelFile.crc32Update(crc, raw)
            for b in raw {
                fnv ^= UInt64(b)
                fnv = fnv &* 0x0000_0100_0000_01b3
            }
        }
        writePayload(statistics, to: &w)
        w.flush()
        return "myqs1-" + String(format: "%08x", crc) + String(format: "%016llx", fnv)
    }

    static func crc(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBufferPointer { crc($0) }
    }

    static func crc(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt32 {
        UInt32(truncatingIfNeeded: crc32(crc32(0, nil, 0), bytes.baseAddress, uInt(bytes.count)))
    }
}

/// Little-endian writer. Without `drain`, the bytes collect in `bytes`; with it, they are handed to `drain` in
/// pieces of about `drainBytes` as they come (`flush` hands over the rest), so that a writer of a 10 MB file or
/// digest never holds it whole.
struct ByteWriter {
    static let drainBytes = 1 << 16
    var bytes: [UInt8] = []
    private let drain: ((UnsafeRawBufferPointer) -> Void)?

    init(drain: ((UnsafeRawBufferPointer) -> Void)? = nil) {
        self.drain = drain
    }

    mutating func append(_ raw: UnsafeRawBufferPointer) {
        if let drain, bytes.count + raw.count > Self.drainBytes {
            flush()
            if raw.count >= Self.drainBytes { return drain(raw) }
        }
        bytes.append(contentsOf: raw)
    }

    mutating func append(_ array: [UInt8]) { array.withUnsafeBytes { append($0) } }

    /// Hands what is collected to `drain` (nothing without one).
    mutating func flush() {
        guard let drain, !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { drain($0) }
        bytes.removeAll(keepingCapacity: true)
    }

    mutating func u8(_ v: UInt8) { withUnsafeBytes(of: v) { append($0) } }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { append($0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { append($0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { append($0) } }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        append(utf8)
    }
    /// Little-endian f32 values in one copy (every supported host is little-endian).
    mutating func floats(_ v: [Float]) { v.withUnsafeBytes { append($0) } }
}

/// Little-endian reader that reports running off the end as a truncated file.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var position: Int
    var end: Int

    init(bytes: UnsafeRawBufferPointer, path: String, position: Int, end: Int? = nil) {
        self.bytes = bytes
        self.path = path
        self.position = position
        self.end = end ?? bytes.count
    }

    mutating func take(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, end - position >= n else { throw StatisticsFileError.truncated(path: path) }
        defer { position += n }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<position + n])
    }

    mutating func uint(_ width: Int) throws -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in try take(width).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }

    /// Bytes left before `end`.
    var remaining: Int { end - position }

    mutating func u8() throws -> UInt8 { UInt8(try uint(1)) }
    mutating func u16() throws -> UInt16 { UInt16(try uint(2)) }
    mutating func u32() throws -> UInt32 { UInt32(try uint(4)) }
    mutating func u64() throws -> UInt64 { try uint(8) }

    /// `count` little-endian f32 values.
    mutating func floats(_ count: Int) throws -> [Float] {
        guard count >= 0, count <= (end - position) / 4 else { throw StatisticsFileError.truncated(path: path) }
        let raw = try take(count * 4)
        return [Float](unsafeUninitializedCapacity: count) { buffer, n in
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: raw)
            n = count
        }
    }

    /// `count` little-endian f64 values.
    mutating func doubles(_ count: Int) throws -> [Double] {
        guard count >= 0, count <= (end - position) / 8 else { throw StatisticsFileError.truncated(path: path) }
        return try (0..<count).map { _ in Double(bitPattern: try u64()) }
    }

    /// `count` little-endian i16 values.
    mutating func int16s(_ count: Int) throws -> [Int16] {
        guard count >= 0, count <= (end - position) / 2 else { throw StatisticsFileError.truncated(path: path) }
        let raw = try take(count * 2)
        return [Int16](unsafeUninitializedCapacity: count) { buffer, n in
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: raw)
            n = count
        }
    }

    mutating func string() throws -> String {
        let n = Int(try u32())
        guard let s = String(validating: try take(n), as: UTF8.self) else {
            throw StatisticsFileError.corrupt(path: path, reason: "a name is not UTF-8")
        }
        return s
    }
}
