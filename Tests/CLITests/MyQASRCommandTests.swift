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

    /// `--budget` reads sizes by the rule every program shares: `24M` is 24 MiB here as in `myqasrctl budget`.
    func testBudgetTakesTheSharedSizeSpellings() throws {
        let model = NSTemporaryDirectory() + "myqasr-no-model-\(UUID().uuidString)"
        for budget in ["24M", "24MiB", "24 MB", "25165824"] {
            let (status, _, err) = try run(["quantize", "--model", model, "--budget", budget, "--stats", model + ".myqs",
                                            "--out", model + ".myq"])
            XCTAssertNotEqual(status, 0)
            XCTAssertFalse(err.contains("is not a size"), "\(budget): \(err)")
            XCTAssertTrue(err.contains(model), "past the budget, the missing model is the error: \(err)")
        }
        let (status, _, err) = try run(["quantize", "--model", model, "--budget", "24Q", "--stats", model + ".myqs",
                                        "--out", model + ".myq"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("--budget: \"24Q\" is not a size"), err)
    }

    func testMissingModelSaysHowToFetchIt() throws {
        let path = NSTemporaryDirectory() + "myqasr-no-models-\(UUID().uuidString)"
        let (status, _, err) = try MyQASRTool.run(["transcribe", "--model", "base", "/dev/null"],
                                                  environment: ["MYQASR_MODELS_DIR": path, "PATH": "/usr/bin:/bin"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("scripts/fetch-models base"), err)
    }
}
