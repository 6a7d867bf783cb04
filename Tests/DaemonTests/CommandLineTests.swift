import Foundation
#if canImport(Glibc)
import Glibc
#endif
import WhisperEngine
import XCTest

/// Runs a built binary and returns (exit status, stdout, stderr).
func runTool(_ binary: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (Int32, String, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

final class CommandLineTests: XCTestCase {
    func testControlHelpListsEverySubcommand() throws {
        let (status, out, _) = try runTool(try Fixtures.binary("myqasrctl"), ["--help"])
        XCTAssertEqual(status, 0)
        for command in ["status", "budget", "reload", "listen", "transcribe", "forget"] {
            XCTAssertTrue(out.contains("  \(command) "), "help lacks \(command):\n\(out)")
        }
        let (_, statusHelp, _) = try runTool(try Fixtures.binary("myqasrctl"), ["status", "--help"])
        XCTAssertTrue(statusHelp.contains("--json") && statusHelp.contains("--socket"), statusHelp)
    }

    func testDaemonHelpListsTheMainFlags() throws {
        let (status, out, _) = try runTool(try Fixtures.binary("myqasrd"), ["--help"])
        XCTAssertEqual(status, 0)
        for flag in ["--config", "--model", "--threads", "--budget", "--device", "--no-capture", "--runtime-directory", "--log-level"] {
            XCTAssertTrue(out.contains(flag), "help lacks \(flag)")
        }
    }

    func testNoDaemonGivesAClearMessage() throws {
        let dir = try ScratchDirectory()
        let (status, _, err) = try runTool(try Fixtures.binary("myqasrctl"), ["status", "--socket", dir.sub("control.sock")])
        XCTAssertEqual(status, 69)
        XCTAssertTrue(err.contains("no control socket at \(dir.sub("control.sock"))"), err)
        XCTAssertTrue(err.contains("is myqasrd running?"), err)
        // A socket file nobody listens on (a daemon that died).
        let stale = dir.sub("stale.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(stale.utf8)) }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        let (staleStatus, _, staleErr) = try runTool(try Fixtures.binary("myqasrctl"), ["status", "--socket", stale])
        XCTAssertEqual(staleStatus, 69)
        XCTAssertTrue(staleErr.contains("not running"), staleErr)
    }

    /// A user without access to the socket gets "permission denied" (run as nobody with setpriv when root).
    func testPermissionDeniedIsExplained() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to run the client as another user") }
        let setpriv = try Fixtures.tool("setpriv")
        let dir = try ScratchDirectory()
        chmod(dir.path, 0o755)
        let path = dir.sub("control.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        listen(fd, 4)
        chmod(path, 0o660)
        // The binary must be reachable by nobody: copy it next to the socket.
        let binary = dir.sub("myqasrctl")
        try FileManager.default.copyItem(atPath: try Fixtures.binary("myqasrctl"), toPath: binary)
        chmod(binary, 0o755)
        let (status, _, err) = try runTool(setpriv, [
            "--reuid=65534", "--regid=65534", "--clear-groups", binary, "status", "--socket", path,
        ])
        XCTAssertEqual(status, 77, err)
        XCTAssertTrue(err.contains("permission denied on \(path)"), err)
    }

    func testDaemonRejectsABadConfigurationWithStatus78() throws {
        let dir = try ScratchDirectory()
        let path = dir.sub("bad.toml")
        try "[limits]\nqueue_depth = -1\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (status, _, err) = try runTool(try Fixtures.binary("myqasrd"), ["--config", path, "--check-config"])
        XCTAssertEqual(status, 78)
        XCTAssertTrue(err.contains("key limits.queue_depth"), err)
        XCTAssertTrue(err.contains("out of range"), err)
        let (ok, out, _) = try runTool(try Fixtures.binary("myqasrd"), ["--config", path.replacingOccurrences(of: "bad.toml", with: "none.toml"), "--check-config"])
        XCTAssertEqual(ok, 78, out)
    }

    /// The daemon runs the OpenBLAS kernels this CPU can run, where OpenBLAS itself fell back to SSE3 ones
    /// (`OpenBLASCore.chooseForThisCPU` runs it again with `OPENBLAS_CORETYPE`), and a kernel set the user named
    /// is left as it is.
    func testDaemonRunsTheOpenBLASKernelsOfThisCPU() throws {
        var environment = ProcessInfo.processInfo.environment
        environment["OPENBLAS_CORETYPE"] = nil
        let model = try Fixtures.tinyModel()
        let (status, out, err) = try runTool(try Fixtures.binary("myqasrd"), ["--model", model, "--check-config"],
                                             environment: environment)
        XCTAssertEqual(status, 0, out + err)
        let expected = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil
            ? OpenBLASCore.replacement ?? OpenBLASCore.name : nil
        if let expected { XCTAssertTrue(out.contains("openblas kernels \(expected)\n"), out) }
        environment["OPENBLAS_CORETYPE"] = "Prescott"
        let (named, namedOut, namedErr) = try runTool(try Fixtures.binary("myqasrd"), ["--model", model, "--check-config"],
                                                      environment: environment)
        XCTAssertEqual(named, 0, namedOut + namedErr)
        XCTAssertTrue(namedOut.contains("openblas kernels Prescott\n"), namedOut)
    }

    /// `--check-config` runs start-up's own checks of the model and the budget (issue 17 item 8): a budget no precision meets is
    /// refused there with start-up's status (78) and message, not reported valid.
    func testCheckConfigRefusesWhatStartUpRefuses() throws {
        let model = try Fixtures.tinyModel()
        let dir = try ScratchDirectory()
        let path = dir.sub("small.toml")
        try "[model]\nname = \"\(model)\"\nmemory_budget = \"2MiB\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (status, out, err) = try runTool(try Fixtures.binary("myqasrd"), ["--config", path, "--check-config"])
        XCTAssertEqual(status, 78, out + err)
        XCTAssertTrue(err.contains("model.memory_budget"), err)
        XCTAssertTrue(err.contains("the smallest reachable size of tiny.en, with every layer at 2 bits, is 14.1 MiB"), err)
        XCTAssertFalse(out.contains("is valid"), out)
        // A budget that can be met passes, as it starts.
        try "[model]\nname = \"\(model)\"\nmemory_budget = \"24MiB\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (okStatus, okOut, okErr) = try runTool(try Fixtures.binary("myqasrd"), ["--config", path, "--check-config"])
        XCTAssertEqual(okStatus, 0, okOut + okErr)
        XCTAssertTrue(okOut.contains("is valid"), okOut)
        // A budget whose model fails the self-check (15 MiB: mostly 2 bits, which decode nothing) stops start-up
        // with 78, and --check-config says so with the same status and reason (it judged only the size before).
        try "[model]\nname = \"\(model)\"\nmemory_budget = \"15MiB\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (checked, checkedOut, checkedErr) = try runTool(try Fixtures.binary("myqasrd"), ["--config", path, "--check-config"])
        let (started, _, startErr) = try runTool(try Fixtures.binary("myqasrd"), [
            "--config", path, "--no-capture", "--runtime-directory", dir.sub("run"), "--state-directory", dir.sub("state"),
        ])
        XCTAssertEqual(started, 78, startErr)
        XCTAssertTrue(startErr.contains("failed its self-check"), startErr)
        XCTAssertEqual(checked, 78, checkedOut + checkedErr)
        XCTAssertTrue(checkedErr.contains("model.memory_budget"), checkedErr)
        XCTAssertTrue(checkedErr.contains("failed its self-check"), checkedErr)
        XCTAssertFalse(checkedOut.contains("is valid"), checkedOut)
        // A model that cannot be loaded fails as start-up does (status 1).
        try "[model]\nname = \"\(dir.sub("no-such-model"))\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (missing, _, missingErr) = try runTool(try Fixtures.binary("myqasrd"), ["--config", path, "--check-config"])
        XCTAssertEqual(missing, 1, missingErr)
        XCTAssertTrue(missingErr.contains("cannot load model"), missingErr)
    }

    /// A budget no precision meets stops start-up as a configuration error (78: systemd does not restart it),
    /// naming the smallest reachable size.
    func testDaemonWithAnImpossibleBudgetExits78() throws {
        let model = try Fixtures.tinyModel()
        let dir = try ScratchDirectory()
        let path = dir.sub("small.toml")
        try "[model]\nmemory_budget = \"2MiB\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let (status, _, err) = try runTool(try Fixtures.binary("myqasrd"), [
            "--config", path, "--model", model, "--no-capture",
            "--runtime-directory", dir.sub("run"), "--state-directory", dir.sub("state"),
        ])
        XCTAssertEqual(status, 78, err)
        XCTAssertTrue(err.contains("model.memory_budget"), err)
        XCTAssertTrue(err.contains("the smallest reachable size of tiny.en, with every layer at 2 bits, is 14.1 MiB"), err)
    }
}
