import Foundation
import XCTest
@testable import Audio

/// Builds RIFF/WAVE byte streams for the tests, chunk by chunk.
struct WAVBuilder {
    var chunks: [(id: String, payload: [UInt8], declaredSize: Int?)] = []
    var riffID = "RIFF"
    var formType = "WAVE"

    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }

    /// A plain 16-byte `fmt ` payload.
    static func fmt(tag: Int, channels: Int, rate: Int, bits: Int, blockAlign: Int? = nil) -> [UInt8] {
        let align = blockAlign ?? channels * bits / 8
        return le16(tag) + le16(channels) + le32(rate) + le32(rate * align) + le16(align) + le16(bits)
    }

    /// A 40-byte WAVE_FORMAT_EXTENSIBLE `fmt ` payload with sub-format code `subTag`.
    static func fmtExtensible(subTag: Int, channels: Int, rate: Int, bits: Int, validBits: Int) -> [UInt8] {
        let align = channels * bits / 8
        var p = le16(0xFFFE) + le16(channels) + le32(rate) + le32(rate * align) + le16(align) + le16(bits)
        p += le16(22) + le16(validBits) + le32(channels == 2 ? 3 : 4)
        p += le16(subTag) + [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71]
        return p
    }

    mutating func add(_ id: String, _ payload: [UInt8], declaredSize: Int? = nil) {
        chunks.append((id, payload, declaredSize))
    }

    /// The bytes: header, then each chunk with its size and pad byte (omitted when a size is overridden).
    func bytes() -> Data {
        var body = Array(formType.utf8)
        for c in chunks {
            body += Array(c.id.utf8) + WAVBuilder.le32(c.declaredSize ?? c.payload.count) + c.payload
            if c.declaredSize == nil && c.payload.count % 2 == 1 { body.append(0) }
        }
        return Data(Array(riffID.utf8) + WAVBuilder.le32(body.count) + body)
    }
}

/// Sample encoders matching the decoder's scaling.
enum Encode {
    static func s16(_ x: [Float]) -> [UInt8] {
        x.flatMap { WAVBuilder.le16(Int(Int16(clamping: Int(($0 * 32768).rounded())))) }
    }
    static func s24(_ x: [Float]) -> [UInt8] {
        x.flatMap { v -> [UInt8] in
            let i = max(-8_388_608, min(8_388_607, Int((v * 8_388_608).rounded())))
            return Array(WAVBuilder.le32(i).prefix(3))
        }
    }
    static func s32(_ x: [Float]) -> [UInt8] {
        x.flatMap { WAVBuilder.le32(Int(Int32(clamping: Int((Double($0) * 2_147_483_648).rounded())))) }
    }
    static func u8(_ x: [Float]) -> [UInt8] {
        x.map { UInt8(max(0, min(255, Int(($0 * 128).rounded()) + 128))) }
    }
    static func f32(_ x: [Float]) -> [UInt8] {
        x.flatMap { WAVBuilder.le32(Int($0.bitPattern)) }
    }
    static func f64(_ x: [Float]) -> [UInt8] {
        x.flatMap { v -> [UInt8] in
            let b = Double(v).bitPattern
            return (0..<8).map { UInt8((b >> (8 * UInt64($0))) & 0xFF) }
        }
    }
}

final class WAVTests: XCTestCase {
    /// Interleaved stereo test samples exactly representable in 8-bit (multiples of 1/128), so every
    /// format round-trips exactly.
    let stereo: [Float] = (0..<64).map { Float(($0 * 37) % 256 - 128) / 128 }

    private func roundTrip(_ fmt: [UInt8], _ payload: [UInt8], channels: Int, rate: Int,
                           file: StaticString = #filePath, line: UInt = #line) throws -> AudioBuffer {
        var b = WAVBuilder()
        b.add("fmt ", fmt)
        b.add("data", payload)
        let buffer = try WAVDecoder.decode(data: b.bytes(), name: "test.wav")
        XCTAssertEqual(buffer.channelCount, channels, file: file, line: line)
        XCTAssertEqual(buffer.sampleRate, rate, file: file, line: line)
        return buffer
    }

