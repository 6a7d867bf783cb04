import Foundation
import TestSupport
import XCTest

@testable import Quantization

/// The statistics file (`.myqs`, version 4): written 0600 through its fixed temporary name, read back
/// equal, and every field checked on load, so a file with a valid checksum and a lying field is a
/// `corrupt` error, never a trap.
final class StatisticsFileTests: XCTestCase {
    /// A file image built field by field (docs/quantized-model-format.md, "The statistics file"), with a
    /// valid checksum whatever the fields say.
    struct Image {
        struct Layer {
            var name = "encoder/conv1"
            var inFeatures: UInt32 = 2, outFeatures: UInt32 = 3
            var elements: UInt64 = 12, rows: UInt64 = 4
            var bins: [(UInt16, UInt64)] = [(100, 10), (200, 2)]
            var squareSums: [Double] = [4, 9]
            var maxima: [Float] = [1, 2]
        }
        struct Moment {
            var name = "encoder/conv1"
            var width: UInt32 = 2
            var rows: UInt64 = 4
            var diagonal: [Double] = [1, 2.25]
            var correlations: [Int16] = [-32767]   // -1
        }
        var version: UInt32 = 4
        var identity = "tiny.en (test)"
        var samples: UInt64 = 2
        var layerCount: UInt32?
        var layers = [Layer()]
        var momentsKept: UInt8 = 1
        var blockSize: UInt32 = 0
        var momentCount: UInt32?
        var moments = [Moment()]

        /// One layer `width` inputs wide with its second moment (correlations in [0, 1)).
        static func wide(_ width: Int) -> Image {
            var image = Image()
            image.layers[0].inFeatures = UInt32(width)
            image.layers[0].squareSums = [Double](repeating: 4, count: width)
            image.layers[0].maxima = [Float](repeating: 2, count: width)
            image.moments[0].width = UInt32(width)
            image.moments[0].diagonal = (0..<width).map { 1 + Double($0) }
            image.moments[0].correlations = (0..<(width * (width - 1) / 2)).map { Int16($0 % 32767) }
            return image
        }

        var bytes: [UInt8] {
            var w = ByteWriter()
            w.string(identity)
            w.u64(samples)
            w.u32(layerCount ?? UInt32(layers.count))
            for l in layers {
                w.string(l.name)
                w.u32(l.inFeatures)
                w.u32(l.outFeatures)
                w.u64(l.elements)
                w.u64(l.rows)
                w.u32(UInt32(l.bins.count))
                for (bin, count) in l.bins {
                    w.u16(bin)
                    w.u64(count)
                }
                for v in l.squareSums { w.u64(v.bitPattern) }
                for v in l.maxima { w.u32(v.bitPattern) }
            }
            w.u8(momentsKept)
            w.u32(blockSize)
            w.u32(momentCount ?? UInt32(moments.count))
            for m in moments {
                w.string(m.name)
                w.u32(m.width)
                w.u64(m.rows)
                for v in m.diagonal { w.u64(v.bitPattern) }
                for c in m.correlations { w.u16(UInt16(bitPattern: c)) }
            }
            let body = w.bytes
            var file = ByteWriter()
            file.bytes += StatisticsFile.magic
            file.u32(version)
            file.u64(UInt64(body.count))
            file.bytes += body
            file.u32(StatisticsFile.crc(file.bytes))
            return file.bytes
        }
    }

    private func decode(_ image: Image) throws -> ActivationStatistics {
        try StatisticsFile.decode(image.bytes, path: "/x/s.myqs")
    }

