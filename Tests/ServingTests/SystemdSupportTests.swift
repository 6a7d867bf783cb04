#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TestSupport
import XCTest
@testable import Serving
import SystemdSupport

/// A Unix datagram socket standing in for systemd's notification socket.
final class NotifySocket {
    let path: String
    let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else { throw TestSocketError(description: "bind(\(path)) failed") }
        setenv("NOTIFY_SOCKET", path, 1)
    }

    deinit {
        unsetenv("NOTIFY_SOCKET")
        close(fd)
    }

    /// Waits for the next datagram.
    func receive(timeout: Double = 5) throws -> String {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) == 1 else { throw TestSocketError(description: "no notification") }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw TestSocketError(description: "recv failed") }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }
}

final class SystemdSupportTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws { directory = try makeTemporaryDirectory() }
    override func tearDown() { removeDirectory(directory) }

    func testNotificationsReachTheNotifySocket() throws {
        let notify = try NotifySocket(path: directory + "/notify")
        XCTAssertTrue(try SystemdNotifier.ready(status: "Listening on\nwyoming.sock"))
        XCTAssertEqual(try notify.receive(), "READY=1\nSTATUS=Listening on wyoming.sock")
        XCTAssertTrue(try SystemdNotifier.status("Transcribing"))
        XCTAssertEqual(try notify.receive(), "STATUS=Transcribing")

        let before = SystemdNotifier.monotonicMicroseconds()
        XCTAssertTrue(try SystemdNotifier.reloading())
        let after = SystemdNotifier.monotonicMicroseconds()
        let lines = try notify.receive().split(separator: "\n")
        XCTAssertEqual(lines.first, "RELOADING=1")
        let usec = try XCTUnwrap(lines.first { $0.hasPrefix("MONOTONIC_USEC=") }.flatMap { UInt64($0.dropFirst(15)) })
        XCTAssertGreaterThanOrEqual(usec, before)
        XCTAssertLessThanOrEqual(usec, after)

        XCTAssertTrue(try SystemdNotifier.stopping())
        XCTAssertEqual(try notify.receive(), "STOPPING=1")
        XCTAssertTrue(try SystemdNotifier.watchdog())
        XCTAssertEqual(try notify.receive(), "WATCHDOG=1")
    }

    func testNotifyWithoutServiceManagerIsANoOp() throws {
        unsetenv("NOTIFY_SOCKET")
        XCTAssertFalse(try SystemdNotifier.ready())
    }

    func testWatchdogIntervalAndPinger() throws {
        let notify = try NotifySocket(path: directory + "/notify")
        XCTAssertNil(try SystemdNotifier.watchdogInterval())
        setenv("WATCHDOG_USEC", "200000", 1)
        setenv("WATCHDOG_PID", "\(getpid())", 1)
        defer { unsetenv("WATCHDOG_USEC"); unsetenv("WATCHDOG_PID") }
        XCTAssertEqual(try SystemdNotifier.watchdogInterval(), .milliseconds(200))
        setenv("WATCHDOG_PID", "1", 1)  // meant for another process
        XCTAssertNil(try SystemdNotifier.watchdogInterval())
        setenv("WATCHDOG_PID", "\(getpid())", 1)

        let pinger = try XCTUnwrap(try WatchdogPinger.fromEnvironment())
        XCTAssertEqual(pinger.pingInterval, .milliseconds(100))
        pinger.start()
        XCTAssertEqual(try notify.receive(), "WATCHDOG=1")
        XCTAssertEqual(try notify.receive(), "WATCHDOG=1")
        pinger.stop()
    }

    /// Socket activation end to end: `systemd-socket-activate` binds the socket, and on the first connection
    /// execs this test bundle (running only `testActivatedChild`) with the socket at fd 3 and
    /// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set, exactly as systemd would. (Doing it in this process would mean
    /// overwriting whatever fd 3 already is, such as libdispatch's epoll descriptor.)
    func testSocketActivationHandsAListenerToTheServer() async throws {
        guard let activator = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate", "/lib/systemd/systemd-socket-activate"]
            .first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else { throw Fixtures.missing("systemd-socket-activate is not installed: run scripts/setup") }
        let bundle = ProcessInfo.processInfo.arguments[0]
        let path = directory + "/wyoming.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: activator)
        process.arguments = ["-l", path, "--fdname=wyoming", "-E", "MYQASR_ACTIVATION_CHILD=1",
                             bundle, "ServingTests.SystemdSupportTests/testActivatedChild"]
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        // Wait until the activator listens ("Listening on PATH as 3.").
        let listening = try await onThread { () -> Bool in
            var seen = Data()
            while true {
                let chunk = stderr.fileHandleForReading.availableData
                if chunk.isEmpty { return false }
                seen += chunk
                if String(decoding: seen, as: UTF8.self).contains("Listening on") { return true }
            }
        }
        XCTAssertTrue(listening)
        let events = try await onThread { () -> [WyomingEvent] in
            let client = try RawClient(unixPath: path)  // this connection makes the activator exec the child
            client.timeout = 60
            try client.send(WyomingEvent(type: "describe"))
            var events = [try client.readEvent()].compactMap { $0 }
            try client.send(WyomingEvent(type: "audio-start", data: ["rate": 16000, "width": 2, "channels": 1]))
            try client.send(WyomingEvent(type: "audio-chunk", data: ["rate": 16000, "width": 2, "channels": 1],
                                         payload: [UInt8](repeating: 0, count: 640)))
            try client.send(WyomingEvent(type: "audio-stop"))
            while let event = try client.readEvent() { events.append(event) }  // until the child shuts down
            return events
        }
        let output = try await onThread { () -> String in
            let data = stdout.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return String(decoding: data, as: UTF8.self)
        }
        XCTAssertEqual(events.map(\.type), ["info", "transcript-start", "transcript-chunk", "transcript", "transcript-stop"])
        XCTAssertEqual(events.first { $0.type == "transcript" }?.data["text"], "gated 320")
        XCTAssertTrue(output.contains("ACTIVATION-CHILD-OK fd=3 name=wyoming unix-stream-listener=true"), output)
        XCTAssertEqual(process.terminationStatus, 0, output)
    }

    /// The socket-activated side of `testSocketActivationHandsAListenerToTheServer`; skipped when run directly.
    func testActivatedChild() async throws {
        guard ProcessInfo.processInfo.environment["MYQASR_ACTIVATION_CHILD"] == "1" else {
            throw XCTSkip("runs only as the socket-activated child of testSocketActivationHandsAListenerToTheServer")
        }
        let sockets = try SocketActivation.sockets()
        XCTAssertNil(getenv("LISTEN_FDS"), "environment not unset")
        let activated = try SocketActivation.socket(named: "wyoming", in: sockets)
        XCTAssertThrowsError(try SocketActivation.socket(named: "control", in: sockets)) { error in
            XCTAssertEqual(error as? SocketActivationError, .notFound(name: "control", available: ["wyoming"]))
        }
        let backend = GatedTranscriber()
        backend.open()
        let server = WyomingServer(endpoints: [.fileDescriptor(activated.fileDescriptor)], backend: backend)
        try await server.start()
        var started = backend.started.makeAsyncIterator()
        _ = await started.next()
        await server.shutdown()  // graceful: the transcript in progress is still delivered
        print("ACTIVATION-CHILD-OK fd=\(activated.fileDescriptor) name=\(activated.name) unix-stream-listener=\(activated.isUnixStreamListener)")
    }

    func testNotActivatedMeansNoSockets() throws {
        unsetenv("LISTEN_FDS")
        XCTAssertEqual(try SocketActivation.sockets(), [])
    }
}
