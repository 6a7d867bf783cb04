#if canImport(Glibc)
import Glibc
#endif
import Foundation
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

    func testSocketActivationHandsAListenerToTheServer() async throws {
        let path = directory + "/wyoming.sock"
        let listener = try bindUnixSocket(path, listen: true)
        // Put it at fd 3 as systemd would; keep whatever the test process had there.
        let saved = fcntl(3, F_GETFD) >= 0 ? dup(3) : -1
        XCTAssertEqual(dup2(listener, 3), 3)
        close(listener)
        XCTAssertEqual(fcntl(3, F_SETFD, 0), 0)  // clear FD_CLOEXEC
        setenv("LISTEN_FDS", "1", 1)
        setenv("LISTEN_PID", "\(getpid())", 1)
        setenv("LISTEN_FDNAMES", "wyoming", 1)
        defer {
            if saved >= 0 { dup2(saved, 3); close(saved) }
        }

        let sockets = try SocketActivation.sockets()
        XCTAssertNil(getenv("LISTEN_FDS"), "environment not unset")
        XCTAssertEqual(sockets, [ActivatedSocket(fileDescriptor: 3, name: "wyoming", isUnixStreamListener: true, isStreamListener: true)])
        let activated = try SocketActivation.socket(named: "wyoming", in: sockets)
        XCTAssertThrowsError(try SocketActivation.socket(named: "control", in: sockets)) { error in
            XCTAssertEqual(error as? SocketActivationError, .notFound(name: "control", available: ["wyoming"]))
        }

        let server = WyomingServer(endpoints: [.fileDescriptor(activated.fileDescriptor)], backend: CannedTranscriber())
        try await server.start()
        let info = try await onThread {
            let client = try RawClient(unixPath: path)
            try client.send(WyomingEvent(type: "describe"))
            return try client.readEvent()
        }
        await server.shutdown()
        XCTAssertEqual(info?.type, "info")
    }

    func testNotActivatedMeansNoSockets() throws {
        unsetenv("LISTEN_FDS")
        XCTAssertEqual(try SocketActivation.sockets(), [])
    }
}
