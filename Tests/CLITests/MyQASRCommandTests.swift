import Foundation
import XCTest

/// The `myqasr` executable as a user meets it: help, bad input, a real transcription.
final class MyQASRCommandTests: XCTestCase {
    /// The built `myqasr` next to the test bundle.
    private var binary: String {
        get throws {
            var dir = Bundle.main.bundleURL
            for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
                dir = bundle.bundleURL.deletingLastPathComponent()
            }
            let path = dir.appendingPathComponent("myqasr").path
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw XCTSkip("myqasr is not built at \(path)")
            }
            return path
        }
    }

    private func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try binary)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    func testHelpNamesEverySubcommand() throws {
        let (status, out, _) = try run(["--help"])
        XCTAssertEqual(status, 0)
        for command in ["transcribe", "stats", "quantize", "inspect", "eval"] {
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
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try binary)
        process.arguments = ["transcribe", "--model", "base", "/dev/null"]
        process.environment = ["MYQASR_MODELS_DIR": path, "PATH": "/usr/bin:/bin"]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertNotEqual(process.terminationStatus, 0)
        XCTAssertTrue(text.contains("scripts/fetch-models base"), text)
    }
}
