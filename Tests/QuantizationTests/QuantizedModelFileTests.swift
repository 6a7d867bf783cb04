import Foundation
import WhisperEngine
import XCTest

@testable import Quantization

final class QuantizedModelFileTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("myq-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private let metadata = QuantizedModelMetadata(
        sourceModelName: "random-small", sourceModelDigest: "sha256:" + String(repeating: "ab", count: 32),
        createdAt: Date(timeIntervalSince1970: 1_790_000_000), statisticsDigest: "stats:v1:1234",
        groupSize: 32, sensitivities: ["encoder/conv1": 0.25, "decoder/embeddings": 1.5e-3],
        sourceVocabularyDigest: "vocab-0badc0de-0123456789abcdef", rounding: .compensated)

    /// A random network with every bit width, some float layers and some rotated ones.
    private func mixedNetwork() throws -> WhisperWeights {
        var rng = SeededGenerator(seed: 21)
        let weights = RandomWhisper.make(rng: &rng)
        var replacements: [String: any WeightMatrix] = [:]
        for (i, layer) in weights.linearLayers.enumerated() where i % 7 != 3 {
            let f = layer.weight as! FloatMatrix
            replacements[layer.name] = try QuantizedMatrix(
                quantizing: f.values, outFeatures: f.outFeatures, inFeatures: f.inFeatures,
                bits: QuantizedMatrix.supportedBits[i % 6], groupSize: QuantizedMatrix.supportedGroupSizes[i % 3],
                rotated: i % 2 == 0 && QuantizedMatrix.canRotate(inFeatures: f.inFeatures))
        }
        return weights.replacing(replacements)
    }

    private func writeSample(_ name: String) throws -> (String, WhisperWeights) {
        let weights = try mixedNetwork()
        let p = path(name)
        try QuantizedModelFile.write(weights: weights, metadata: metadata, to: p)
        return (p, weights)
    }

    private func expectLoadError(_ p: String, _ check: (QuantizedModelFileError) -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try QuantizedModelFile.load(path: p), file: file, line: line) { error in
            guard let e = error as? QuantizedModelFileError else { return XCTFail("unexpected \(error)", file: file, line: line) }
            XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains(p), "the message names the file: \(e)", file: file, line: line)
        }
    }

    private func patch(_ p: String, _ body: (inout [UInt8]) -> Void) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        body(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
    }

    func testRoundTripGivesBitIdenticalOutputsAndMapsPackedLayers() throws {
        let (p, weights) = try writeSample("model.myq")
        let (loaded, meta) = try QuantizedModelFile.load(path: p)
        XCTAssertEqual(meta, metadata)
        XCTAssertEqual(loaded.dimensions, weights.dimensions)
        XCTAssertEqual(loaded.byteSize, weights.byteSize)
        for (a, b) in zip(weights.linearLayers, loaded.linearLayers) {
            XCTAssertEqual(a.name, b.name)
            XCTAssertEqual(a.bias, b.bias)
            if let qa = a.weight as? QuantizedMatrix {
                let qb = try XCTUnwrap(b.weight as? QuantizedMatrix, a.name)
                XCTAssertEqual([qa.bits, qa.groupSize], [qb.bits, qb.groupSize])
                XCTAssertEqual(qa.rotated, qb.rotated, a.name)
                XCTAssertTrue(qb.packed.isMemoryMapped, "\(a.name) codes point into the mapping")
                XCTAssertTrue(qb.scales.isMemoryMapped)
                XCTAssertEqual(Int(bitPattern: qb.packed.baseAddress) % QuantizedModelFile.alignment, 0, "64-byte aligned section")
                XCTAssertEqual(Array(qa.packed.bytes), Array(qb.packed.bytes))
            } else {
                XCTAssertEqual((a.weight as! FloatMatrix).values, try XCTUnwrap(b.weight as? FloatMatrix).values)
            }
        }
        XCTAssertEqual(loaded.encoderPositions, weights.encoderPositions)
        XCTAssertEqual(loaded.decoderBlocks[1].crossAttentionNorm.gamma, weights.decoderBlocks[1].crossAttentionNorm.gamma)
        XCTAssertEqual(RandomWhisper.run(loaded), RandomWhisper.run(weights), "bit-identical network outputs")
        let rotated = loaded.linearLayers.filter { ($0.weight as? QuantizedMatrix)?.rotated == true }.count
        XCTAssertGreaterThan(rotated, 5, "the sample has rotated layers")
        // The file is laid out as documented: magic, version, 64-byte aligned data section.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        XCTAssertEqual(Array(bytes[0..<8]), Array("MYQMODEL".utf8))
        XCTAssertEqual(bytes[8], 3, "format version 3: signed scales, rotated layers marked")
        let dataOffset = bytes[24..<32].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual(dataOffset % 64, 0)
        XCTAssertTrue(String(decoding: bytes[64..<dataOffset], as: UTF8.self).contains("\"statisticsDigest\":\"stats:v1:1234\""))
    }

    func testFloatOnlyNetworkRoundTrips() throws {
        var rng = SeededGenerator(seed: 22)
        let weights = RandomWhisper.make(rng: &rng)
        let p = path("float.myq")
        var withoutVocabulary = metadata
        withoutVocabulary.sourceVocabularyDigest = nil   // as written before these were recorded
        withoutVocabulary.rounding = nil
        try QuantizedModelFile.write(weights: weights, metadata: withoutVocabulary, to: p)
        let (loaded, meta) = try QuantizedModelFile.load(path: p)
        XCTAssertNil(meta.sourceVocabularyDigest)
        XCTAssertNil(meta.rounding)
        XCTAssertTrue(loaded.linearLayers.allSatisfy { $0.weight is FloatMatrix })
        XCTAssertEqual(RandomWhisper.run(loaded), RandomWhisper.run(weights))
    }

    func testTruncatedFileIsReported() throws {
        let (p, _) = try writeSample("truncated.myq")
        let full = try FileManager.default.attributesOfItem(atPath: p)[.size] as! Int
        try patch(p) { $0.removeLast(100) }
        expectLoadError(p) { $0 == .truncated(path: p, expectedBytes: full, actualBytes: full - 100) }
        try patch(p) { $0.removeLast($0.count - 20) }
        expectLoadError(p) { $0 == .truncated(path: p, expectedBytes: 64, actualBytes: 20) }
        XCTAssertTrue(QuantizedModelFileError.truncated(path: p, expectedBytes: 64, actualBytes: 20).description.contains("truncated"))
    }

    func testFlippedByteInDataOrHeaderFailsTheChecksum() throws {
        let (p, _) = try writeSample("corrupt.myq")
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        for at in [original.count - 7, original.count / 2, 100] {     // data (twice) and JSON header
            try patch(p) { $0 = original; $0[at] ^= 0x10 }
            expectLoadError(p) {
                if case .checksumMismatch(path: p, stored: _, computed: _) = $0 { return true }
                return false
            }
        }
        try patch(p) { $0 = original }
        XCTAssertNoThrow(try QuantizedModelFile.load(path: p))
    }

    func testWrongMagicAndWrongVersionAreReported() throws {
        let (p, _) = try writeSample("magic.myq")
        try patch(p) { $0[0] = UInt8(ascii: "X") }
        expectLoadError(p) { $0 == .badMagic(path: p) }
        XCTAssertTrue(QuantizedModelFileError.badMagic(path: p).description.contains("magic"))

        let (v, _) = try writeSample("version.myq")
        try patch(v) { $0[8] = 1 }   // version 1 codes meant another grid: refused, not misread
        expectLoadError(v) { $0 == .unsupportedVersion(path: v, found: 1, supported: 3) }
        try patch(v) { $0[8] = 4 }
        expectLoadError(v) { $0 == .unsupportedVersion(path: v, found: 4, supported: 3) }
        // Version 2 had no rotated layers and is read as before (the version is outside the CRC).
        try patch(v) { $0[8] = 2 }
        XCTAssertNoThrow(try QuantizedModelFile.load(path: v))

        // A rotation this build does not know is refused, even with a valid checksum.
        let (r, _) = try writeSample("rotation.myq")
        try patch(r) { bytes in
            let known = Array("\"hadamard32\"".utf8), unknown = Array("\"hadamard64\"".utf8)
            let at = try! XCTUnwrap((0...(bytes.count - known.count)).first { Array(bytes[$0 ..< $0 + known.count]) == known })
            bytes.replaceSubrange(at ..< at + known.count, with: unknown)
            let crc = bytes[16...].withUnsafeBytes { QuantizedModelFile.crc32Update(0, $0) }
            for i in 0..<4 { bytes[12 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        }
        XCTAssertThrowsError(try QuantizedModelFile.load(path: r)) {
            XCTAssertTrue("\($0)".contains("unknown rotation hadamard64"), "\($0)")
        }
    }

    func testMissingFileAndForeignFileAreReported() throws {
        let missing = path("missing.myq")
        expectLoadError(missing) {
            if case .cannotRead(path: missing, reason: _) = $0 { return true }
            return false
        }
        let foreign = path("model.bin")
        try Data("not a model at all, just some text that is long enough".utf8).write(to: URL(fileURLWithPath: foreign))
        expectLoadError(foreign) { $0 == .badMagic(path: foreign) }
    }

    func testWriteReplacesAtomicallyAndReportsUnwritablePaths() throws {
        let (p, _) = try writeSample("again.myq")
        try QuantizedModelFile.write(weights: try mixedNetwork(), metadata: metadata, to: p)
        XCTAssertNoThrow(try QuantizedModelFile.load(path: p))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [])
        let bad = path("no-such-dir/model.myq")
        XCTAssertThrowsError(try QuantizedModelFile.write(weights: try mixedNetwork(), metadata: metadata, to: bad)) {
            guard case .cannotWrite(path: bad, reason: _)? = $0 as? QuantizedModelFileError else { return XCTFail("\($0)") }
        }
    }
}