    func testIntegerAndFloatRoundTrips() throws {
        let cases: [(String, [UInt8], [UInt8])] = [
            ("u8", WAVBuilder.fmt(tag: 1, channels: 2, rate: 22050, bits: 8), Encode.u8(stereo)),
            ("s16", WAVBuilder.fmt(tag: 1, channels: 2, rate: 22050, bits: 16), Encode.s16(stereo)),
            ("s24", WAVBuilder.fmt(tag: 1, channels: 2, rate: 22050, bits: 24), Encode.s24(stereo)),
            ("s32", WAVBuilder.fmt(tag: 1, channels: 2, rate: 22050, bits: 32), Encode.s32(stereo)),
            ("f32", WAVBuilder.fmt(tag: 3, channels: 2, rate: 22050, bits: 32), Encode.f32(stereo)),
            ("f64", WAVBuilder.fmt(tag: 3, channels: 2, rate: 22050, bits: 64), Encode.f64(stereo)),
            ("ext s16", WAVBuilder.fmtExtensible(subTag: 1, channels: 2, rate: 22050, bits: 16, validBits: 16), Encode.s16(stereo)),
            ("ext s24", WAVBuilder.fmtExtensible(subTag: 1, channels: 2, rate: 22050, bits: 24, validBits: 24), Encode.s24(stereo)),
            ("ext s32", WAVBuilder.fmtExtensible(subTag: 1, channels: 2, rate: 22050, bits: 32, validBits: 32), Encode.s32(stereo)),
            ("ext f32", WAVBuilder.fmtExtensible(subTag: 3, channels: 2, rate: 22050, bits: 32, validBits: 32), Encode.f32(stereo)),
        ]
        for (label, fmt, payload) in cases {
            let buffer = try roundTrip(fmt, payload, channels: 2, rate: 22050)
            XCTAssertEqual(buffer.samples, stereo, label)
            XCTAssertEqual(buffer.frameCount, 32, label)
        }
    }

    func testFullScaleIntegerExtremes() throws {
        // Most negative maps to exactly -1, most positive to just below +1.
        let s16 = WAVBuilder.le16(0x8000) + WAVBuilder.le16(0x7FFF)
        let b16 = try roundTrip(WAVBuilder.fmt(tag: 1, channels: 1, rate: 8000, bits: 16), s16, channels: 1, rate: 8000)
        XCTAssertEqual(b16.samples, [-1, 32767.0 / 32768.0])
        let s24: [UInt8] = [0x00, 0x00, 0x80, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF]
        let b24 = try roundTrip(WAVBuilder.fmt(tag: 1, channels: 1, rate: 8000, bits: 24), s24, channels: 1, rate: 8000)
        XCTAssertEqual(b24.samples, [-1, 8_388_607.0 / 8_388_608.0, -1.0 / 8_388_608.0])
        let s32 = WAVBuilder.le32(Int(Int32.min)) + WAVBuilder.le32(1 << 16)
        let b32 = try roundTrip(WAVBuilder.fmt(tag: 1, channels: 1, rate: 8000, bits: 32), s32, channels: 1, rate: 8000)
        XCTAssertEqual(b32.samples, [-1, 1.0 / 32768.0])
    }

    func testMultichannelDeinterleaveAndMono() throws {
        // 3 channels: ch0 = +0.5, ch1 = -0.25, ch2 = frame index / 8.
        var interleaved: [Float] = []
        for f in 0..<8 { interleaved += [0.5, -0.25, Float(f) / 8] }
        let buffer = try roundTrip(WAVBuilder.fmt(tag: 3, channels: 3, rate: 48000, bits: 32), Encode.f32(interleaved), channels: 3, rate: 48000)
        XCTAssertEqual(buffer.channel(0), [Float](repeating: 0.5, count: 8))
        XCTAssertEqual(buffer.channel(2), (0..<8).map { Float($0) / 8 })
        let mono = buffer.mono()
        XCTAssertEqual(mono.count, 8)
        for f in 0..<8 { XCTAssertEqual(mono[f], (0.5 - 0.25 + Float(f) / 8) / 3, accuracy: 1e-7) }
    }

