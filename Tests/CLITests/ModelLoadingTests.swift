import Foundation
import Quantization
import TestSupport
import XCTest

/// Every `myqasr` subcommand resolves `--model` the same way: `transcribe` and `eval` take a quantized model file,
/// `stats` and `quantize` refuse one with a message naming what they need.
final class ModelLoadingTests: XCTestCase {
    private func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        try MyQASRTool.run(arguments)
    }

    func testTranscribeTakesAMyqFileAndFloatOnlyCommandsRefuseIt() throws {
        _ = try Fixtures.modelDirectory("tiny.en")
        let jfk = try Fixtures.sample("jfk.wav")
        let calibration = try Fixtures.sample("goforward.wav")
        let directory = NSTemporaryDirectory() + "myqasr-myq-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let myq = directory + "/u4.myq"

        var (status, out, err) = try run(["quantize", "--model", "tiny.en", "--uniform", "4",
                                          "--calibration", calibration, "--out", myq])
        XCTAssertEqual(status, 0, err)

        // Calibration audio means compensated rounding; the file records it and its source's vocabulary.
        (status, out, err) = try run(["inspect", myq])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("rounding compensated"), out)
        XCTAssertNotNil(out.range(of: #"vocab-[0-9a-f]{8}-[0-9a-f]{16}"#, options: .regularExpression), out)
        // Rotated by default wherever the inputs are whole 32-blocks: all but conv1 (3 x 80 mels = 240 inputs).
        let rows = out.split(separator: "\n").filter { $0.hasPrefix("encoder/") || $0.hasPrefix("decoder/") }
        XCTAssertEqual(rows.count, 47, out)
        XCTAssertEqual(rows.filter { $0.hasSuffix(" yes") }.count, 46, out)
        XCTAssertTrue(rows[0].hasPrefix("encoder/conv1") && rows[0].hasSuffix(" -"), out)

        // Told by content, not by name: the same file called u4.q is the same quantized model.
        let renamed = directory + "/u4.q"
        try FileManager.default.copyItem(atPath: myq, toPath: renamed)
        for model in [myq, renamed] {
            (status, out, err) = try run(["transcribe", "--model", model, "--beam-size", "1", jfk])
            XCTAssertEqual(status, 0, err)
            let words = String(out.lowercased().map { $0.isLetter ? $0 : " " }).split(separator: " ").joined(separator: " ")
            XCTAssertTrue(words.contains("ask not what your country can do for you"), out)
        }

        // compare: a model against itself diverges nowhere (but for the reference's rows kept in half precision:
        // under 0.0001 nats per position); the 4-bit model somewhere, yet mostly agrees.
        (status, out, err) = try run(["compare", "--model", "tiny.en", "--reference", "tiny.en", jfk])
        XCTAssertEqual(status, 0, err)
        let itself = out.split(separator: " ").compactMap { Double($0) }   // [files, positions, KL, agreement]
        XCTAssertEqual(itself.count, 4, out)
        XCTAssertLessThan(itself.count == 4 ? itself[2] : 1, 0.0001, out)
        XCTAssertTrue(out.contains("top-1 agreement 100.00 %"), out)
        (status, out, err) = try run(["compare", "--model", myq, "--reference", "tiny.en", jfk])
        XCTAssertEqual(status, 0, err)
        let figures = out.split(separator: " ").compactMap { Double($0) }   // [files, positions, KL, agreement]
        XCTAssertEqual(figures.count, 4, out)
        if figures.count == 4 {
            XCTAssertEqual(figures[0], 1, out)
            XCTAssertGreaterThan(figures[1], 20, out)   // JFK's sentence is over 20 tokens
            XCTAssertGreaterThan(figures[2], 0, out)
            XCTAssertGreaterThan(figures[3], 80, out)
            XCTAssertLessThanOrEqual(figures[3], 100, out)
        }
        XCTAssertFalse(out.lowercased().contains("country"), "compare prints no text: \(out)")

        (status, out, err) = try run(["stats", "--model", myq, "--out", directory + "/s.myqs", jfk])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("statistics need the full-precision model; \(myq) is a quantized model file"), err)
        // The quantized model is the one that serves (`--served`): at 4 bits its encoder stands in; a float model's not.
        (status, out, err) = try run(["stats", "--model", "tiny.en", "--served", myq, "--out", directory + "/s.myqs", jfk])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.hasPrefix("1 utterances, 47 layers"), out)
        (status, out, err) = try run(["stats", "--model", "tiny.en", "--served", "tiny.en", "--out", directory + "/f.myqs", jfk])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.hasPrefix("tiny.en has layers below 4 bits or none quantized: its encoder does not stand in"), out)
        let withStandIn = try StatisticsFile.load(path: directory + "/s.myqs")
        let without = try StatisticsFile.load(path: directory + "/f.myqs")
        XCTAssertNotEqual(StatisticsFile.digest(withStandIn), StatisticsFile.digest(without))

        (status, out, err) = try run(["quantize", "--model", myq, "--uniform", "4", "--calibration", calibration,
                                      "--out", directory + "/again.myq"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("need the full-precision model; \(myq) is a quantized model file"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/again.myq"))
    }

    func testStatisticsGiveCompensatedRoundingUnlessToldOtherwise() throws {
        _ = try Fixtures.modelDirectory("tiny.en")
        let calibration = try Fixtures.sample("goforward.wav")
        let directory = NSTemporaryDirectory() + "myqasr-stats-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let stats = directory + "/s.myqs"
        var (status, _, err) = try run(["stats", "--model", "tiny.en", "--out", stats, calibration])
        XCTAssertEqual(status, 0, err)
        let mode = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: stats)[.posixPermissions] as? NSNumber)
        XCTAssertEqual(mode.intValue & 0o777, 0o600, "the statistics are the user's alone")
        for (flags, rounding) in [([String](), "compensated"), (["--rounding", "nearest", "--no-rotation"], "nearest")] {
            let myq = directory + "/u4-\(rounding).myq"
            (status, _, err) = try run(["quantize", "--model", "tiny.en", "--uniform", "4", "--stats", stats, "--out", myq] + flags)
            XCTAssertEqual(status, 0, err)
            let out: String
            (status, out, err) = try run(["inspect", myq])
            XCTAssertTrue(out.contains("rounding \(rounding)"), out)
            // Nearest rounding here also keeps the weights unrotated.
            XCTAssertEqual(out.contains(" yes\n"), rounding == "compensated", out)
        }
    }
}
