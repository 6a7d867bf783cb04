import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// The real daemon (tiny.en, real sockets, real capture) under interleaved budget commands, statistics arrivals
/// (JFK played on the microphone again and again, `requantize_after = 1`), forgets, reloads and transcriptions
/// from three clients for `MYQASR_STRESS_SECONDS` (default 45); then, idle, the invariants.
final class DaemonStressTests: XCTestCase {
    /// Memory beyond the served model's weights the idle daemon may hold (anonymous pages): the engine's scratch
    /// kept for the next window, the statistics, allocator slack, NIO, Foundation. A generous bound, not a figure.
    static let idleOverhead = 256 * 1024 * 1024

    func testRealDaemonKeepsItsInvariantsUnderInterleavedCommands() throws {
        let seconds = Double(ProcessInfo.processInfo.environment["MYQASR_STRESS_SECONDS"] ?? "") ?? 45
        let speech = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let clip = try Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav"))
        var microphone = Data()
        // Enough JFK at four times real time to keep the statistics arriving for the whole run.
        for _ in 0..<Int(seconds / 3.5 + 2) { microphone += microphoneSignal(speech: speech) }
        let settings = "requantize_after = 1"
        let harness = try DaemonHarness(microphone: microphone, speed: 4, budget: "24MiB", modelSettings: settings,
                                        limits: "queue_depth = 8")
        try harness.startMicrophone()
        let deadline = Date().addingTimeInterval(seconds)
        let mib = 1024 * 1024

        final class Tally: @unchecked Sendable {  // @unchecked: guarded by `lock`
            let lock = NSLock()
            var sent = 0, answered = 0, busy = 0, commands = 0, refused = 0
            var failures: [String] = []
            var expectedBudget: Int? = 24 * 1024 * 1024
            func add(_ body: (Tally) -> Void) {
                lock.lock()
                body(self)
                lock.unlock()
            }
        }
        let tally = Tally()
        let group = DispatchGroup()
        for index in 0..<3 {
            DispatchQueue.global().async(group: group) {
                while Date() < deadline {
                    tally.add { $0.sent += 1 }
                    do {
                        if index == 2 {
                            _ = try harness.client().transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: try Fixtures.sample("goforward.wav"))))
                        } else {
                            let client = try WyomingTestClient(unixPath: harness.wyomingSocket)
                            client.timeout = 300
                            _ = try client.transcribe(pcm16: clip)
                        }
                        tally.add { $0.answered += 1 }
                    } catch {
                        let text = "\(error)"
                        if text.contains("busy") {
                            tally.add { $0.answered += 1; $0.busy += 1 }
                        } else {
                            tally.add { $0.answered += 1; $0.failures.append("client \(index): \(text)") }
                        }
                    }
                }
            }
        }
        DispatchQueue.global().async(group: group) {
            var generator = SystemRandomNumberGenerator()
            let budgets: [Int?] = [20 * mib, 24 * mib, 30 * mib, nil, 15 * mib]
            while Date() < deadline {
                let roll = Int.random(in: 0..<6, using: &generator)
                let budget = budgets.randomElement(using: &generator)!
                do {
                    let client = try harness.client(timeout: 300)
                    switch roll {
                    case 0:
                        try client.forget()
                    case 1:
                        try DaemonHarness.configText(
                            model: harness.modelDirectory, runtime: harness.runtimeDirectory, state: harness.stateDirectory,
                            fifo: harness.feeder?.path, budget: budget.map { "\($0)" } ?? "none", modelSettings: settings,
                            limits: "queue_depth = 8"
                        ).write(toFile: harness.configPath, atomically: true, encoding: .utf8)
                        try client.reload()
                        tally.add { $0.expectedBudget = budget }
                    default:
                        try client.setBudget(bytes: budget)
                        tally.add { $0.expectedBudget = budget }
                    }
                } catch {
                    let code = daemonErrorCode(error)
                    if code == "check_failed" && budget == 15 * mib {
                        tally.add { $0.refused += 1 }
                    } else {
                        tally.add { $0.failures.append("controller: \(error)") }
                    }
                }
                tally.add { $0.commands += 1 }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + seconds + 600), .success, "every client and command came back")
        harness.feeder?.finish()

        // Idle: nothing waiting or running, then one last forget.
        let client = try harness.client(timeout: 300)
        _ = try Waiter<Int>.poll(timeout: 300, what: "the daemon to be idle") { () -> Int? in
            guard let queue = try? client.status().queue else { return nil }
            return queue.waiting == 0 && queue.running == 0 ? 1 : nil
        }
        try client.forget()
        let status = try client.status()
        let rss = try XCTUnwrap(harness.daemon.statusKiB("RssAnon")) * 1024
        print("stress (real daemon): \(seconds) s, \(tally.sent) requests (\(tally.busy) busy), \(tally.commands) commands "
              + "(\(tally.refused) refused by the check), generation \(status.model?.generation ?? 0); idle RssAnon "
              + "\(rss / 1024) KiB with \(status.memoryBytes / 1024) KiB of weights")
        XCTAssertEqual(tally.failures, [], "nothing failed but busy requests and refused 15 MiB budgets")
        XCTAssertEqual(tally.sent, tally.answered, "every request answered")
        XCTAssertEqual(status.budgetBytes, tally.expectedBudget, "the budget of the last command (or reload) is in force")
        if let budget = status.budgetBytes, status.memoryBytes > budget {
            // Only a forget at 15 MiB, which only the user's statistics had made good (2 bits without them fail the
            // check), serves above the budget: the lowest width that passes, with no personal data.
            XCTAssertEqual(budget, 15 * mib, "the budget is met (\(status.memoryBytes) B served)")
            XCTAssertEqual(status.model?.plan, "3-bit")
        }
        XCTAssertEqual(status.statisticsSamples, 0, "no statistics after forget")
        XCTAssertEqual(status.model?.statisticsSamples, 0, "no personal model after forget")
        XCTAssertEqual(status.model?.reason, "forget")
        XCTAssertFalse(status.model?.plan.hasPrefix("personalised") ?? true)
        XCTAssertLessThanOrEqual(rss, status.memoryBytes + Self.idleOverhead,
                                 "idle anonymous memory within the served weights + \(Self.idleOverhead / mib) MiB")
        XCTAssertEqual(harness.stop(), 0)
    }
}
