import Foundation
import TestSupport
import XCTest

/// MYQASR_REQUIRE_FIXTURES=1 turns a missing fixture into a failure in every test target: each test below
/// once skipped whatever the flag said (issue 18 item 5). Each runs here in a child of this test bundle with its
/// fixture taken away: skipped without the flag, failed with it.
final class FixturePolicyTests: XCTestCase {
    /// Tests that need a model, run with an empty models root.
    static let modelTests = [
        "TokenizerTests.RealVocabularyTests/testRoundTripTinyEn",
        "WhisperEngineTests.ModelFileTests/testRealModelsHaveTheDocumentedLayout",
        "CLITests.ModelLoadingTests/testTranscribeTakesAMyqFileAndFloatOnlyCommandsRefuseIt",
        "CLITests.ModelLoadingTests/testStatisticsGiveCompensatedRoundingUnlessToldOtherwise",
    ]
    /// The Wyoming interop test, run with a "venv" whose python has no wyoming package.
    static let wyomingTest = "ServingTests.WyomingPythonClientTests/testReferenceClientTranscribes"

    func testEveryMissingFixtureSkipsOrFailsByTheFlag() throws {
        let emptyRoot = NSTemporaryDirectory() + "myqasr-no-models-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: emptyRoot, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: emptyRoot) }
        let cases = Self.modelTests.map { ($0, ["MYQASR_MODELS_DIR": emptyRoot]) }
            + [(Self.wyomingTest, ["MYQASR_WYOMING_PYTHON": "/bin/false"])]
        for (test, fixtureTakenAway) in cases {
            let skipped = try runChild(test, environment: fixtureTakenAway, requireFixtures: false)
            XCTAssertTrue(skipped.output.contains("Executed 1 test,"), "\(test) is not a test of this bundle (renamed?):\n\(skipped.output)")
            XCTAssertEqual(skipped.status, 0, "\(test) without the flag:\n\(skipped.output)")
            XCTAssertTrue(skipped.output.contains("\(test.replacingOccurrences(of: "/", with: ".")))' skipped")
                          || skipped.output.contains("with 1 test skipped"), "\(test) without the flag:\n\(skipped.output)")

            let failed = try runChild(test, environment: fixtureTakenAway, requireFixtures: true)
            XCTAssertNotEqual(failed.status, 0, "\(test) with MYQASR_REQUIRE_FIXTURES=1:\n\(failed.output)")
            XCTAssertTrue(failed.output.contains("fixture missing with MYQASR_REQUIRE_FIXTURES=1"),
                          "\(test) with the flag:\n\(failed.output)")
        }
    }

    /// Runs one test of this bundle in a child process with `environment` added and the flag set or unset.
    private func runChild(_ test: String, environment: [String: String], requireFixtures: Bool) throws
        -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0])
        process.arguments = [test]
        var env = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        env["MYQASR_REQUIRE_FIXTURES"] = requireFixtures ? "1" : nil
        process.environment = env
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
