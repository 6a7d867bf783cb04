// RIFF/WAVE decoding.
//
// Supported sample encodings (plain WAVE_FORMAT_* tag or WAVE_FORMAT_EXTENSIBLE sub-format):
//   PCM integer  8-bit (unsigned, offset 128), 16, 24 and 32-bit (signed, little-endian)
//   IEEE float   32 and 64-bit
// Integers are scaled by 1 / 2^(bits-1) so full scale maps to [-1, 1); floats are passed through.
// For WAVE_FORMAT_EXTENSIBLE with fewer valid bits than the container (e.g. 20 valid bits in a
// 24-bit container) the container is decoded: the padding bits are zero by specification.
//
// Layout rules followed:
//   * chunks are `id (4 bytes) | size (u32 LE) | payload | pad byte if size is odd`;
//   * unknown chunks (LIST, fact, cue , bext, JUNK, ...) are skipped;
//   * the RIFF size field is not trusted (many writers get it wrong); the real byte count is used;
//   * a `data` chunk whose declared size runs past the end of the stream (a recorder that was
//     killed, or a streaming writer that put 0xFFFFFFFF there) is ACCEPTED: the samples that are
//     present are decoded, cut down to whole frames. Truncated `fmt ` chunks are rejected.
//   * `fmt ` may come after `data`; both are located first, then decoded.
// Rejected with an `AudioError`: non-RIFF/WAVE input, RF64, A-law, µ-law, any compressed
// format, zero channels or sample rate, a block alignment inconsistent with the sample size.

import Foundation

/// The sample encoding found in a WAV `fmt ` chunk.
public enum WAVSampleEncoding: Equatable, Sendable {
    /// Integer PCM with the given container bit depth (8, 16, 24 or 32).
    case integer(bits: Int)
    /// IEEE floating point with the given bit depth (32 or 64).
    case float(bits: Int)

    /// Bytes per sample in the container.
    public var bytesPerSample: Int {
        switch self {
        case let .integer(bits), let .float(bits): return bits / 8
        }
    }
}

/// The decoded description of a WAV stream's `fmt ` chunk.
public struct WAVFormat: Equatable, Sendable {
    /// The sample encoding.
    public var encoding: WAVSampleEncoding
    /// Number of interleaved channels.
    public var channelCount: Int
    /// Frames per second.
    public var sampleRate: Int
    /// Bytes per frame (all channels).
    public var blockAlign: Int
}

