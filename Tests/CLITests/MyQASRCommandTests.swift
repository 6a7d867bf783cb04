import Foundation
import XCTest

/// The `myqasr` executable as a user meets it: help, bad input, a real transcription.
final class MyQASRCommandTests: XCTestCase {
    private func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        try MyQASRTool.run(arguments)
    }

    func testHelpNamesEverySubcommand() throws {
        let (status, out, _) = try run(["--help"])
        XCTAssertEqual(status, 0)
        for command in ["transcribe", "stats", "quantize", "inspect", "eval", "compare"] {
            XCTAssertTrue(out.contains("  \(command) "), "help lacks \(command):\n\(out)")
        }
        let (transcribeStatus, transcribeHelp, _) = try run(["transcribe", "--help"])
        XCTAssertEqual(transcribeStatus, 0)
        for option in ["--model", "--beam-size", "--language", "--format"] {
            XCTAssertTrue(transcribeHelp.contains(option), "transcribe help lacks \(option)")
        }
    }

    func testMalformedAudioIsAClearError() throws {
        let path = NSTemporaryDirectory() + "myqasr-not-audio-\(UUID().uuidString).wav"
        try Data("this is not a RIFF file".utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (status, out, err) = try run(["transcribe", path])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.isEmpty, out)
        XCTAssertTrue(err.contains(path), "the error should name the file: \(err)")
        XCTAssertFalse(err.contains("Fatal error"), err)
    }

    func testMissingModelSaysHowToFetchIt() throws {
        let path = NSTemporaryDirectory() + "myqasr-no-models-\(UUID().uuidString)"
        let (status, _, err) = try MyQASRTool.run(["transcribe", "--model", "base", "/dev/null"],
                                                  environment: ["MYQASR_MODELS_DIR": path, "PATH": "/usr/bin:/bin"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("scripts/fetch-models base"), err)
    }
}
