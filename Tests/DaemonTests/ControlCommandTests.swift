import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// `myqasrctl` against a running daemon (capture off), and the optional Wyoming TCP listener.
final class ControlCommandTests: XCTestCase {
    /// A TCP port that was free a moment ago (bind to port 0 on loopback, read it back, close).
    private func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else { throw HarnessError("cannot find a free port: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    func testControlCommandsAndWyomingOverTCP() throws {
        let wav = try Fixtures.sample("goforward.wav")
        let port = try freePort()
        let harness = try DaemonHarness(microphone: nil, limits: "max_connections = 8",
                                        captureSection: "enabled = false\n\n[wyoming_tcp]\nenabled = true\naddress = \"127.0.0.1\"\nport = \(port)")
        let ctl = try Fixtures.binary("myqasrctl")
        let socketArgs = ["--socket", harness.controlSocket]

        var (status, out, err) = try runTool(ctl, ["status"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("model:       tiny.en"), out)
        XCTAssertTrue(out.contains("(no budget)"), out)
        XCTAssertTrue(out.contains("all 47 layers float"), out)
        XCTAssertTrue(out.contains("encoder 0  ffff"), out)
        XCTAssertTrue(out.contains("capture:     disabled"), out)
        XCTAssertTrue(out.contains("statistics:  0 utterances gathered"), out)
        XCTAssertTrue(out.contains("queue:       0 waiting of 32, 0 running; 0 utterances dropped, 0 requests refused as busy, 0 cancelled"), out)
        XCTAssertTrue(out.contains("served:      generation 1, float, because of start"), out)

        (status, out, err) = try runTool(ctl, ["budget", "24MiB"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("budget set to 24.0 MiB: tiny.en now takes 22.9 MiB at 4-bit"), out)
        XCTAssertFalse(out.contains("not met"), out)
        (status, out, _) = try runTool(ctl, ["status"] + socketArgs)
        XCTAssertTrue(out.contains("22.9 MiB of 24.0 MiB budget (met)"), out)
        XCTAssertTrue(out.contains("served:      generation 2, 4-bit, because of budget, budget from the command, self-check drift"), out)
        XCTAssertTrue(out.contains("47 layers, 47 at 4-bit"), out)
        XCTAssertTrue(out.contains("encoder 0  4444"), out)

        (status, _, err) = try runTool(ctl, ["budget", "2MiB"] + socketArgs)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("smallest reachable size of tiny.en"), err)
        XCTAssertTrue(err.contains("impossible_budget"), err)

        (status, out, err) = try runTool(ctl, ["status", "--json"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        let json = try JSONDecoder().decode([String: JSONValue].self, from: Data(out.utf8))
        XCTAssertEqual(json["budget_bytes"]?.intValue, 24 * 1024 * 1024)
        XCTAssertEqual(json["model_name"]?.stringValue, "tiny.en")
        XCTAssertEqual(json["queue"]?["depth"]?.intValue, 32)
        XCTAssertEqual(json["served_model"]?["budget_origin"]?.stringValue, "command")

        (status, out, err) = try runTool(ctl, ["transcribe", wav] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(Fixtures.normalise(out).contains("go forward"), out)

        (status, _, err) = try runTool(ctl, ["budget", "lots"] + socketArgs)
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("is not a size"), err)

        (status, out, err) = try runTool(ctl, ["budget", "none"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("no budget: tiny.en now takes 144.1 MiB at float"), out)
        (status, out, err) = try runTool(ctl, ["budget", "24MiB"] + socketArgs)
        XCTAssertEqual(status, 0, err)

        (status, out, err) = try runTool(ctl, ["reload"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        (status, out, _) = try runTool(ctl, ["status"] + socketArgs)
        XCTAssertTrue(out.contains("(no budget)"), "reload restores the file's budget: \(out)")

        (status, out, err) = try runTool(ctl, ["forget"] + socketArgs)
        XCTAssertEqual(status, 0, err)
        XCTAssertEqual(out, "forgotten\n")

        // Wyoming over TCP (loopback).
        let tcp = try WyomingTestClient(tcpPort: port)
        XCTAssertTrue(Fixtures.normalise(try tcp.transcribe(pcm16: try Fixtures.pcm16(ofWAV: wav))).contains("go forward"))
        XCTAssertEqual(harness.stop(), 0)
    }
}
