import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

final class SystemdUnitTests: XCTestCase {
    private var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// `systemd-analyze verify` accepts both units (ExecStart pointed at the built binary, which verify
    /// requires to exist), and the security report is produced.
    func testUnitsVerify() throws {
        let analyze = try Fixtures.tool("systemd-analyze")
        let dir = try ScratchDirectory()
        let service = try String(contentsOfFile: repositoryRoot + "/systemd/myqasrd.service", encoding: .utf8)
        XCTAssertTrue(service.contains("ExecStart=/usr/local/bin/myqasrd"))
        // Privacy: nothing of the service reaches swap or a core file.
        XCTAssertTrue(service.contains("\nMemorySwapMax=0\n"), "the unit must keep the service out of swap")
        XCTAssertTrue(service.contains("\nLimitCORE=0\n"), "the unit must forbid core dumps")
        try service.replacingOccurrences(of: "/usr/local/bin/myqasrd", with: try Fixtures.binary("myqasrd"))
            .write(toFile: dir.sub("myqasrd.service"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: repositoryRoot + "/systemd/myqasrd.socket", toPath: dir.sub("myqasrd.socket"))
        let (status, out, err) = try runTool(analyze, ["verify", dir.sub("myqasrd.service"), dir.sub("myqasrd.socket")])
        XCTAssertEqual(status, 0, out + err)
        XCTAssertEqual(err.trimmingCharacters(in: .whitespacesAndNewlines), "", "verify warnings: \(err)")

        let (_, security, securityErr) = try runTool(analyze, ["security", "--offline=true", dir.sub("myqasrd.service")])
        let overall = (security + securityErr).components(separatedBy: "\n").first { $0.contains("Overall exposure level") }
        XCTAssertNotNil(overall, security + securityErr)
        print("systemd-analyze security: \(overall ?? "?")")
        if let overall, let score = Double(overall.split(separator: " ").compactMap({ Double($0) }).first ?? 99) as Double? {
            XCTAssertLessThan(score, 3.0, "exposure should stay low: \(overall)")
        }
    }

    /// The daemon serves sockets passed by systemd (socket activation through systemd-socket-activate, with the
    /// one FileDescriptorName= a single .socket unit gives all its sockets), and a client that connected before
    /// the model was loaded is answered.
    func testSocketActivation() throws {
        let activate = try Fixtures.tool("systemd-socket-activate")
        let model = try Fixtures.tinyModel()
        let wav = try Fixtures.sample("goforward.wav")
        let dir = try ScratchDirectory()
        let runDir = dir.sub("run")
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        let notify = try NotifyListener(path: dir.sub("notify.sock"))
        defer { notify.close() }
        let daemon = try DaemonProcess(
            binary: activate,
            arguments: ["-l", runDir + "/control.sock", "-l", runDir + "/wyoming.sock", "--fdname=myqasr:myqasr",
                        "-E", "NOTIFY_SOCKET=\(notify.path)",
                        try Fixtures.binary("myqasrd"), "--no-capture", "--model", model,
                        "--runtime-directory", runDir, "--state-directory", dir.sub("state")],
            environment: ["PATH": "/usr/bin:/bin", "HOME": dir.path], workingDirectory: dir.path,
            stderrPath: dir.sub("stderr.log"))
        _ = try daemon.waitForLog(timeout: 30, what: "listening") { $0.contains("Listening on \(runDir)/wyoming.sock") ? true : nil }
        // Connecting starts the daemon; the request waits in the socket's backlog until it is ready.
        let client = try ControlClient(socketPath: runDir + "/control.sock", timeout: 120)
        let result = try client.transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: wav)))
        XCTAssertTrue(Fixtures.normalise(result.text).contains("forward"), result.text)
        try notify.waitFor(["READY=1"])
        XCTAssertTrue(daemon.stderrText.contains("using 2 socket(s) from systemd"), daemon.stderrText)
        let wyoming = try WyomingTestClient(unixPath: runDir + "/wyoming.sock")
        XCTAssertTrue(Fixtures.normalise(try wyoming.transcribe(pcm16: try Fixtures.pcm16(ofWAV: wav))).contains("forward"))
        daemon.signal(SIGTERM)
        XCTAssertEqual(daemon.waitForExit(timeout: 30), 0, daemon.stderrText.suffix(2000).description)
    }
}
