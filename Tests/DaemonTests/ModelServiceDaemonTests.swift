import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// The model service through a real daemon (subprocess, real sockets, tiny.en): budgets that would serve nothing
/// are refused, the way back to no budget, `forget` down to the model and the files, and work whose client went
/// away is dropped.
final class ModelServiceDaemonTests: XCTestCase {
    private func statusJSON(_ harness: DaemonHarness) throws -> [String: JSONValue] {
        guard case .object(let object) = try harness.client().request(.status) else {
            throw HarnessError("status is not an object")
        }
        return object
    }

    /// `budget 15MiB` selects 2 bits, whose model decodes nothing: the self-check refuses it, the command says
    /// why, and the model in service stays. 3 bits pass; `budget none` returns to the float model.
    func testABudgetWhoseModelDecodesNothingIsRefused() throws {
        let jfk = try Data(contentsOf: URL(fileURLWithPath: try Fixtures.sample("jfk.wav")))
        let harness = try DaemonHarness(microphone: nil)
        let ctl = try Fixtures.binary("myqasrctl")
        let socketArgs = ["--socket", harness.controlSocket]

        var (status, out, err) = try runTool(ctl, ["budget", "15MiB"] + socketArgs)
        XCTAssertNotEqual(status, 0, "a 2-bit model that decodes nothing must not be put into service: \(out)")
        XCTAssertTrue(err.contains("check_failed"), err)
        XCTAssertTrue(err.contains("self-check"), err)
        var now = try harness.client().status()
        XCTAssertNil(now.budgetBytes, "the budget in force stays")
        XCTAssertEqual(Set(now.layerBits?.values ?? [:].values), [32], "the model in service stays")
        XCTAssertTrue(Fixtures.normalise(try harness.client().transcribe(wav: jfk).text).contains("country"))

        (status, out, err) = try runTool(ctl, ["budget", "20MiB"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("at 3-bit"), out)
        now = try harness.client().status()
        XCTAssertEqual(now.budgetBytes, 20 * 1024 * 1024)
        XCTAssertNotNil(now.model?.checkDivergence, "the served model passed a check")
        XCTAssertFalse(try harness.client().transcribe(wav: jfk).text.isEmpty)

        (status, out, err) = try runTool(ctl, ["budget", "none"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("no budget"), out)
        now = try harness.client().status()
        XCTAssertNil(now.budgetBytes)
        XCTAssertEqual(Set(now.layerBits?.values ?? [:].values), [32], "unlimited: the float model")
        XCTAssertEqual(harness.stop(), 0)
    }

    /// Leftover temporary statistics files are removed at start and at `forget`; the statistics file is 0600;
    /// after `forget` the daemon serves the source model at the budget with widths chosen without statistics and
    /// holds no statistics.
    func testForgetServesAModelWithoutTheUserAndLeavesNoFiles() throws {
        let jfk = try Fixtures.sample("jfk.wav")
        let speech = try Fixtures.pcm16(ofWAV: jfk)
        let leftovers = ["statistics.myqs.tmp", ".dat.nosyncA1b2.C3d4e5"]
        let harness = try DaemonHarness(microphone: microphoneSignal(speech: speech), speed: 4,
                                        stateFiles: Dictionary(uniqueKeysWithValues: leftovers.map { ($0, Data(repeating: 7, count: 4096)) }))
        let state = { (name: String) in (harness.stateDirectory as NSString).appendingPathComponent(name) }
        for name in leftovers {
            XCTAssertFalse(FileManager.default.fileExists(atPath: state(name)), "\(name) is removed at start")
        }
        let listener = try ListenCollector(socketPath: harness.controlSocket)
        try listener.ready()
        try harness.startMicrophone()
        _ = try listener.waitFor(phrase: "fellow americans", timeout: 120)
        _ = try harness.daemon.waitForLog(timeout: 60, what: "the statistics pass") { $0.contains("statistics pass") ? true : nil }
        var info = stat()
        XCTAssertEqual(stat(state("statistics.myqs"), &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600, "the statistics file is the user's alone")

        let client = try harness.client()
        try client.setBudget(bytes: 24 * 1024 * 1024)
        var status = try client.status()
        XCTAssertEqual(Set(status.layerBits?.values ?? [:].values), [4, 5], "personalised from the statistics")
        XCTAssertEqual(status.model?.statisticsSamples, 1)

        for name in leftovers { try Data(repeating: 9, count: 4096).write(to: URL(fileURLWithPath: state(name))) }
        try client.forget()
        status = try client.status()
        XCTAssertEqual(status.utterancesSeen, 0)
        XCTAssertEqual(status.statisticsSamples, 0)
        XCTAssertEqual(status.budgetBytes, 24 * 1024 * 1024, "the budget stays")
        XCTAssertEqual(Set(status.layerBits?.values ?? [:].values), [4], "widths without statistics")
        XCTAssertEqual(status.model?.statisticsSamples, 0)
        XCTAssertEqual(status.model?.reason, "forget")
        for name in leftovers + ["statistics.myqs", "statistics.myqs.corrupt"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: state(name)), "\(name) is gone after forget")
        }
        let wyoming = try WyomingTestClient(unixPath: harness.wyomingSocket)
        XCTAssertTrue(Fixtures.normalise(try wyoming.transcribe(pcm16: speech)).contains(jfkPhrase))
        XCTAssertEqual(harness.stop(), 0)
    }

    /// A client that disconnects loses its queued request at once and stops its running one at the next decoding
    /// step; others are answered.
    func testWorkOfADisconnectedClientIsDropped() throws {
        let speech = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        var long = Data()
        for _ in 0..<9 { long += speech }   // 99 s: far longer to transcribe than the test waits for a stop
        // No partial passes: one would count as running, and the polls below must see the requests themselves (a
        // partial of the first request's audio, running while that audio was still read, let the test go on while
        // the second request was not yet queued).
        let harness = try DaemonHarness(microphone: nil, limits: "queue_depth = 4",
                                        captureSection: "enabled = false\npartial_interval = 0")
        // One control connection for the polls below, rather than a new one every few milliseconds: load that a
        // daemon built with ThreadSanitizer, on a busy machine, does not need (this test once timed out there).
        let control = try harness.client()
        var running: WyomingTestClient? = try WyomingTestClient(unixPath: harness.wyomingSocket)
        try running!.sendAudio(pcm16: long)
        _ = try Waiter<Int>.poll(timeout: 60, what: "the first request running") {
            (try? control.queue()).map { $0.running == 1 && $0.waiting == 0 } == true ? 1 : nil
        }
        var waiting: WyomingTestClient? = try WyomingTestClient(unixPath: harness.wyomingSocket)
        try waiting!.sendAudio(pcm16: long)
        _ = try Waiter<Int>.poll(timeout: 60, what: "the second request waiting") { (try? control.queue().waiting) == 1 ? 1 : nil }

        waiting = nil   // disconnects
        _ = try Waiter<Int>.poll(timeout: 30, what: "the waiting request dropped") {
            (try? control.queue()).map { $0.waiting == 0 && $0.cancelledRequests == 1 } == true ? 1 : nil
        }
        running = nil
        let stopped = try Waiter<QueueStatus>.poll(timeout: 30, what: "the running request stopped") {
            (try? control.queue()).flatMap { $0.running == 0 && $0.cancelledRequests == 2 ? $0 : nil }
        }
        XCTAssertEqual(stopped.refusedRequests, 0)
        let other = try WyomingTestClient(unixPath: harness.wyomingSocket)
        XCTAssertTrue(Fixtures.normalise(try other.transcribe(pcm16: speech)).contains(jfkPhrase))
        XCTAssertEqual(harness.stop(), 0)
    }
}