/// Decodes RIFF/WAVE byte streams into `AudioBuffer`s. See the top of WAV.swift for the rules.
public enum WAVDecoder {
    private static let formatPCM: UInt16 = 0x0001
    private static let formatFloat: UInt16 = 0x0003
    private static let formatALaw: UInt16 = 0x0006
    private static let formatMuLaw: UInt16 = 0x0007
    private static let formatExtensible: UInt16 = 0xFFFE
    /// The 14 bytes that follow the 2-byte format code in a KSDATAFORMAT_SUBTYPE_* GUID.
    private static let guidTail: [UInt8] = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71]

    /// Reads and decodes the WAV file at `path`.
    /// - Throws: `AudioError.unreadable` if the file cannot be read, otherwise as `decode(data:name:)`.
    public static func decode(contentsOf path: String) throws -> AudioBuffer {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe)
        } catch {
            let reason = (error as NSError).localizedDescription
            throw AudioError.unreadable(source: path, reason: reason)
        }
        return try decode(data: data, name: path)
    }

    /// Decodes a complete WAV stream held in memory.
    /// - Parameters:
    ///   - data: the bytes, starting with `RIFF`.
    ///   - name: how error messages refer to this input.
    /// - Throws: `AudioError` describing why the stream is not decodable.
    public static func decode(data: Data, name: String = "<memory>") throws -> AudioBuffer {
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> AudioBuffer in
            let (format, payload) = try parse(raw, name: name)
            let samples = PCM.decode(payload, encoding: format.encoding)
            return AudioBuffer(sampleRate: format.sampleRate, channelCount: format.channelCount, samples: samples)
        }
    }

    /// Parses only the header and returns the stream's format and the number of complete frames present.
    /// - Throws: `AudioError` as `decode(data:name:)`.
    public static func inspect(data: Data, name: String = "<memory>") throws -> (format: WAVFormat, frameCount: Int) {
        let layout = try self.layout(data: data, name: name)
        return (layout.format, layout.samples.count / layout.format.blockAlign)
    }

    /// Parses only the header: the stream's format and where its whole frames lie in `data` (offsets from
    /// `data.startIndex`), so a caller can weigh the cost of decoding before doing it and then decode in pieces.
    /// - Throws: `AudioError` as `decode(data:name:)`.
    public static func layout(data: Data, name: String = "<memory>") throws -> (format: WAVFormat, samples: Range<Int>) {
        try data.withUnsafeBytes { raw in
            let (format, payload) = try parse(raw, name: name)
            let start = payload.baseAddress.map { $0 - raw.baseAddress! } ?? 0
            return (format, start..<(start + payload.count))
        }
    }

    // MARK: - Parsing

    private static func u16(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt16 {
        UInt16(p[at]) | UInt16(p[at + 1]) << 8
    }

    private static func u32(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt32 { PCM.u32(p, at) }

    private static func fourCC(_ p: UnsafeRawBufferPointer, _ at: Int) -> String {
        let bytes = (0..<4).map { p[at + $0] }
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return String(decoding: bytes, as: UTF8.self) }
        return bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Locates `fmt ` and `data`, validates the format, and returns the format plus the sample bytes
    /// (cut to whole frames).
    private static func parse(_ p: UnsafeRawBufferPointer, name: String) throws -> (WAVFormat, UnsafeRawBufferPointer) {
        let total = p.count
        guard total >= 12 else {
            if total >= 4, fourCC(p, 0) != "RIFF" {
                throw AudioError.notWAV(source: name, reason: "starts with '\(fourCC(p, 0))' instead of 'RIFF'")
            }
            throw AudioError.truncated(source: name, reason: "\(total) bytes, shorter than the 12-byte RIFF header")
        }
        let riff = fourCC(p, 0)
        if riff == "RF64" || riff == "BW64" {
            throw AudioError.unsupportedEncoding(source: name, reason: "\(riff) (64-bit RIFF) containers are not supported")
        }
        guard riff == "RIFF" else {
            throw AudioError.notWAV(source: name, reason: "starts with '\(riff)' instead of 'RIFF'")
        }
        guard fourCC(p, 8) == "WAVE" else {
            throw AudioError.notWAV(source: name, reason: "RIFF form type is '\(fourCC(p, 8))', not 'WAVE'")
        }

        var fmtRange: Range<Int>? = nil
        var dataRange: Range<Int>? = nil
        var offset = 12
        while offset + 8 <= total {
            let id = fourCC(p, offset)
            let declared = Int(u32(p, offset + 4))
            let start = offset + 8
            let available = total - start
            if id == "fmt " {
                guard declared <= available else {
                    throw AudioError.truncated(source: name, reason: "'fmt ' chunk declares \(declared) bytes but only \(available) remain")
                }
                if fmtRange == nil { fmtRange = start..<(start + declared) }
            } else if id == "data" {
                // Accept an overrunning data chunk: decode what is there.
                if dataRange == nil { dataRange = start..<(start + min(declared, available)) }
                if declared >= available { break }
            }
            // Next chunk: payload plus the pad byte that keeps chunks word-aligned.
            let next = start + declared + (declared & 1)
            if next <= offset { break }
            offset = next
            if fmtRange != nil && dataRange != nil { break }
        }

        guard let fmt = fmtRange else {
            throw AudioError.missingChunk(source: name, chunk: "fmt ")
        }
        guard let dataBytes = dataRange else {
            throw AudioError.missingChunk(source: name, chunk: "data")
        }
        let format = try parseFormat(p, fmt, name: name)
        let frames = dataBytes.count / format.blockAlign
        let payload = UnsafeRawBufferPointer(rebasing: p[dataBytes.lowerBound..<(dataBytes.lowerBound + frames * format.blockAlign)])
        return (format, payload)
    }

    private static func parseFormat(_ p: UnsafeRawBufferPointer, _ r: Range<Int>, name: String) throws -> WAVFormat {
        guard r.count >= 16 else {
            throw AudioError.truncated(source: name, reason: "'fmt ' chunk is \(r.count) bytes, needs at least 16")
        }
        let o = r.lowerBound
        var tag = u16(p, o)
        let channels = Int(u16(p, o + 2))
        let rate = Int(u32(p, o + 4))
        let blockAlign = Int(u16(p, o + 12))
        let bits = Int(u16(p, o + 14))

        if tag == formatExtensible {
            guard r.count >= 40, Int(u16(p, o + 16)) >= 22 else {
                throw AudioError.truncated(source: name, reason: "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is \(r.count) bytes, needs 40")
            }
            let sub = u16(p, o + 24)
            let tail = (0..<14).map { p[o + 26 + $0] }
            guard tail == guidTail else {
                throw AudioError.unsupportedEncoding(source: name, reason: "WAVE_FORMAT_EXTENSIBLE with a non-standard sub-format GUID")
            }
            tag = sub
        }

        let encoding: WAVSampleEncoding
        switch tag {
        case formatPCM:
            guard [8, 16, 24, 32].contains(bits) else {
                throw AudioError.unsupportedEncoding(source: name, reason: "\(bits)-bit integer PCM (supported: 8, 16, 24, 32)")
            }
            encoding = .integer(bits: bits)
        case formatFloat:
            guard bits == 32 || bits == 64 else {
                throw AudioError.unsupportedEncoding(source: name, reason: "\(bits)-bit IEEE float (supported: 32, 64)")
            }
            encoding = .float(bits: bits)
        case formatALaw:
            throw AudioError.unsupportedEncoding(source: name, reason: "A-law (format tag 6)")
        case formatMuLaw:
            throw AudioError.unsupportedEncoding(source: name, reason: "mu-law (format tag 7)")
        default:
            throw AudioError.unsupportedEncoding(source: name, reason: String(format: "compressed or unknown format tag 0x%04X", tag))
        }
        guard channels > 0 else {
            throw AudioError.invalidFormat(source: name, reason: "zero channels")
        }
        guard rate > 0 else {
            throw AudioError.invalidFormat(source: name, reason: "zero sample rate")
        }
        guard blockAlign == channels * encoding.bytesPerSample else {
            throw AudioError.invalidFormat(
                source: name,
                reason: "block alignment \(blockAlign) does not equal \(channels) channels x \(encoding.bytesPerSample) bytes")
        }
        return WAVFormat(encoding: encoding, channelCount: channels, sampleRate: rate, blockAlign: blockAlign)
    }
}

/// Converts signed 16-bit PCM samples to Float in [-1, 1) by dividing by 32768 (as Whisper's loader does).
public func floatSamples(fromS16 samples: [Int16]) -> [Float] {
    samples.map { Float($0) * (1.0 / 32768.0) }
}

/// Converts raw little-endian signed 16-bit PCM bytes (no header) to Float in [-1, 1).
///
/// - Parameter bytes: an even number of bytes, two per sample, little-endian. Interleaving, if any, is kept.
/// - Throws: `AudioError.invalidArgument` if the byte count is odd.
public func floatSamples(fromS16LE bytes: Data) throws -> [Float] {
    guard bytes.count % 2 == 0 else {
        throw AudioError.invalidArgument("raw s16le PCM needs an even byte count, got \(bytes.count)")
    }
    return bytes.withUnsafeBytes { PCM.decode($0, encoding: .integer(bits: 16)) }
}
