import Foundation
import Serving
import XCTest

/// Partial transcripts of live speech through the real daemon: ALSA's `file` plugin, the real model, a `listen`
/// client on the control socket.
final class PartialTranscriptTests: XCTestCase {
    /// JFK's 11 s through the microphone, paused after 3 s of it until a partial arrives (capture waits in its
    /// read, so the utterance is still being spoken whatever the machine's load): with partials on, `partial`
    /// events for an utterance come before its `transcript`, share its start and end earlier; with partials off
    /// there are none, and the final transcripts are identical.
    func testPartialsComeBeforeTheFinalWhichIsTheSameWithPartialsOff() throws {
        let speech = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let microphone = microphoneSignal(speech: speech, leadSeconds: 1)
        let pauseAt = 4 * 16000 * 2  // bytes: 1 s of noise, then 3 s of the recording
        let lastWords = "ask what you can do for your country"

        func run(partialInterval: Double) throws -> [LiveTranscript] {
            let harness = try DaemonHarness(microphone: microphone, capture: "partial_interval = \(partialInterval)")
            let listener = try ListenCollector(socketPath: harness.controlSocket)
            try listener.ready()
            if partialInterval > 0 { harness.feeder?.hold(atByte: pauseAt) }
            try harness.startMicrophone()
            if partialInterval > 0 {
                let partial = try listener.events.wait(timeout: 120, what: "a partial transcript") { $0.first }
                XCTAssertTrue(partial.partial, "the first event while the speech is held is a partial: \(partial)")
                XCTAssertFalse(partial.text.isEmpty)
                harness.feeder?.release()
            }
            _ = try listener.waitFor(phrase: lastWords, timeout: 120)
            let events = listener.events.all
            XCTAssertEqual(harness.stop(), 0)
            return events
        }

        let withPartials = try run(partialInterval: 1)
        let finals = withPartials.filter { !$0.partial }
        let partials = withPartials.filter(\.partial)
        XCTAssertGreaterThanOrEqual(partials.count, 1)
        for partial in partials {
            // Each partial belongs to an utterance whose final came after it, and covers less of it.
            let index = withPartials.firstIndex(of: partial)!
            let final = withPartials[index...].first { !$0.partial && $0.start == partial.start }
            XCTAssertNotNil(final, "a final transcript follows the partial \(partial)")
            if let final { XCTAssertLessThan(partial.end, final.end) }
        }

        let withoutPartials = try run(partialInterval: 0)
        XCTAssertEqual(withoutPartials.filter(\.partial).count, 0)
        XCTAssertEqual(withoutPartials.map(\.text), finals.map(\.text), "the final transcripts do not depend on partials")
        XCTAssertEqual(withoutPartials.map(\.start), finals.map(\.start))
        XCTAssertEqual(withoutPartials.map(\.end), finals.map(\.end))
    }

    /// Live partial passes are for `listen` clients: with partials on and none connected, the daemon transcribes
    /// JFK's 11 s once, at its end, and runs no partial pass (before, one about every second of speech).
    func testNoPartialPassWithoutAListenClient() throws {
        let speech = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let harness = try DaemonHarness(microphone: microphoneSignal(speech: speech, leadSeconds: 1), logLevel: "debug",
                                        capture: "partial_interval = 0.5")
        try harness.startMicrophone()
        let log = try harness.daemon.waitForLog(timeout: 120, what: "the utterance's transcript") { log in
            log.contains("utterance transcribed") ? log : nil
        }
        XCTAssertEqual(harness.stop(), 0)
        // The log is at debug level, where partial passes are logged (the capture logs each utterance there too).
        XCTAssertTrue(log.split(separator: "\n").contains { $0.contains(" debug ") && $0.contains("capture: ") },
                      log.suffix(2000).description)
        XCTAssertFalse(log.contains("partial pass"), "no partial pass without a listen client:\n\(log.suffix(3000))")
    }
}