    func testSkipsUnknownChunksWithOddSizesAndPadBytes() throws {
        var b = WAVBuilder()
        b.add("LIST", Array("INFOISFT\u{5}\0\0\0Lavf\0".utf8))  // odd-sized payload, pad byte follows
        b.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16))
        b.add("junk", [1, 2, 3])  // odd again
        b.add("data", Encode.s16([0.25, -0.5, 0.75]))
        b.add("cue ", [9, 9, 9, 9])  // trailing chunk after data
        let buffer = try WAVDecoder.decode(data: b.bytes())
        XCTAssertEqual(buffer.samples, [0.25, -0.5, 0.75])
    }

    func testOddSizedDataChunkFollowedByAnotherChunk() throws {
        // 8-bit mono, 3 bytes of data: a pad byte precedes the next chunk, which must not be read as samples.
        var b = WAVBuilder()
        b.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 8000, bits: 8))
        b.add("data", Encode.u8([0.5, -0.5, 0]))
        b.add("LIST", [0x41, 0x42, 0x43, 0x44])
        XCTAssertEqual(try WAVDecoder.decode(data: b.bytes()).samples, [0.5, -0.5, 0])
        // Chunks after the pad byte are still found: here `fmt ` comes after the odd data chunk.
        var late = WAVBuilder()
        late.add("data", Encode.u8([0.25, -0.25, 0.75]))
        late.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 8000, bits: 8))
        XCTAssertEqual(try WAVDecoder.decode(data: late.bytes()).samples, [0.25, -0.25, 0.75])
    }

    func testFormatChunkAfterDataChunk() throws {
        var b = WAVBuilder()
        b.add("data", Encode.s16([0.125, -0.125]))
        b.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16))
        XCTAssertEqual(try WAVDecoder.decode(data: b.bytes()).samples, [0.125, -0.125])
    }

    func testOverrunningDataChunkUsesWholeFramesPresent() throws {
        // Declared 1000 bytes, 7 present: 3 whole s16 stereo... here mono: 3 samples, the odd byte dropped.
        var b = WAVBuilder()
        b.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16))
        b.add("data", Encode.s16([0.5, 0.25, -0.25]) + [0x12], declaredSize: 1000)
        XCTAssertEqual(try WAVDecoder.decode(data: b.bytes()).samples, [0.5, 0.25, -0.25])
        // A streaming writer's 0xFFFFFFFF size.
        var s = WAVBuilder()
        s.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 2, rate: 16000, bits: 16))
        s.add("data", Encode.s16([0.5, 0.25, -0.25]), declaredSize: 0xFFFF_FFFF)
        let stereo = try WAVDecoder.decode(data: s.bytes())
        XCTAssertEqual(stereo.samples, [0.5, 0.25], "the incomplete last frame is dropped")
        XCTAssertEqual(try WAVDecoder.inspect(data: s.bytes()).frameCount, 1)
    }

    func testEmptyDataChunkDecodesToNoSamples() throws {
        var b = WAVBuilder()
        b.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16))
        b.add("data", [])
        let buffer = try WAVDecoder.decode(data: b.bytes())
        XCTAssertEqual(buffer.samples, [])
        XCTAssertEqual(try decodeAudio(data: b.bytes()), [])
    }

    // MARK: - Malformed input

    private func assertError(_ data: Data, _ expected: AudioError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try WAVDecoder.decode(data: data, name: "bad.wav"), file: file, line: line) { error in
            guard let e = error as? AudioError else { return XCTFail("not an AudioError: \(error)", file: file, line: line) }
            XCTAssertEqual(e, expected, file: file, line: line)
            XCTAssertTrue(e.description.contains("bad.wav"), "message names the source: \(e)", file: file, line: line)
        }
    }

    private func withFormat(_ fmt: [UInt8], data: [UInt8] = [0, 0, 0, 0]) -> Data {
        var b = WAVBuilder()
        b.add("fmt ", fmt)
        b.add("data", data)
        return b.bytes()
    }

    func testMalformedHeaders() {
        assertError(Data("OggS\0\0\0\0\0\0\0\0\0\0\0\0".utf8), .notWAV(source: "bad.wav", reason: "starts with 'OggS' instead of 'RIFF'"))
        var avi = WAVBuilder()
        avi.formType = "AVI "
        assertError(avi.bytes(), .notWAV(source: "bad.wav", reason: "RIFF form type is 'AVI ', not 'WAVE'"))
        assertError(Data("RIFF\u{4}\0".utf8), .truncated(source: "bad.wav", reason: "6 bytes, shorter than the 12-byte RIFF header"))
        assertError(Data(), .truncated(source: "bad.wav", reason: "0 bytes, shorter than the 12-byte RIFF header"))
        var rf64 = WAVBuilder()
        rf64.riffID = "RF64"
        assertError(rf64.bytes(), .unsupportedEncoding(source: "bad.wav", reason: "RF64 (64-bit RIFF) containers are not supported"))
    }

    func testMissingAndTruncatedChunks() {
        var noData = WAVBuilder()
        noData.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16))
        assertError(noData.bytes(), .missingChunk(source: "bad.wav", chunk: "data"))
        var noFmt = WAVBuilder()
        noFmt.add("data", [0, 0])
        assertError(noFmt.bytes(), .missingChunk(source: "bad.wav", chunk: "fmt "))
        var shortFmt = WAVBuilder()
        shortFmt.add("fmt ", Array(WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16).prefix(12)))
        shortFmt.add("data", [0, 0])
        assertError(shortFmt.bytes(), .truncated(source: "bad.wav", reason: "'fmt ' chunk is 12 bytes, needs at least 16"))
        var cutFmt = WAVBuilder()
        cutFmt.add("fmt ", Array(WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16).prefix(10)), declaredSize: 16)
        assertError(cutFmt.bytes(), .truncated(source: "bad.wav", reason: "'fmt ' chunk declares 16 bytes but only 10 remain"))
        let ext = Array(WAVBuilder.fmtExtensible(subTag: 1, channels: 1, rate: 16000, bits: 16, validBits: 16).prefix(18))
        assertError(withFormat(ext), .truncated(source: "bad.wav", reason: "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is 18 bytes, needs 40"))
    }

    func testUnsupportedEncodings() {
        assertError(withFormat(WAVBuilder.fmt(tag: 6, channels: 1, rate: 8000, bits: 8)),
                    .unsupportedEncoding(source: "bad.wav", reason: "A-law (format tag 6)"))
        assertError(withFormat(WAVBuilder.fmt(tag: 7, channels: 1, rate: 8000, bits: 8)),
                    .unsupportedEncoding(source: "bad.wav", reason: "mu-law (format tag 7)"))
        assertError(withFormat(WAVBuilder.fmt(tag: 0x55, channels: 2, rate: 44100, bits: 0, blockAlign: 1)),
                    .unsupportedEncoding(source: "bad.wav", reason: "compressed or unknown format tag 0x0055"))
        assertError(withFormat(WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 12, blockAlign: 2)),
                    .unsupportedEncoding(source: "bad.wav", reason: "12-bit integer PCM (supported: 8, 16, 24, 32)"))
        assertError(withFormat(WAVBuilder.fmt(tag: 3, channels: 1, rate: 16000, bits: 16)),
                    .unsupportedEncoding(source: "bad.wav", reason: "16-bit IEEE float (supported: 32, 64)"))
        assertError(withFormat(WAVBuilder.fmtExtensible(subTag: 6, channels: 1, rate: 8000, bits: 8, validBits: 8)),
                    .unsupportedEncoding(source: "bad.wav", reason: "A-law (format tag 6)"))
        var badGUID = WAVBuilder.fmtExtensible(subTag: 1, channels: 1, rate: 16000, bits: 16, validBits: 16)
        badGUID[39] = 0x00
        assertError(withFormat(badGUID),
                    .unsupportedEncoding(source: "bad.wav", reason: "WAVE_FORMAT_EXTENSIBLE with a non-standard sub-format GUID"))
    }

    func testInvalidFormatFields() {
        assertError(withFormat(WAVBuilder.fmt(tag: 1, channels: 0, rate: 16000, bits: 16, blockAlign: 2)),
                    .invalidFormat(source: "bad.wav", reason: "zero channels"))
        assertError(withFormat(WAVBuilder.fmt(tag: 1, channels: 1, rate: 0, bits: 16)),
                    .invalidFormat(source: "bad.wav", reason: "zero sample rate"))
        assertError(withFormat(WAVBuilder.fmt(tag: 1, channels: 2, rate: 16000, bits: 16, blockAlign: 2)),
                    .invalidFormat(source: "bad.wav", reason: "block alignment 2 does not equal 2 channels x 2 bytes"))
    }

    func testFileLoadingAndUnreadableFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("audio-tests-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("tone.wav").path
        let tone: [Float] = (0..<1600).map { Float(0.5 * sin(2 * Double.pi * 440 * Double($0) / 16000)) }
        var b = WAVBuilder()
        b.add("fmt ", WAVBuilder.fmt(tag: 3, channels: 1, rate: 16000, bits: 32))
        b.add("data", Encode.f32(tone))
        try b.bytes().write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try loadAudio(path: path), tone, "16 kHz mono passes through unchanged")
        XCTAssertEqual(try loadAudio(path: path, targetRate: 8000).count, 800)

        let missing = dir.appendingPathComponent("nope.wav").path
        XCTAssertThrowsError(try loadAudio(path: missing)) { error in
            guard case let .unreadable(source, _)? = error as? AudioError else { return XCTFail("\(error)") }
            XCTAssertEqual(source, missing)
            XCTAssertTrue("\(error)".contains("nope.wav"))
        }
        XCTAssertThrowsError(try loadAudio(path: path, targetRate: 0)) { error in
            XCTAssertEqual(error as? AudioError, .invalidArgument("target sample rate must be positive, got 0"))
        }
    }

    func testDecodeAudioDownmixesAndResamples() throws {
        // Stereo 48 kHz: left = 1 kHz sine, right = its negation plus 0.2 DC. Mono = 0.1 DC.
        var interleaved: [Float] = []
        for n in 0..<4800 {
            let v = Float(0.5 * sin(2 * Double.pi * 1000 * Double(n) / 48000))
            interleaved += [v, -v + 0.2]
        }
        var b = WAVBuilder()
        b.add("fmt ", WAVBuilder.fmt(tag: 3, channels: 2, rate: 48000, bits: 32))
        b.add("data", Encode.f32(interleaved))
        let mono = try decodeAudio(data: b.bytes())
        XCTAssertEqual(mono.count, 1600)
        for v in mono[200..<1400] { XCTAssertEqual(v, 0.1, accuracy: 1e-4) }
    }

    func testRawS16Conversion() throws {
        XCTAssertEqual(floatSamples(fromS16: [-32768, 0, 16384, 32767]), [-1, 0, 0.5, 32767.0 / 32768.0])
        XCTAssertEqual(try floatSamples(fromS16LE: Data([0x00, 0x80, 0x00, 0x40, 0xFF, 0xFF])), [-1, 0.5, -1.0 / 32768.0])
        // A Data slice that does not start at index 0.
        let slice = Data([0xAA, 0x00, 0xC0]).dropFirst()
        XCTAssertEqual(try floatSamples(fromS16LE: slice), [-0.5])
        XCTAssertThrowsError(try floatSamples(fromS16LE: Data([1, 2, 3]))) { error in
            XCTAssertEqual(error as? AudioError, .invalidArgument("raw s16le PCM needs an even byte count, got 3"))
        }
    }

    func testDecodesDataSlices() throws {
        var b = WAVBuilder()
        b.add("fmt ", WAVBuilder.fmt(tag: 1, channels: 1, rate: 16000, bits: 16))
        b.add("data", Encode.s16([0.5, -0.5]))
        let framed = Data([7, 7, 7]) + b.bytes()
        XCTAssertEqual(try WAVDecoder.decode(data: framed.dropFirst(3)).samples, [0.5, -0.5])
    }
}
