import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// 20 concurrent Wyoming clients on the Unix socket for several rounds: no failed request, and memory that
/// stays bounded. Bounded in time; run alone with `--filter DaemonTests.LoadTests`.
///
/// Memory is judged on what the code controls, never on one RSS sample (on a busy machine RSS moves by tens
/// of MB between rounds for reasons outside the daemon):
/// - after every round the daemon's own accounting of client memory (`status` `client_buffers.used_bytes`) is
///   back to zero: nothing a request buffered is kept;
/// - the kernel's record of the peak resident size (`VmHWM`, exact, not sampled) stays under the weights plus
///   the client memory peak plus a generous constant.
final class LoadTests: XCTestCase {
    /// Room above the weights and the charged client memory, MiB (measured about 110-160 MiB).
    static let constantMiB = 320

    func testTwentyConcurrentWyomingClientsBoundedMemory() throws {
        let clip = try Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav"))
        let harness = try DaemonHarness(microphone: nil, limits: "queue_depth = 64")
        let clients = 20
        let rounds = 5
        var roundSeconds: [Double] = []
        var rss: [Int] = []
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
            // Every client has its answer, so everything its request buffered has been given back.
            let buffers = try XCTUnwrap(try harness.client().status().clientBuffers)
            XCTAssertEqual(buffers.usedBytes, 0, "round \(round): client memory still charged after every answer")
            rss.append(harness.daemon.residentKiB() ?? 0)
            XCTAssertLessThan(Date().timeIntervalSince(started), 900, "load test time bound")
        }
        let status = try harness.client().status()
        XCTAssertEqual(status.captureState, .disabled)
        let buffers = try XCTUnwrap(status.clientBuffers)
        let peak = try XCTUnwrap(harness.daemon.statusKiB("VmHWM")) >> 10
        let bound = status.memoryBytes >> 20 + buffers.peakBytes >> 20 + Self.constantMiB
        XCTAssertEqual(harness.stop(), 0)
        print("load: \(clients) clients x \(rounds) rounds, clip \(clip.count / 32000) s; round times \(roundSeconds.map { String(format: "%.1f s", $0) }); RSS KiB after each round \(rss) (for information); peak RSS \(peak) MiB, bound \(bound) MiB (weights \(status.memoryBytes >> 20) MiB + client memory peak \(buffers.peakBytes >> 20) MiB + \(Self.constantMiB) MiB)")
        XCTAssertLessThan(peak, bound)
    }
}
