import CZlib
import Foundation
import WhisperEngine

#if canImport(Glibc)
import Glibc
#endif

/// Where a quantized model came from, stored in the header of a `.myq` file.
public struct QuantizedModelMetadata: Sendable, Equatable {
    /// Name of the source model (e.g. `tiny.en`).
    public var sourceModelName: String
    /// Strong digest of the source model's `model.bin`, as given by the caller
    /// (e.g. `sha256:<hex>`); lets a loader check it pairs the file with the right vocabulary.
    public var sourceModelDigest: String
    /// When the file was made; stored to whole seconds (ISO 8601, UTC).
    public var createdAt: Date
    /// Digest of the activation statistics the bit allocation came from (caller-defined).
    public var statisticsDigest: String
    /// The group size the quantizer was asked for (each layer also records its own).
    public var groupSize: Int
    /// Sensitivity of each layer by name, where the allocator computed one.
    public var sensitivities: [String: Double]
    /// `ModelIdentity.vocabularyDigest` of the source model, when known: lets a loader pair
    /// the file with the source's vocabulary without loading the source's weights.
    public var sourceVocabularyDigest: String?
    /// How the codes were chosen, when recorded.
    public var rounding: RoundingMethod?

    /// Creates metadata; `createdAt` defaults to now, rounded down to a whole second.
    public init(sourceModelName: String, sourceModelDigest: String,
                createdAt: Date = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)),
                statisticsDigest: String, groupSize: Int, sensitivities: [String: Double] = [:],
                sourceVocabularyDigest: String? = nil, rounding: RoundingMethod? = nil) {
        self.sourceModelName = sourceModelName
        self.sourceModelDigest = sourceModelDigest
        self.createdAt = createdAt
        self.statisticsDigest = statisticsDigest
        self.groupSize = groupSize
        self.sensitivities = sensitivities
        self.sourceVocabularyDigest = sourceVocabularyDigest
        self.rounding = rounding
    }
}

/// Why a `.myq` file could not be written or read. Every case names the file.
public enum QuantizedModelFileError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened or mapped.
    case cannotRead(path: String, reason: String)
    /// The file could not be written.
    case cannotWrite(path: String, reason: String)
    /// The first 8 bytes are not the `.myq` magic.
    case badMagic(path: String)
    /// A format version this build does not read.
    case unsupportedVersion(path: String, found: UInt32, supported: UInt32)
    /// The file is shorter than its own header says.
    case truncated(path: String, expectedBytes: Int, actualBytes: Int)
    /// The CRC32 over header and data does not match the stored one: the file is corrupt.
    case checksumMismatch(path: String, stored: UInt32, computed: UInt32)
    /// The header is unreadable or inconsistent (missing layer, bad shape, section out of range).
    case badHeader(path: String, reason: String)
    /// The installed source model does not match the one the file was made from.
    case sourceMismatch(path: String, reason: String)

    /// A message naming the file and what is wrong with it.
    public var description: String {
        switch self {
        case let .cannotRead(path, reason): return "\(path): cannot read quantized model: \(reason)"
        case let .cannotWrite(path, reason): return "\(path): cannot write quantized model: \(reason)"
        case let .badMagic(path): return "\(path): not a myqasr quantized model (.myq): bad magic bytes"
        case let .unsupportedVersion(path, found, supported):
            return "\(path): quantized model format version \(found) is not supported (this build reads versions 2 to \(supported))"
        case let .truncated(path, expected, actual):
            return "\(path): quantized model is truncated: \(actual) bytes, expected \(expected)"
        case let .checksumMismatch(path, stored, computed):
            return "\(path): quantized model is corrupt: CRC32 is \(String(computed, radix: 16)), header says \(String(stored, radix: 16))"
        case let .badHeader(path, reason): return "\(path): bad quantized model header: \(reason)"
        case let .sourceMismatch(path, reason): return "\(path): \(reason)"
        }
    }
}

