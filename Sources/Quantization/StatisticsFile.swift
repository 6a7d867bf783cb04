import CZlib
import Foundation
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
    /// The file was written by a newer format version.
    case unsupportedVersion(path: String, version: UInt32)
    /// The file ends before its declared size.
    case truncated(path: String)
    /// The stored checksum does not match the contents.
    case checksumMismatch(path: String, stored: UInt32, computed: UInt32)
    /// The contents are inconsistent (sizes, names).
    case malformed(path: String, reason: String)

    /// A one-line explanation naming the file.
    public var description: String {
        switch self {
        case let .cannotRead(path, reason): return "cannot read statistics file \(path): \(reason)"
        case let .cannotWrite(path, reason): return "cannot write statistics file \(path): \(reason)"
        case let .notStatisticsFile(path):
            return "\(path) is not a myqasr statistics file (expected magic \"MYQS\"; make one with `myqasr stats`)"
        case let .unsupportedVersion(path, version):
            return "statistics file \(path) has format version \(version); this build reads versions "
                + "\(StatisticsFile.readableVersions.lowerBound) to \(StatisticsFile.readableVersions.upperBound)"
        case let .truncated(path): return "statistics file \(path) is truncated"
        case let .checksumMismatch(path, stored, computed):
            return "statistics file \(path) is corrupt: CRC32 " + String(format: "%08x", computed)
                + " does not match the stored " + String(format: "%08x", stored)
        case let .malformed(path, reason): return "statistics file \(path) is malformed: \(reason)"
        }
    }
}

/// The on-disk form of `ActivationStatistics` (`.myqs`). Little-endian binary:
///
///     "MYQS" | version u32 | payload length u64 | payload | CRC32 u32 (of everything before it)
///     payload: model identity (u32 length + UTF-8) | sample count u64 | layer count u32 | layers
///     layer:   name | in u32 | out u32 | output elements u64 | input rows u64 |
///              non-empty bins u32 × (bin u16, count u64) | Σx² f64 × in | max|x| f32 × in
///     then (version 2) second-moment layer count u32 (0: none kept) | second-moment layers
///     second-moment layer: name | width u32 | rows u64 | upper triangle of Σ x xᵀ, row by row,
///              f32 × width·(width+1)/2
///
/// Version 1 files (no second moments) are still read.
///
/// Aggregates only: the file holds no audio, features, tokens or text.
public enum StatisticsFile {
    /// File magic.
    public static let magic: [UInt8] = Array("MYQS".utf8)
    /// Current format version.
    public static let version: UInt32 = 2
    /// Versions this build reads.
    public static let readableVersions: ClosedRange<UInt32> = 1...2

    /// The canonical payload encoding of `statistics` (what the file stores and the digest hashes).
    public static func payload(_ statistics: ActivationStatistics) -> [UInt8] {
        var w = ByteWriter()
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
        let names = moments?.layerNames ?? []
        w.u32(UInt32(names.count))
        for name in names {
            let (width, rows, sums) = moments!.upperTriangle(of: name)!
            w.string(name)
            w.u32(UInt32(width))
            w.u64(UInt64(rows))
            w.floats(sums)
        }
        return w.bytes
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

    /// Writes `statistics` to `path` atomically (a temporary file renamed over it).
    public static func write(_ statistics: ActivationStatistics, to path: String) throws {
        do {
            try Data(encode(statistics)).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw StatisticsFileError.cannotWrite(path: path, reason: error.localizedDescription)
        }
    }

    /// Reads a statistics file, rejecting foreign, truncated or corrupt files.
    public static func load(path: String) throws -> ActivationStatistics {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw StatisticsFileError.cannotRead(path: path, reason: error.localizedDescription)
        }
        return try decode([UInt8](data), path: path)
    }

