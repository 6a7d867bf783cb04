import Foundation
import XCTest

/// The real daemon with the reference client: the `wyoming` package from PyPI (installed by
/// `scripts/setup` into a throwaway venv) sends a WAV over `unix://` and reads the transcript.
final class WyomingPackageTests: XCTestCase {
    /// The venv's python: `$MYQASR_WYOMING_PYTHON`, else `${XDG_CACHE_HOME:-~/.cache}/myqasr/wyoming-venv`.
    private var python: String {
        get throws {
            let environment = ProcessInfo.processInfo.environment
            let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")
            let path = environment["MYQASR_WYOMING_PYTHON"] ?? (cache + "/myqasr/wyoming-venv/bin/python")
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw Fixtures.missing("no venv with the wyoming package at \(path); scripts/setup creates it")
            }
            return path
        }
    }

    private let script = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/wyoming-client-test.py").path

    func testReferenceClientGetsTheTranscriptOfAWAV() throws {
        let python = try python
        let wav = try Fixtures.sample("jfk.wav")
        let harness = try DaemonHarness(microphone: nil)
        let (status, out, err) = try runTool(python, [script, "unix://" + harness.wyomingSocket, wav])
        XCTAssertEqual(status, 0, err)
        let report = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        let text = Fixtures.normalise(report?["text"] as? String ?? "")
        XCTAssertTrue(text.contains("ask not what your country can do for you"), out)
        XCTAssertEqual(report?["language"] as? String, "en")
        XCTAssertEqual(report?["model"] as? String, "tiny.en")
        XCTAssertEqual((report?["order"] as? [String])?.last, "transcript-stop", out)
    }
}
