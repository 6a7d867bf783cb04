import Foundation
import TestSupport
import WhisperEngine
import XCTest
@testable import Quantization

/// A build's layers written to an unnamed file and mapped back (`LayerFile`): the same model, no name left in the
/// directory, and no file at all where the directory is in memory.
final class LayerFileTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "myqasr-layer-file-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Both of a layer's paths (one piece, and runs of rows written a chunk at a time), rounded to nearest and
    /// compensated: the codes and scales of every layer are those made in memory, and they are mapped from the file.
    func testLayersInAFileAreTheLayersMadeInMemory() throws {
        let (weights, covariance) = QuantizerTests.weightsWithMoments()
        for rounding in [RoundingMethod.nearest, .compensated] {
            var options = QuantizationOptions(target: .uniform(bits: 3), groupSize: 32, rounding: rounding)
            options.chunkBytes = 7 * 4 * 64   // the 256-row layers in two runs of 128 rows
            let inMemory = try Quantizer.quantize(name: "syn", weights: weights, statistics: nil, options: options,
                                                  covariance: covariance)
            options.layerFile = try XCTUnwrap(LayerFile.open(directory: directory))
            let inFile = try Quantizer.quantize(name: "syn", weights: weights, statistics: nil, options: options,
                                                covariance: covariance)
            options.layerFile = nil
            XCTAssertEqual(inFile.weights.byteSize, inMemory.weights.byteSize)
            for (a, b) in zip(inMemory.weights.linearLayers, inFile.weights.linearLayers) {
                let qa = try XCTUnwrap(a.weight as? QuantizedMatrix), qb = try XCTUnwrap(b.weight as? QuantizedMatrix)
                XCTAssertFalse(qa.packed.isMemoryMapped, a.name)
                XCTAssertTrue(qb.packed.isMemoryMapped && qb.scales.isMemoryMapped, "\(rounding) \(a.name)")
            }
            try QuantizerTests.assertSameLayers(inMemory.weights, inFile.weights, "\(rounding)")
            // The network reads them from there as it reads its own.
            var rng = ActivationStatisticsTests.Rng(state: 5)
            let mel = (0..<(8 * 32)).map { _ in rng.normal() }
            XCTAssertEqual(WhisperNetwork(weights: inFile.weights, threads: 1).encode(mel: mel).values,
                           WhisperNetwork(weights: inMemory.weights, threads: 1).encode(mel: mel).values)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), [],
                       "the layers' file has no name in the directory")
    }

    /// A placed matrix keeps its activation precision and its values; the file's regions start on pages, as a
    /// mapping must, whatever a layer's size.
    func testPlaceKeepsTheMatrix() throws {
        let file = try XCTUnwrap(LayerFile.open(directory: directory))
        var rng = ActivationStatisticsTests.Rng(state: 9)
        for (out, k) in [(3, 32), (5, 96), (1, 64)] {
            let values = (0..<(out * k)).map { _ in rng.normal() }
            let matrix = try QuantizedMatrix(quantizing: values, outFeatures: out, inFeatures: k, bits: 4, groupSize: 32)
                .withActivationPrecision(.float)
            let placed = try file.place(matrix)
            XCTAssertEqual(placed.activationPrecision, .float)
            XCTAssertEqual(placed.dequantized(), matrix.dequantized())
            XCTAssertEqual(Int(bitPattern: placed.packed.baseAddress) % Int(sysconf(Int32(_SC_PAGESIZE))), 0)
        }
    }

    /// A placed matrix's pages leave the resident set on `releaseResidentPages` and come back, unchanged, when read.
    func testReleasedPagesAreReadAgain() throws {
        let file = try XCTUnwrap(LayerFile.open(directory: directory))
        var rng = ActivationStatisticsTests.Rng(state: 11)
        let values = (0..<(256 * 512)).map { _ in rng.normal() }
        let matrix = try QuantizedMatrix(quantizing: values, outFeatures: 256, inFeatures: 512, bits: 4, groupSize: 32)
        let placed = try file.place(matrix)
        let expected = matrix.dequantized()
        XCTAssertEqual(placed.dequantized(), expected)
        let address = placed.packed.baseAddress
        XCTAssertEqual(ResidentPages.kib(ofMappingAt: address), (placed.packed.count + placed.scales.count + 4095) / 4096 * 4)
        placed.releaseResidentPages()
        XCTAssertEqual(ResidentPages.kib(ofMappingAt: address), 0)
        XCTAssertEqual(placed.dequantized(), expected)
        matrix.releaseResidentPages()   // its own memory: nothing happens to it
        XCTAssertEqual(matrix.dequantized(), expected)
    }

    /// No file for a directory in memory (its pages would be memory all the same); a clear error for one that is
    /// not there.
    func testMemoryDirectoriesAreRefusedAndMissingOnesNamed() throws {
        let mounts = FileHandle(forReadingAtPath: "/proc/self/mounts").map { String(decoding: $0.readDataToEndOfFile(), as: UTF8.self) } ?? ""
        if mounts.split(separator: "\n").contains(where: { $0.hasPrefix("tmpfs /dev/shm tmpfs ") }) {
            XCTAssertNil(try LayerFile.open(directory: "/dev/shm"))
        }
        XCTAssertThrowsError(try LayerFile.open(directory: directory + "/absent")) { error in
            guard case let .cannotOpen(path, reason)? = error as? LayerFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, directory + "/absent")
            XCTAssertFalse(reason.isEmpty)
        }
    }
}