    /// The reason of the `corrupt` error `image` gives (a failure if it gives none or another error).
    private func corruption(_ image: Image, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try decode(image)
            XCTFail("accepted", file: file, line: line)
        } catch let StatisticsFileError.corrupt(path, reason) {
            XCTAssertEqual(path, "/x/s.myqs", file: file, line: line)
            return reason
        } catch {
            XCTFail("\(error)", file: file, line: line)
        }
        return ""
    }

    func testTheBuiltImageIsAValidFile() throws {
        let s = try decode(Image())
        XCTAssertEqual(s.sampleCount, 2)
        XCTAssertEqual(s.layers.map(\.name), ["encoder/conv1"])
        XCTAssertEqual(s.layer("encoder/conv1")?.inputMeanSquare, [1, 2.25])
        let m = try XCTUnwrap(s.secondMoments?.secondMoment(of: "encoder/conv1"))
        XCTAssertEqual(m, [1, -1.5, -1.5, 2.25])   // -1 · √(1 · 2.25)
        XCTAssertEqual(StatisticsFile.encode(s), Image().bytes, "the writer writes what the reader read")
    }

    /// A sample count of 2^64 − 1 with a valid checksum trapped at `Int(samples)` (and restarted the daemon
    /// in a loop); it is a `corrupt` error like every other count beyond what the file holds.
    func testLyingCountsAreCorruptNotATrap() {
        var image = Image()
        image.samples = .max
        XCTAssertTrue(corruption(image).contains("sample count 18446744073709551615"))
        image.samples = 5   // more utterances than the 4 rows any layer saw
        XCTAssertTrue(corruption(image).contains("sample count"))
        image = Image()
        image.layerCount = .max
        XCTAssertTrue(corruption(image).contains("layers cannot fit"))
        image = Image()
        image.momentCount = 7
        XCTAssertTrue(corruption(image).contains("second moments for 1 layers"))
    }

    func testEveryLayerFieldIsChecked() {
        var image = Image()
        image.layers[0].inFeatures = 0
        XCTAssertTrue(corruption(image).contains("shape"))
        image = Image()
        image.layers[0].elements = 13
        XCTAssertTrue(corruption(image).contains("output values"))
        image = Image()
        image.layers[0].rows = .max / 2   // rows × outputs overflows
        XCTAssertTrue(corruption(image).contains("output values"))
        image = Image()
        image.layers[0].bins = [(200, 2), (100, 10)]
        XCTAssertTrue(corruption(image).contains("out of order"))
        image = Image()
        image.layers[0].bins = [(100, 12), (UInt16(AbsHistogram.binCount), 0)]
        XCTAssertTrue(corruption(image).contains("histogram bin"))
        image = Image()
        image.layers[0].bins = [(100, .max), (200, 13)]
        XCTAssertTrue(corruption(image).contains("overflow"))
        image = Image()
        image.layers[0].bins = [(100, 11)]
        XCTAssertTrue(corruption(image).contains("histogram holds 11"))
        image = Image()
        image.layers[0].squareSums = [.nan, 1]
        XCTAssertTrue(corruption(image).contains("not finite"))
        image = Image()
        image.layers[0].maxima = [-1, 1]
        XCTAssertTrue(corruption(image).contains("negative"))
        image = Image()
        image.layers.append(image.layers[0])
        XCTAssertTrue(corruption(image).contains("appears twice"))
        image = Image()
        image.identity = String(decoding: [0xFF, 0xFE], as: UTF8.self)
        var bytes = image.bytes
        // A name that is not UTF-8 (the decoding above made it valid; put raw bytes back and reseal).
        bytes = Array(bytes[0..<(bytes.count - 4)])
        let at = 16 + 4
        bytes.replaceSubrange(at..<(at + 6), with: [0xFF, 0xFE, 0xFD, 0xFF, 0xFE, 0xFD])
        bytes.append(contentsOf: withUnsafeBytes(of: StatisticsFile.crc(bytes).littleEndian, Array.init))
        XCTAssertThrowsError(try StatisticsFile.decode(bytes, path: "/x/s.myqs")) {
            XCTAssertEqual($0 as? StatisticsFileError, .corrupt(path: "/x/s.myqs", reason: "a name is not UTF-8"))
        }
    }

    func testEverySecondMomentFieldIsChecked() {
        var image = Image()
        image.momentsKept = 2
        XCTAssertTrue(corruption(image).contains("flag 2"))
        image = Image()
        image.momentsKept = 0
        XCTAssertTrue(corruption(image).contains("flag 0"))
        image = Image()
        image.moments[0].name = "decoder/embeddings"
        XCTAssertTrue(corruption(image).contains("no such layer"))
        image = Image()
        image.layers[0].name = "decoder/layer_1/attention/linear_1"
        image.moments[0].name = "decoder/layer_1/attention/linear_1"
        XCTAssertTrue(corruption(image).contains("shared with another layer"))
        image = Image()
        image.moments.append(image.moments[0])
        image.layers.append(Image.Layer(name: "other"))
        XCTAssertTrue(corruption(image).contains("repeated"))
        image = Image()
        image.moments[0].width = 3
        XCTAssertTrue(corruption(image).contains("3 wide"))
        image = Image()
        image.moments[0].rows = 0
        XCTAssertTrue(corruption(image).contains("0 rows"))
        image = Image()
        image.moments[0].rows = .max
        XCTAssertTrue(corruption(image).contains("rows"))
        image = Image()
        image.moments[0].diagonal = [1, -2]
        XCTAssertTrue(corruption(image).contains("diagonal"))
        image = Image()
        image.moments[0].correlations = [-32768]   // -1.00003
        XCTAssertTrue(corruption(image).contains("beyond ±1"))
        // Blocks of one feature hold no correlation: the stored one is left unread.
        image = Image()
        image.blockSize = 1
        XCTAssertTrue(corruption(image).contains("unread payload bytes"))
        image.moments[0].correlations = []
        XCTAssertNoThrow(try decode(image))
    }

    func testOtherVersionsAndDamageAreRefused() throws {
        for version: UInt32 in [1, 2, 3, 5] {
            var image = Image()
            image.version = version
            XCTAssertThrowsError(try decode(image)) {
                XCTAssertEqual($0 as? StatisticsFileError, .unsupportedVersion(path: "/x/s.myqs", version: version))
                XCTAssertTrue("\($0)".contains("myqasr stats"), "\($0)")
            }
        }
        let bytes = Image().bytes
        for cut in [3, 8, 15, bytes.count / 2, bytes.count - 1] {
            XCTAssertThrowsError(try StatisticsFile.decode(Array(bytes.prefix(cut)), path: "/x/s.myqs"), "cut at \(cut)")
        }
        var flipped = bytes
        flipped[40] ^= 1
        XCTAssertThrowsError(try StatisticsFile.decode(flipped, path: "/x/s.myqs")) {
            guard case .checksumMismatch? = $0 as? StatisticsFileError else { return XCTFail("\($0)") }
        }
    }

    /// A file many times the writer's pieces (`ByteWriter.drainBytes`) is written in pieces, header last, and holds
    /// exactly the encoded image; loaded (mapped, its pages released as they are read) it gives the same statistics,
    /// and the digest made in pieces is the CRC32 and FNV-1a of the whole payload.
    func testALargeFileIsWrittenInPiecesAndReadBack() throws {
        let image = Image.wide(600)
        let bytes = image.bytes
        XCTAssertGreaterThan(bytes.count, 4 * ByteWriter.drainBytes)
        let statistics = try decode(image)
        let path = NSTemporaryDirectory() + "myqs-large-\(UUID().uuidString).myqs"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try StatisticsFile.write(statistics, to: path)
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), bytes)
        let loaded = try StatisticsFile.load(path: path)
        XCTAssertEqual(StatisticsFile.encode(loaded), bytes)
        let payload = bytes[16..<(bytes.count - 4)]
        var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in payload { fnv = (fnv ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        XCTAssertEqual(StatisticsFile.digest(loaded),
                       "myqs1-" + String(format: "%08x%016llx", StatisticsFile.crc(Array(payload)), fnv))
    }

    /// With `mappingMoments`, the correlations stay in the file's mapping: they read the same as a plain load's, and
    /// none of the file's pages is resident after the load or after a moment is read from it.
    func testMomentsLeftInTheMappingReadTheSameAndStayOutOfMemory() throws {
        let image = Image.wide(1200)   // 1.4 MB of correlations
        let bytes = image.bytes
        let name = "myqs-mapped-\(UUID().uuidString).myqs"
        let path = NSTemporaryDirectory() + name
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let plain = try StatisticsFile.load(path: path)
        let mapped = try StatisticsFile.load(path: path, mappingMoments: true)
        XCTAssertEqual(plain.secondMoments?.mappedLayers, [])
        XCTAssertEqual(mapped.secondMoments?.mappedLayers, ["encoder/conv1"])
        XCTAssertEqual(ResidentPages.bytes(ofFilesEndingWith: name), 0, "the load leaves no page of the file resident")
        let moment = try XCTUnwrap(mapped.secondMoments?.moment(of: "encoder/conv1"))
        XCTAssertEqual(ResidentPages.bytes(ofFilesEndingWith: name), 0, "nor does a moment read from it")
        XCTAssertEqual(moment.dense, plain.secondMoments?.moment(of: "encoder/conv1")?.dense)
        XCTAssertEqual(StatisticsFile.encode(mapped), bytes)
        // A merge replaces a mapped moment with one in memory.
        let other = try StatisticsFile.load(path: path)
        try mapped.merge(other)
        XCTAssertEqual(mapped.secondMoments?.mappedLayers, [])
    }

    /// The file is the owner's alone, written through `<path>.tmp` (which a kill mid-write leaves behind,
    /// to be deleted by its owner) and renamed over the old one.
    func testWriteIsPrivateAndGoesThroughTheNamedTemporaryFile() throws {
        let directory = NSTemporaryDirectory() + "myqs-write-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/statistics.myqs"
        XCTAssertEqual(StatisticsFile.temporaryPath(for: path), directory + "/statistics.myqs.tmp")
        // A leftover from a killed write, readable by all: truncated, made private, and renamed away.
        try Data("leftover".utf8).write(to: URL(fileURLWithPath: StatisticsFile.temporaryPath(for: path)))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: StatisticsFile.temporaryPath(for: path))
        let old = umask(0)
        defer { umask(old) }
        let statistics = try decode(Image())
        for _ in 0..<2 {
            try StatisticsFile.write(statistics, to: path)
            let mode = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)
            XCTAssertEqual(mode.intValue & 0o777, 0o600)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["statistics.myqs"])
            XCTAssertEqual(try StatisticsFile.load(path: path).sampleCount, 2)
        }
        // A file that was there before with wider permissions is replaced by a private one.
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        try StatisticsFile.write(statistics, to: path)
        let mode = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)
        XCTAssertEqual(mode.intValue & 0o777, 0o600)
        XCTAssertThrowsError(try StatisticsFile.write(statistics, to: directory + "/missing/statistics.myqs")) {
            guard case .cannotWrite? = $0 as? StatisticsFileError else { return XCTFail("\($0)") }
        }
    }
}