    /// Parses a file image; `path` only names the file in errors.
    public static func decode(_ bytes: [UInt8], path: String) throws -> ActivationStatistics {
        guard bytes.count >= 4 else {
            throw bytes.isEmpty ? StatisticsFileError.truncated(path: path) : .notStatisticsFile(path: path)
        }
        guard Array(bytes[0..<4]) == magic else { throw StatisticsFileError.notStatisticsFile(path: path) }
        var header = ByteReader(bytes: bytes, path: path, position: 4)
        let fileVersion = try header.u32()
        guard readableVersions.contains(fileVersion) else {
            throw StatisticsFileError.unsupportedVersion(path: path, version: fileVersion)
        }
        let length = try header.u64()
        let bodyStart = header.position
        guard length <= UInt64(bytes.count), bytes.count - bodyStart >= Int(length) + 4 else {
            throw StatisticsFileError.truncated(path: path)
        }
        let bodyEnd = bodyStart + Int(length)
        guard bytes.count == bodyEnd + 4 else {
            throw StatisticsFileError.malformed(path: path, reason: "\(bytes.count - bodyEnd - 4) unexpected bytes after the checksum")
        }
        var tail = ByteReader(bytes: bytes, path: path, position: bodyEnd)
        let stored = try tail.u32()
        let computed = bytes.withUnsafeBufferPointer { crc(UnsafeBufferPointer(rebasing: $0[0..<bodyEnd])) }
        guard stored == computed else {
            throw StatisticsFileError.checksumMismatch(path: path, stored: stored, computed: computed)
        }
        var r = ByteReader(bytes: bytes, path: path, position: bodyStart, end: bodyEnd)
        let identity = try r.string()
        let samples = try r.u64()
        let layerCount = try r.u32()
        var layers: [LayerActivationStatistics] = []
        var seen = Set<String>()
        for _ in 0..<layerCount {
            let name = try r.string()
            guard seen.insert(name).inserted else {
                throw StatisticsFileError.malformed(path: path, reason: "layer \(name) appears twice")
            }
            let inFeatures = Int(try r.u32()), outFeatures = Int(try r.u32())
            let elements = try r.u64(), rows = try r.u64()
            let nonEmpty = try r.u32()
            var counts = [UInt64](repeating: 0, count: AbsHistogram.binCount)
            for _ in 0..<nonEmpty {
                let bin = Int(try r.u16())
                guard bin < counts.count else {
                    throw StatisticsFileError.malformed(path: path, reason: "layer \(name): histogram bin \(bin) out of range")
                }
                counts[bin] = try r.u64()
            }
            guard inFeatures <= (bodyEnd - r.position) / 12 else { throw StatisticsFileError.truncated(path: path) }
            var sums = [Double](repeating: 0, count: inFeatures)
            for i in 0..<inFeatures { sums[i] = Double(bitPattern: try r.u64()) }
            var maxima = [Float](repeating: 0, count: inFeatures)
            for i in 0..<inFeatures { maxima[i] = Float(bitPattern: try r.u32()) }
            let histogram = AbsHistogram(counts: counts)!
            guard histogram.total == elements else {
                throw StatisticsFileError.malformed(
                    path: path, reason: "layer \(name): histogram holds \(histogram.total) values, header says \(elements)")
            }
            layers.append(LayerActivationStatistics(
                name: name, inFeatures: inFeatures, outFeatures: outFeatures, outputHistogram: histogram,
                outputElementCount: elements, inputRowCount: rows, inputSquareSums: sums, inputAbsMax: maxima)!)
        }
        var secondMoments: InputCovariance?
        if fileVersion >= 2 {
            let count = try r.u32()
            if count > 0 { secondMoments = InputCovariance() }
            var seenMoments = Set<String>()
            for _ in 0..<count {
                let name = try r.string()
                guard seenMoments.insert(name).inserted, let layer = layers.first(where: { $0.name == name }) else {
                    throw StatisticsFileError.malformed(path: path, reason: "second moments of \(name): repeated or no such layer")
                }
                let width = Int(try r.u32()), rows = Int(try r.u64())
                guard width == layer.inFeatures else {
                    throw StatisticsFileError.malformed(
                        path: path, reason: "second moments of \(name) are \(width) wide, the layer has \(layer.inFeatures) inputs")
                }
                let sums = try r.floats(width * (width + 1) / 2)
                secondMoments!.setUpperTriangle(of: name, width: width, rows: rows, sums: sums)
            }
        }
        guard r.position == bodyEnd else {
            throw StatisticsFileError.malformed(path: path, reason: "\(bodyEnd - r.position) unread payload bytes")
        }
        return ActivationStatistics(modelIdentity: identity, sampleCount: Int(samples), layers: layers,
                                    secondMoments: secondMoments)
    }

    /// A stable digest of a statistics set: `myqs1-` + CRC32 + FNV-1a-64 of the canonical
    /// payload, in hex. Equal statistics give equal digests on every machine.
    public static func digest(_ statistics: ActivationStatistics) -> String {
        let body = payload(statistics)
        var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in body {
            fnv ^= UInt64(b)
            fnv = fnv &* 0x0000_0100_0000_01b3
        }
        return "myqs1-" + String(format: "%08x", crc(body)) + String(format: "%016llx", fnv)
    }

    static func crc(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBufferPointer { crc($0) }
    }

    static func crc(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt32 {
        UInt32(truncatingIfNeeded: crc32(crc32(0, nil, 0), bytes.baseAddress, uInt(bytes.count)))
    }
}

/// Little-endian writer.
struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        bytes += utf8
    }
    /// Little-endian f32 values in one copy (every supported host is little-endian).
    mutating func floats(_ v: [Float]) { v.withUnsafeBytes { bytes += $0 } }
}

/// Little-endian reader that reports running off the end as a truncated file.
struct ByteReader {
    let bytes: [UInt8]
    let path: String
    var position: Int
    var end: Int

    init(bytes: [UInt8], path: String, position: Int, end: Int? = nil) {
        self.bytes = bytes
        self.path = path
        self.position = position
        self.end = end ?? bytes.count
    }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, end - position >= n else { throw StatisticsFileError.truncated(path: path) }
        defer { position += n }
        return bytes[position..<position + n]
    }

    mutating func uint(_ width: Int) throws -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in try take(width).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }

    mutating func u16() throws -> UInt16 { UInt16(try uint(2)) }
    mutating func u32() throws -> UInt32 { UInt32(try uint(4)) }
    mutating func u64() throws -> UInt64 { try uint(8) }

    /// `count` little-endian f32 values.
    mutating func floats(_ count: Int) throws -> [Float] {
        guard count >= 0, count <= (end - position) / 4 else { throw StatisticsFileError.truncated(path: path) }
        let raw = try take(count * 4)
        return [Float](unsafeUninitializedCapacity: count) { buffer, n in
            raw.withUnsafeBytes { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
            n = count
        }
    }

    mutating func string() throws -> String {
        let n = Int(try u32())
        guard let s = String(validating: try take(n), as: UTF8.self) else {
            throw StatisticsFileError.malformed(path: path, reason: "a name is not UTF-8")
        }
        return s
    }
}
