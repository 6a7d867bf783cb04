import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// 20 concurrent Wyoming clients on the Unix socket, several rounds: no failed request, flat memory.
/// Bounded in time (a few minutes in a debug build); run alone with `--filter DaemonTests.LoadTests`.
final class LoadTests: XCTestCase {
    func testTwentyConcurrentWyomingClientsFlatMemory() throws {
        let clip = try Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav"))
        let harness = try DaemonHarness(microphone: nil, limits: "queue_depth = 64")
        let clients = 20
        let rounds = 4
        var rss: [Int] = []
        var roundSeconds: [Double] = []
        let started = Date()
        for round in 0..<rounds {
            let failures = Waiter<String>()
            let texts = Waiter<String>()
            let begin = Date()
            DispatchQueue.concurrentPerform(iterations: clients) { index in
                do {
                    let client = try WyomingTestClient(unixPath: harness.wyomingSocket)
                    client.timeout = 300
                    texts.append(try client.transcribe(pcm16: clip))
                } catch {
                    failures.append("client \(index): \(error)")
                }
            }
            roundSeconds.append(Date().timeIntervalSince(begin))
            XCTAssertEqual(failures.all, [], "round \(round)")
            XCTAssertEqual(texts.all.count, clients)
            for text in texts.all {
                XCTAssertTrue(Fixtures.normalise(text).contains("forward"), "transcript: \(text)")
            }
            rss.append(harness.daemon.residentKiB() ?? 0)
            XCTAssertLessThan(Date().timeIntervalSince(started), 900, "load test time bound")
        }
        let status = try harness.client().status()
        XCTAssertEqual(status.captureState, .disabled)
        XCTAssertEqual(harness.stop(), 0)
        print("load: \(clients) clients x \(rounds) rounds, clip \(clip.count / 32000) s; round times \(roundSeconds.map { String(format: "%.1f s", $0) }); RSS KiB after each round \(rss)")
        // Flat: after the first round (allocator and caches warmed up) RSS may not keep growing.
        let growth = rss.last! - rss[1]
        XCTAssertLessThan(growth, 32 * 1024, "RSS grew by \(growth) KiB between round 2 and round \(rounds): \(rss)")
    }
}