/// The quantized model file (`.myq`): a per-user quantized Whisper network, loadable on
/// its own (plus the source model's vocabulary and config). Layout in
/// docs/quantized-model-format.md: a 64-byte preamble (magic, version, CRC32, sizes), a
/// JSON header, then 64-byte aligned sections of packed codes, scales and float tensors.
/// Loading maps the file; packed layers point into the mapping without a copy.
public enum QuantizedModelFile {
    /// The format version this build writes (it also reads version 2, which had no rotated layers).
    public static let formatVersion: UInt32 = 3
    /// The `rotation` of a rotated layer in the header (the rotation of `mq_rotate_blocks`).
    static let rotationName = "hadamard32"
    /// Alignment of the data section and of every section in it.
    public static let alignment = 64
    static let preambleSize = 64
    static let formatName = "myqasr-quantized-model"

    // MARK: Header (JSON)

    struct Section: Codable, Equatable {
        /// Byte offset from the start of the data section (a multiple of 64).
        var offset: Int
        /// Bytes.
        var length: Int
    }

    struct LayerEntry: Codable {
        var name: String
        /// 0 = float32 values, else the code width.
        var bits: Int
        /// `[outFeatures, inFeatures]`.
        var shape: [Int]
        var groupSize: Int?
        var sensitivity: Double?
        var values: Section
        var scales: Section?
        var bias: Section?
        /// `rotationName` when the codes quantize `W·Rᵀ`; absent otherwise.
        var rotation: String?
    }

    struct TensorEntry: Codable {
        var name: String
        var shape: [Int]
        var data: Section
    }

    struct Dimensions: Codable {
        var nMels, nAudioCtx, nState, nHeads, nAudioLayers, nTextLayers, nTextCtx, nVocab: Int
    }

    struct Source: Codable {
        var name: String
        var digest: String
        var vocabulary: String?
    }

    struct Header: Codable {
        var format: String
        var source: Source
        var createdAt: String
        var statisticsDigest: String
        var rounding: RoundingMethod?
        var groupSize: Int
        var dimensions: Dimensions
        var layers: [LayerEntry]
        var tensors: [TensorEntry]
    }

    private static func dateFormatter() -> ISO8601DateFormatter {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f
    }

    /// Float tensors other than layers, by name (positions and layer norms).
    private static func floatTensors(_ w: WhisperWeights) -> [(String, [Int], [Float])] {
        let d = w.dimensions.nState
        var out: [(String, [Int], [Float])] = [
            ("encoder/position_encodings", [w.dimensions.nAudioCtx, d], w.encoderPositions),
            ("decoder/position_encodings", [w.dimensions.nTextCtx, d], w.decoderPositions),
        ]
        func norm(_ name: String, _ n: LayerNormWeights) {
            out.append(("\(name)/gamma", [n.gamma.count], n.gamma))
            out.append(("\(name)/beta", [n.beta.count], n.beta))
        }
        for (i, b) in w.encoderBlocks.enumerated() {
            norm("encoder/layer_\(i)/self_attention/layer_norm", b.attentionNorm)
            norm("encoder/layer_\(i)/ffn/layer_norm", b.mlpNorm)
        }
        norm("encoder/layer_norm", w.encoderNorm)
        for (i, b) in w.decoderBlocks.enumerated() {
            norm("decoder/layer_\(i)/self_attention/layer_norm", b.selfAttentionNorm)
            norm("decoder/layer_\(i)/attention/layer_norm", b.crossAttentionNorm)
            norm("decoder/layer_\(i)/ffn/layer_norm", b.mlpNorm)
        }
        norm("decoder/layer_norm", w.decoderNorm)
        return out
    }

    // MARK: Writing

