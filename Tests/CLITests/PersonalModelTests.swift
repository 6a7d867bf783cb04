import Foundation
import Quantization
import WhisperEngine
import TestSupport
import XCTest

/// `myqasr stats` then `myqasr quantize --budget --stats` make exactly the model the daemon serves from the
/// same statistics (`Quantizer.personalise`, which its `BudgetModelProvider` calls).
final class PersonalModelTests: XCTestCase {
    func testQuantizeFromStatisticsIsTheDaemonsModel() throws {
        _ = try Fixtures.modelDirectory("tiny.en")
        let calibration = try Fixtures.sample("jfk.wav")
        let directory = NSTemporaryDirectory() + "myqasr-personal-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let stats = directory + "/me.myqs", myq = directory + "/me.myq"
        // The tool runs OpenBLAS's kernels for this CPU (`OpenBLASCore.chooseForThisCPU`), as the daemon does; the
        // test process cannot run itself again, so the tool is given the kernels the test process runs: other
        // kernels sum the products in another order, and the codes differ.
        var environment = ProcessInfo.processInfo.environment
        environment["OPENBLAS_CORETYPE"] = OpenBLASCore.name
        var (status, out, err) = try MyQASRTool.run(["stats", "--model", "tiny.en", "--out", stats, calibration],
                                                    environment: environment)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("second moments: 44 inputs, blocks of \(StatisticsPass.momentBlockSize)"), out)
        let budget = 24 * 1024 * 1024
        (status, out, err) = try MyQASRTool.run(["quantize", "--model", "tiny.en", "--budget", "\(budget)", "--stats", stats,
                                                 "--out", myq], environment: environment)
        XCTAssertEqual(status, 0, err)

        let statistics = try StatisticsFile.load(path: stats)
        XCTAssertEqual(statistics.sampleCount, 1)
        // The daemon has built its recognizers before it quantizes, the tool has not: the codes must not
        // depend on that (OpenBLAS's thread count once did, and CI's full run saw other scales).
        let model = try Fixtures.model("tiny.en")
        _ = try SpeechRecognizer(model: model, threads: 2)
        let expected = try Quantizer.personalise(model: model, statistics: statistics, budget: budget)
        XCTAssertEqual(expected.metadata.rounding, .compensated)
        let made = try QuantizedModelFile.load(path: myq)
        XCTAssertEqual(made.metadata.statisticsDigest, expected.metadata.statisticsDigest)
        XCTAssertEqual(made.metadata.rounding, expected.metadata.rounding)
        XCTAssertEqual(made.weights.byteSize, expected.weights.byteSize)
        let madeLayers = made.weights.linearLayers, expectedLayers = expected.weights.linearLayers
        XCTAssertEqual(madeLayers.map(\.name), expectedLayers.map(\.name))
        for (a, b) in zip(madeLayers, expectedLayers) {
            let qa = try XCTUnwrap(a.weight as? QuantizedMatrix), qb = try XCTUnwrap(b.weight as? QuantizedMatrix)
            XCTAssertEqual(qa.bits, qb.bits, a.name)
            XCTAssertEqual(qa.codes(), qb.codes(), a.name)
            XCTAssertEqual(qa.scaleValues(), qb.scaleValues(), a.name)
        }
    }
}
