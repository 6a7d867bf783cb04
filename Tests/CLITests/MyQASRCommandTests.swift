import Foundation
import TestSupport
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
        for option in ["--model", "--beam-size", "--language", "--format", "--full-window"] {
            XCTAssertTrue(transcribeHelp.contains(option), "transcribe help lacks \(option)")
        }
    }

    /// The short window is on by default and `--full-window` turns it off; the JSON says which ran.
    func testFullWindowTurnsTheShortWindowOff() throws {
        let jfk = try Fixtures.sample("jfk.wav")
        _ = try Fixtures.modelDirectory("tiny.en")
        func transcribe(_ extra: [String]) throws -> [String: Any] {
            let (status, out, err) = try run(["transcribe", "--model", "tiny.en", "--beam-size", "1", "--format", "json"] + extra + [jfk])
            XCTAssertEqual(status, 0, err)
            let report = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
            return try XCTUnwrap((report?["files"] as? [[String: Any]])?.first, out)
        }
        let short = try transcribe([]), whole = try transcribe(["--full-window"])
        // JFK's 11 s fill one window: encoded short (kept, or retried whole by the guard), or whole.
        XCTAssertEqual((short["short_windows"] as? Int ?? 0) + (short["full_window_retries"] as? Int ?? 0), 1, "\(short)")
        XCTAssertEqual(whole["short_windows"] as? Int, 0)
        XCTAssertEqual(whole["full_window_retries"] as? Int, 0)
        func words(_ file: [String: Any]) -> String {
            String(((file["text"] as? String) ?? "").lowercased().map { $0.isLetter ? $0 : " " }).split(separator: " ").joined(separator: " ")
        }
        XCTAssertEqual(words(short), "and so my fellow americans ask not what your country can do for you ask what you can do for your country")
        XCTAssertEqual(words(short), words(whole))
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