    /// Writes `weights` (quantized layers packed as they are, any other layer as float32)
    /// with `metadata` to `path`, atomically (a temporary file renamed into place).
    public static func write(weights: WhisperWeights, metadata: QuantizedModelMetadata, to path: String) throws {
        var data = [UInt8]()
        func section(_ bytes: UnsafeRawBufferPointer) -> Section {
            let pad = (alignment - data.count % alignment) % alignment
            data.append(contentsOf: repeatElement(0, count: pad))
            let s = Section(offset: data.count, length: bytes.count)
            data.append(contentsOf: bytes)
            return s
        }
        func floats(_ v: [Float]) -> Section { v.withUnsafeBytes { section($0) } }

        var layers: [LayerEntry] = []
        for layer in weights.linearLayers {
            let w = layer.weight
            var entry: LayerEntry
            if let q = w as? QuantizedMatrix {
                entry = LayerEntry(name: layer.name, bits: q.bits, shape: [q.outFeatures, q.inFeatures],
                                   groupSize: q.groupSize, sensitivity: nil,
                                   values: section(q.packed.bytes), scales: section(q.scales.bytes), bias: nil,
                                   rotation: q.rotated ? rotationName : nil)
            } else {
                let values: [Float]
                if let f = w as? FloatMatrix {
                    values = f.values
                } else {
                    values = [Float](unsafeUninitializedCapacity: w.outFeatures * w.inFeatures) { buf, n in
                        for r in 0..<w.outFeatures { w.copyRow(r, into: buf.baseAddress! + r * w.inFeatures) }
                        n = w.outFeatures * w.inFeatures
                    }
                }
                entry = LayerEntry(name: layer.name, bits: 0, shape: [w.outFeatures, w.inFeatures], groupSize: nil,
                                   sensitivity: nil, values: floats(values), scales: nil, bias: nil, rotation: nil)
            }
            entry.sensitivity = metadata.sensitivities[layer.name]
            if let b = layer.bias { entry.bias = floats(b) }
            layers.append(entry)
        }
        let tensors = floatTensors(weights).map { TensorEntry(name: $0.0, shape: $0.1, data: floats($0.2)) }
        let dims = weights.dimensions
        let header = Header(
            format: formatName,
            source: Source(name: metadata.sourceModelName, digest: metadata.sourceModelDigest,
                           vocabulary: metadata.sourceVocabularyDigest),
            createdAt: dateFormatter().string(from: metadata.createdAt),
            statisticsDigest: metadata.statisticsDigest, rounding: metadata.rounding, groupSize: metadata.groupSize,
            dimensions: Dimensions(nMels: dims.nMels, nAudioCtx: dims.nAudioCtx, nState: dims.nState, nHeads: dims.nHeads,
                                   nAudioLayers: dims.nAudioLayers, nTextLayers: dims.nTextLayers,
                                   nTextCtx: dims.nTextCtx, nVocab: dims.nVocab),
            layers: layers, tensors: tensors)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json: [UInt8]
        do { json = Array(try encoder.encode(header)) } catch {
            throw QuantizedModelFileError.cannotWrite(path: path, reason: "header encoding failed: \(error)")
        }
        let dataOffset = (preambleSize + json.count + alignment - 1) / alignment * alignment

        var head = [UInt8](repeating: 0, count: dataOffset)
        head.replaceSubrange(0..<8, with: ModelSource.quantizedMagic)
        putLE(&head, 8, UInt64(formatVersion), bytes: 4)
        putLE(&head, 16, UInt64(json.count), bytes: 8)
        putLE(&head, 24, UInt64(dataOffset), bytes: 8)
        putLE(&head, 32, UInt64(data.count), bytes: 8)
        head.replaceSubrange(preambleSize..<(preambleSize + json.count), with: json)
        var crc = head.withUnsafeBytes { crc32Update(0, UnsafeRawBufferPointer(rebasing: $0[16...])) }
        crc = data.withUnsafeBytes { crc32Update(crc, $0) }
        putLE(&head, 12, UInt64(crc), bytes: 4)

        let temp = "\(path).tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw QuantizedModelFileError.cannotWrite(path: path, reason: String(cString: strerror(errno))) }
        var ok = false
        defer { if !ok { unlink(temp) } }
        do {
            defer { close(fd) }
            for (bytes, offset) in [(head, 0), (data, head.count)] {
                guard bytes.withUnsafeBytes({ writeAll(fd, $0, at: offset) }) else {
                    throw QuantizedModelFileError.cannotWrite(path: path, reason: String(cString: strerror(errno)))
                }
            }
            guard fsync(fd) == 0 else {
                throw QuantizedModelFileError.cannotWrite(path: path, reason: String(cString: strerror(errno)))
            }
        }
        guard rename(temp, path) == 0 else {
            throw QuantizedModelFileError.cannotWrite(path: path, reason: String(cString: strerror(errno)))
        }
        ok = true
    }

