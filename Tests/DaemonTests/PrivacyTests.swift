import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// Nothing the user said reaches disk or the logs.
final class PrivacyTests: XCTestCase {
    /// Runs the daemon over known speech (microphone, Wyoming and control requests, at the trace log level), then
    /// searches its stderr, its state and runtime directories and every file under its home, temporary and
    /// working directories (all inside one sandbox) for the spoken words.
    func testSpokenWordsReachNoFileAndNoLog() throws {
        let jfk = try Fixtures.sample("jfk.wav")
        let speech = try Fixtures.pcm16(ofWAV: jfk)
        let harness = try DaemonHarness(microphone: microphoneSignal(speech: speech), speed: 4, logLevel: "trace")
        let listener = try ListenCollector(socketPath: harness.controlSocket)
        try listener.ready()
        try harness.startMicrophone()
        let heard = try listener.waitFor(phrase: jfkPhrase, timeout: 120)
        let client = try harness.client()
        _ = try client.transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: jfk)))
        let wyoming = try WyomingTestClient(unixPath: harness.wyomingSocket)
        _ = try wyoming.transcribe(pcm16: speech)
        // The statistics file (aggregates of the utterance's activations) is among the files searched.
        _ = try harness.daemon.waitForLog(timeout: 60, what: "the statistics pass") { $0.contains("statistics pass") ? true : nil }
        XCTAssertGreaterThanOrEqual(try client.status().statisticsSamples, 1)
        XCTAssertEqual(harness.stop(), 0)
        let statisticsFile = (harness.stateDirectory as NSString).appendingPathComponent("statistics.myqs")
        XCTAssertTrue(FileManager.default.fileExists(atPath: statisticsFile))

        // The words that were recognised, as they would be written.
        let spoken = ["fellow americans", "ask not", "your country", "fellow", "country"]
        XCTAssertTrue(heard.contains("fellow americans"), "the test needs the words to have been recognised")

        var searched: [String] = []
        let log = harness.daemon.stderrText
        XCTAssertFalse(log.isEmpty, "the daemon should have logged something")
        XCTAssertTrue(log.contains("utterance transcribed"), "the utterance should be logged (by size only)")
        searched.append(harness.daemon.stderrPath)
        for word in spoken {
            XCTAssertNil(log.lowercased().range(of: word), "the log contains \"\(word)\"")
        }

        // Inputs the test itself wrote are excluded; everything else in the sandbox is the daemon's.
        let inputs: Set<String> = [harness.configPath, harness.daemon.stderrPath, harness.notify.path]
        let roots = [harness.stateDirectory, harness.runtimeDirectory, harness.sandbox]
        for root in roots {
            guard let walker = FileManager.default.enumerator(atPath: root) else { continue }
            for case let relative as String in walker {
                let path = (root as NSString).appendingPathComponent(relative)
                var info = stat()
                guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, !inputs.contains(path) else { continue }
                searched.append(path)
                let content = (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data()
                let text = String(decoding: content, as: UTF8.self).lowercased()
                for word in spoken {
                    XCTAssertNil(text.range(of: word), "\(path) contains \"\(word)\"")
                }
                // Raw audio would show up as the speech's PCM bytes.
                XCTAssertNil(content.range(of: speech[speech.startIndex + 32000..<speech.startIndex + 32064]),
                             "\(path) contains the audio")
            }
        }
        print("privacy: searched \(searched.count) file(s) written by the daemon (stderr \(log.utf8.count) bytes)")
    }
}
