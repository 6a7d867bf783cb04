import Foundation
import TestSupport
import XCTest
@testable import Serving

/// Interoperability with the reference `wyoming` Python package (its AsyncUnixClient against our server).
///
/// Needs a virtual environment with `wyoming` installed, at `$MYQASR_WYOMING_PYTHON` or
/// `${XDG_CACHE_HOME:-~/.cache}/myqasr/wyoming-venv/bin/python`:
/// `scripts/setup` creates it (`python3 -m venv ~/.cache/myqasr/wyoming-venv`, then `pip install wyoming==1.10.2`).
final class WyomingPythonClientTests: XCTestCase {
    static var python: String? {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["MYQASR_WYOMING_PYTHON"] { return explicit }
        let cache = environment["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")
        return cache + "/myqasr/wyoming-venv/bin/python"
    }

    static let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/wyoming-client-test.py").path

    func testReferenceClientTranscribes() async throws {
        guard let python = Self.python, FileManager.default.isExecutableFile(atPath: python) else {
            throw Fixtures.missing("no Python venv with the wyoming package at \(Self.python ?? "?"); scripts/setup creates it")
        }
        let check = Process()
        check.executableURL = URL(fileURLWithPath: python)
        check.arguments = ["-c", "import wyoming.client"]
        try check.run()
        check.waitUntilExit()
        guard check.terminationStatus == 0 else {
            throw Fixtures.missing("the venv at \(python) has no wyoming package; scripts/setup installs it")
        }

        let directory = try makeTemporaryDirectory()
        defer { removeDirectory(directory) }
        let socketPath = directory + "/wyoming.sock"
        let backend = CannedTranscriber()
        let server = WyomingServer(
            endpoints: [.unix(path: socketPath)], backend: backend,
            configuration: WyomingServerConfiguration(serviceInfo: {
                WyomingServiceInfo(modelName: "tiny.en", languages: ["en"])
            }))
        try await server.start()

        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [Self.script, "unix://" + socketPath]
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        let (output, errors, status) = try await onThread { () -> (Data, Data, Int32) in
            try process.run()
            let output = stdout.fileHandleForReading.readDataToEndOfFile()
            let errors = stderr.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (output, errors, process.terminationStatus)
        }
        await server.shutdown()
        XCTAssertEqual(status, 0, String(decoding: errors, as: UTF8.self))
        let report = try JSONDecoder().decode([String: JSONValue].self, from: output)
        XCTAssertEqual(report["program"], "myqasr")
        XCTAssertEqual(report["model"], "tiny.en")
        XCTAssertEqual(report["streaming"], true)
        XCTAssertEqual(report["order"], ["transcript-start", "transcript-chunk", "transcript-chunk", "transcript", "transcript-stop"])
        XCTAssertEqual(report["text"], "hello world 16000")
        XCTAssertEqual(report["language"], "en")
        XCTAssertEqual(backend.calls.first?.sampleCount, 16000)
    }
}