    private static func putLE(_ buf: inout [UInt8], _ at: Int, _ value: UInt64, bytes: Int) {
        for i in 0..<bytes { buf[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    private static func getLE(_ p: UnsafeRawBufferPointer, _ at: Int, bytes: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<bytes { v |= UInt64(p[at + i]) << (8 * UInt64(i)) }
        return v
    }

    /// CRC32 (zlib) of `bytes`, continuing from `crc`.
    static func crc32Update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard bytes.count > 0 else { return crc }
        var c = uLong(crc)
        var offset = 0
        while offset < bytes.count {
            let n = Swift.min(bytes.count - offset, 1 << 30)
            c = crc32(c, bytes.baseAddress!.assumingMemoryBound(to: Bytef.self) + offset, uInt(n))
            offset += n
        }
        return UInt32(truncatingIfNeeded: c)
    }

    // MARK: Loading

    /// Maps the file at `path`, checks magic, version, size and CRC32, and rebuilds the
    /// network: packed layers reference the mapping (no copy), float tensors are copied.
    public static func load(path: String) throws -> (weights: WhisperWeights, metadata: QuantizedModelMetadata) {
        let storage: ByteStorage
        do { storage = try ByteStorage.mapping(file: path) } catch let e as ByteStorageError {
            if case let .cannotMap(_, reason) = e { throw QuantizedModelFileError.cannotRead(path: path, reason: reason) }
            throw QuantizedModelFileError.cannotRead(path: path, reason: e.description)
        }
        let bytes = storage.bytes
        if bytes.count >= 8, !zip(bytes[0..<8], ModelSource.quantizedMagic).allSatisfy({ $0 == $1 }) {
            throw QuantizedModelFileError.badMagic(path: path)
        }
        guard bytes.count >= preambleSize else {
            throw QuantizedModelFileError.truncated(path: path, expectedBytes: preambleSize, actualBytes: bytes.count)
        }
        let version = UInt32(getLE(bytes, 8, bytes: 4))
        guard version == formatVersion || version == 2 else {
            throw QuantizedModelFileError.unsupportedVersion(path: path, found: version, supported: formatVersion)
        }
        let storedCRC = UInt32(getLE(bytes, 12, bytes: 4))
        let headerLength = getLE(bytes, 16, bytes: 8), dataOffset = getLE(bytes, 24, bytes: 8)
        let dataLength = getLE(bytes, 32, bytes: 8)
        guard headerLength < UInt64(Int.max / 4), dataOffset < UInt64(Int.max / 4), dataLength < UInt64(Int.max / 4),
              Int(dataOffset) >= preambleSize + Int(headerLength), Int(dataOffset) % alignment == 0 else {
            throw QuantizedModelFileError.badHeader(path: path, reason: "inconsistent section sizes in the preamble")
        }
        let expected = Int(dataOffset) + Int(dataLength)
        guard bytes.count >= expected else {
            throw QuantizedModelFileError.truncated(path: path, expectedBytes: expected, actualBytes: bytes.count)
        }
        let computed = crc32Update(0, UnsafeRawBufferPointer(rebasing: bytes[16..<expected]))
        guard computed == storedCRC else {
            throw QuantizedModelFileError.checksumMismatch(path: path, stored: storedCRC, computed: computed)
        }
        guard bytes.count == expected else {
            throw QuantizedModelFileError.badHeader(path: path, reason: "\(bytes.count - expected) unexpected bytes after the data section")
        }
        let header: Header
        do {
            let json = Data(bytes: bytes.baseAddress! + preambleSize, count: Int(headerLength))
            header = try JSONDecoder().decode(Header.self, from: json)
        } catch {
            throw QuantizedModelFileError.badHeader(path: path, reason: "JSON: \(error)")
        }
        guard header.format == formatName else {
            throw QuantizedModelFileError.badHeader(path: path, reason: "format is \"\(header.format)\", expected \"\(formatName)\"")
        }
        guard let createdAt = dateFormatter().date(from: header.createdAt) else {
            throw QuantizedModelFileError.badHeader(path: path, reason: "createdAt \"\(header.createdAt)\" is not an ISO 8601 date")
        }
        let data = try storage.slice(offset: Int(dataOffset), count: Int(dataLength))
        let builder = Builder(path: path, data: data, header: header)
        let weights = try builder.build()
        var sensitivities: [String: Double] = [:]
        for l in header.layers { if let s = l.sensitivity { sensitivities[l.name] = s } }
        let metadata = QuantizedModelMetadata(sourceModelName: header.source.name, sourceModelDigest: header.source.digest,
                                              createdAt: createdAt, statisticsDigest: header.statisticsDigest,
                                              groupSize: header.groupSize, sensitivities: sensitivities,
                                              sourceVocabularyDigest: header.source.vocabulary, rounding: header.rounding)
        return (weights, metadata)
    }

    /// Loads the file as a servable model: its weights, with the vocabulary and configuration of
    /// its source model (installed, found by `ModelLocator`), after checking that the source is
    /// the one the file was made from: by the recorded vocabulary digest, which reads only the
    /// source's vocabulary, or, for files without one, by the source's whole identity (which
    /// loads its weights once). The model is named after the file.
    public static func loadModel(path: String) throws -> WhisperModel {
        let (weights, metadata) = try load(path: path)
        let name = URL(fileURLWithPath: path).lastPathComponent
        let source = metadata.sourceModelName
        if let vocabulary = metadata.sourceVocabularyDigest {
            let paired = try WhisperModel.load(source, weights: weights)
            let installed = ModelIdentity.vocabularyDigest(paired)
            guard installed == vocabulary else {
                throw QuantizedModelFileError.sourceMismatch(
                    path: path, reason: "made from \(source) with vocabulary \(vocabulary), but the installed \(source) has \(installed)")
            }
            return WhisperModel(name: name, weights: weights, config: paired.config, tokenizer: paired.tokenizer)
        }
        let installed = try WhisperModel.load(source)
        let identity = ModelIdentity.of(installed)
        guard identity == metadata.sourceModelDigest else {
            throw QuantizedModelFileError.sourceMismatch(
                path: path, reason: "made from \(metadata.sourceModelDigest), but the installed \(source) is \(identity)")
        }
        return WhisperModel(name: name, weights: weights, config: installed.config, tokenizer: installed.tokenizer)
    }

    /// Rebuilds `WhisperWeights` from a checked header and its data section.
    private struct Builder {
        let path: String
        let data: ByteStorage
        let layers: [String: LayerEntry]
        let tensors: [String: TensorEntry]
        let dims: ModelDimensions

        init(path: String, data: ByteStorage, header: Header) {
            self.path = path
            self.data = data
            layers = Dictionary(header.layers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            tensors = Dictionary(header.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            let d = header.dimensions
            dims = ModelDimensions(nMels: d.nMels, nAudioCtx: d.nAudioCtx, nState: d.nState, nHeads: d.nHeads,
                                   nAudioLayers: d.nAudioLayers, nTextLayers: d.nTextLayers, nTextCtx: d.nTextCtx,
                                   nVocab: d.nVocab)
        }

        func fail(_ reason: String) -> QuantizedModelFileError { .badHeader(path: path, reason: reason) }

        func bytes(_ s: Section, _ what: String) throws -> ByteStorage {
            do { return try data.slice(offset: s.offset, count: s.length) } catch {
                throw fail("\(what): section \(s.offset)+\(s.length) lies outside the data section of \(data.count) bytes")
            }
        }

        func floats(_ s: Section, count: Int, _ what: String) throws -> [Float] {
            guard s.length == count * 4 else { throw fail("\(what): \(s.length) bytes, expected \(count * 4) for \(count) floats") }
            guard s.offset % 4 == 0 else { throw fail("\(what): section offset \(s.offset) is not float aligned") }
            let b = try bytes(s, what)
            return Array(UnsafeBufferPointer(start: b.baseAddress.assumingMemoryBound(to: Float.self), count: count))
        }

        func tensor(_ name: String, shape: [Int]) throws -> [Float] {
            guard let t = tensors[name] else { throw fail("missing tensor \(name)") }
            guard t.shape == shape else { throw fail("tensor \(name) has shape \(t.shape), expected \(shape)") }
            return try floats(t.data, count: shape.reduce(1, *), "tensor \(name)")
        }

        func norm(_ name: String) throws -> LayerNormWeights {
            LayerNormWeights(gamma: try tensor("\(name)/gamma", shape: [dims.nState]),
                             beta: try tensor("\(name)/beta", shape: [dims.nState]))
        }

        func linear(_ name: String, out: Int, in inputs: Int) throws -> Linear {
            guard let e = layers[name] else { throw fail("missing layer \(name)") }
            guard e.shape == [out, inputs] else { throw fail("layer \(name) has shape \(e.shape), expected [\(out), \(inputs)]") }
            let weight: any WeightMatrix
            if e.bits == 0 {
                weight = FloatMatrix(outFeatures: out, inFeatures: inputs,
                                     values: try floats(e.values, count: out * inputs, "layer \(name) values"))
            } else {
                guard let g = e.groupSize, let sc = e.scales else { throw fail("layer \(name): quantized without group size or scales") }
                guard e.rotation == nil || e.rotation == rotationName else {
                    throw fail("layer \(name): unknown rotation \(e.rotation!)")
                }
                do {
                    weight = try QuantizedMatrix(outFeatures: out, inFeatures: inputs, bits: e.bits, groupSize: g,
                                                 packed: try bytes(e.values, "layer \(name) codes"),
                                                 scales: try bytes(sc, "layer \(name) scales"),
                                                 rotated: e.rotation != nil)
                } catch let error as QuantizedMatrixError {
                    throw fail("layer \(name): \(error)")
                }
            }
            let bias = try e.bias.map { try floats($0, count: out, "layer \(name) bias") }
            return Linear(name: name, weight: weight, bias: bias)
        }

        func build() throws -> WhisperWeights {
            let d = dims.nState
            guard d > 0, dims.nMels > 0, dims.nVocab > 0, dims.nAudioLayers >= 0, dims.nTextLayers >= 0 else {
                throw fail("bad dimensions")
            }
            let encoder = try (0..<dims.nAudioLayers).map { i -> EncoderBlock in
                let p = "encoder/layer_\(i)"
                return EncoderBlock(attentionNorm: try norm("\(p)/self_attention/layer_norm"),
                                    qkv: try linear("\(p)/self_attention/linear_0", out: 3 * d, in: d),
                                    attentionOut: try linear("\(p)/self_attention/linear_1", out: d, in: d),
                                    mlpNorm: try norm("\(p)/ffn/layer_norm"),
                                    mlpUp: try linear("\(p)/ffn/linear_0", out: 4 * d, in: d),
                                    mlpDown: try linear("\(p)/ffn/linear_1", out: d, in: 4 * d))
            }
            let decoder = try (0..<dims.nTextLayers).map { i -> DecoderBlock in
                let p = "decoder/layer_\(i)"
                return DecoderBlock(selfAttentionNorm: try norm("\(p)/self_attention/layer_norm"),
                                    selfQKV: try linear("\(p)/self_attention/linear_0", out: 3 * d, in: d),
                                    selfOut: try linear("\(p)/self_attention/linear_1", out: d, in: d),
                                    crossAttentionNorm: try norm("\(p)/attention/layer_norm"),
                                    crossQuery: try linear("\(p)/attention/linear_0", out: d, in: d),
                                    crossKV: try linear("\(p)/attention/linear_1", out: 2 * d, in: d),
                                    crossOut: try linear("\(p)/attention/linear_2", out: d, in: d),
                                    mlpNorm: try norm("\(p)/ffn/layer_norm"),
                                    mlpUp: try linear("\(p)/ffn/linear_0", out: 4 * d, in: d),
                                    mlpDown: try linear("\(p)/ffn/linear_1", out: d, in: 4 * d))
            }
            return WhisperWeights(
                dimensions: dims,
                conv1: try linear("encoder/conv1", out: d, in: dims.nMels * 3),
                conv2: try linear("encoder/conv2", out: d, in: d * 3),
                encoderPositions: try tensor("encoder/position_encodings", shape: [dims.nAudioCtx, d]),
                encoderBlocks: encoder,
                encoderNorm: try norm("encoder/layer_norm"),
                tokenEmbedding: try linear("decoder/embeddings", out: dims.nVocab, in: d),
                decoderPositions: try tensor("decoder/position_encodings", shape: [dims.nTextCtx, d]),
                decoderBlocks: decoder,
                decoderNorm: try norm("decoder/layer_norm"))
        }
    }
}

/// Writes all of `bytes` to `fd` from file offset `offset` (pwrite, retried on EINTR and short writes): the file
/// writers' one loop. False with `errno` set on failure.
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return false }
        done += n
    }
    return true
}
