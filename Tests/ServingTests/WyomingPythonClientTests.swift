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
        let (report, backend) = try await runClient(arguments: [], backend: CannedTranscriber())
        XCTAssertEqual(report["program"], "myqasr")
        XCTAssertEqual(report["model"], "tiny.en")
        XCTAssertEqual(report["streaming"], true)
        XCTAssertEqual(report["order"], ["transcript-start", "transcript-chunk", "transcript-chunk", "transcript", "transcript-stop"])
        XCTAssertEqual(report["text"], "hello world 16000")
        XCTAssertEqual(report["language"], "en")
        XCTAssertEqual(backend.calls.first?.sampleCount, 16000)
    }

    /// Partial transcripts while the audio streams in, read by the package's own event classes: the client sends
    /// half of 3 s and receives `transcript-start` and a `transcript-chunk` (the words two partials agreed on)
    /// before it sends the rest; at the end the rest of the text comes as a chunk, so the chunks joined are the
    /// final `transcript`, then `transcript-stop`.
    func testReferenceClientReceivesChunksWhileStreaming() async throws {
        let (report, backend) = try await runClient(arguments: ["--stream"], backend: CountingWordsTranscriber())
        XCTAssertEqual(report["before_stop"], ["transcript-start", "transcript-chunk"])
        let order = report["order"]?.strings ?? []
        XCTAssertEqual(order.first, "transcript-start")
        XCTAssertEqual(Array(order.suffix(2)), ["transcript", "transcript-stop"])
        XCTAssertEqual(order.filter { $0 == "transcript-start" }.count, 1)
        XCTAssertEqual(Set(order.dropFirst().dropLast(2)), ["transcript-chunk"])
        let chunks = report["chunks"]?.strings ?? []
        XCTAssertEqual(chunks.joined(), report["text"]?.stringValue)
        XCTAssertEqual(report["text"]?.stringValue, CountingWordsTranscriber.text(samples: 48000))
        XCTAssertGreaterThanOrEqual(backend.partials, 2)
    }

    private func runClient<Backend: TranscriptionBackend>(arguments: [String], backend: Backend) async throws
        -> ([String: JSONValue], Backend)
    {
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
        let server = WyomingServer(
            endpoints: [.unix(path: socketPath)], backend: backend,
            configuration: WyomingServerConfiguration(serviceInfo: {
                WyomingServiceInfo(modelName: "tiny.en", languages: ["en"])
            }))
        try await server.start()

        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [Self.script, "unix://" + socketPath] + arguments
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
        return (try JSONDecoder().decode([String: JSONValue].self, from: output), backend)
    }
}

/// A backend whose transcript of n samples is one word per 0.25 s ("w1 w2 ..."), partial or final, with partials
/// every 0.25 s of audio.
final class CountingWordsTranscriber: TranscriptionBackend, @unchecked Sendable {
    private let lock = NSLock()
    private var partialCount = 0
    var partials: Int { lock.withLock { partialCount } }

    static func text(samples: Int) -> String {
        (0..<(samples / 4000)).map { "w\($0 + 1)" }.joined(separator: " ")
    }

    var partialInterval: Double { 0.25 }

    func transcribe(samples: [Float], language: String?, origin: RequestOrigin) async throws -> TranscriptResult {
        TranscriptResult(text: Self.text(samples: samples.count), language: "en")
    }

    func transcribePartial(samples: [Float], language: String?, origin: RequestOrigin) async -> TranscriptResult? {
        lock.withLock { partialCount += 1 }
        return TranscriptResult(text: Self.text(samples: samples.count), language: "en")
    }
}

private extension JSONValue {
    /// The string elements, if this is an array.
    var strings: [String]? {
        if case .array(let elements) = self { return elements.compactMap(\.stringValue) }
        return nil
    }
}
