#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@testable import Serving

final class ControlServerTests: XCTestCase {
    var directory = ""
    var socketPath: String { directory + "/control.sock" }

    override func setUpWithError() throws { directory = try makeTemporaryDirectory() }
    override func tearDown() { removeDirectory(directory) }

    private func startServer(
        control: ControlBackend = TestControlBackend(), transcriber: TranscriptionBackend = CannedTranscriber(),
        configuration: ControlServerConfiguration = ControlServerConfiguration()
    ) async throws -> ControlServer {
        let server = ControlServer(endpoints: [.unix(path: socketPath)], control: control, transcription: transcriber,
                                   configuration: configuration)
        try await server.start()
        return server
    }

    func testStatusBudgetReloadForgetThroughClient() async throws {
        let backend = TestControlBackend()
        let server = try await startServer(control: backend)
        let (status, budgetError) = try await onThread { [socketPath] () -> (DaemonStatus, ControlClientError?) in
            let client = try ControlClient(socketPath: socketPath, timeout: 10)
            try client.setBudget(bytes: 50_000_000)
            var budgetError: ControlClientError?
            do { try client.setBudget(bytes: 10) } catch let e as ControlClientError { budgetError = e }
            try client.reload()
            try client.forget()
            return (try client.status(), budgetError)
        }
        await server.shutdown()
        XCTAssertEqual(status.modelName, "whisper-tiny.en")
        XCTAssertEqual(status.layerBits, ["encoder.blocks.0.fc1": 4])
        XCTAssertEqual(status.budgetBytes, 50_000_000)
        XCTAssertEqual(status.captureState, .capturing)
        XCTAssertEqual(status.lastRequantization, Date(timeIntervalSince1970: 1_700_000_000))
        XCTAssertEqual(budgetError, .daemon(code: "impossible_budget", message: "budget 10 B is below the 1 MB minimum"))
        XCTAssertEqual(backend.reloads, 1)
        XCTAssertEqual(backend.forgets, 1)
    }

    func testWireFormatOfResponsesAndErrors() async throws {
        let server = try await startServer()
        let lines = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send("{\"id\":7,\"command\":\"status\"}\n")
            try client.send("not json\n")
            try client.send("{\"id\":\"a\",\"command\":\"dance\"}\n")
            try client.send("{\"id\":8,\"command\":\"budget\"}\n")
            try client.send("{\"id\":9,\"command\":\"reload\"}\n")
            return try (0..<5).map { _ in try client.readJSONLine() }
        }
        await server.shutdown()
        XCTAssertEqual(lines[0]?["id"], 7)
        XCTAssertEqual(lines[0]?["ok"], true)
        XCTAssertEqual(lines[0]?["result"]?["model_name"], "whisper-tiny.en")
        XCTAssertEqual(lines[0]?["result"]?["capture_state"], "capturing")
        XCTAssertEqual(lines[1]?["ok"], false)
        XCTAssertEqual(lines[1]?["id"], .null)
        XCTAssertEqual(lines[1]?["error"]?["code"], "bad_request")
        XCTAssertEqual(lines[2]?["id"], "a")
        XCTAssertEqual(lines[2]?["error"]?["code"], "unknown_command")
        XCTAssertEqual(lines[3]?["error"]?["code"], "bad_request")
        XCTAssertEqual(lines[4]?["id"], 9)
        XCTAssertEqual(lines[4]?["ok"], true)
    }

    func testTranscribeRawAndWav() async throws {
        let transcriber = CannedTranscriber()
        let server = try await startServer(transcriber: transcriber)
        let pcm = Data(sinePCM16(frequency: 300, rate: 8000, seconds: 0.5))
        let wav = wavFile(data: sinePCM16(frequency: 300, rate: 16000, seconds: 0.05), rate: 16000, channels: 1, bits: 16)
        let results = try await onThread { [socketPath] () -> [Result<TranscriptResult, ControlClientError>] in
            let client = try ControlClient(socketPath: socketPath)
            func attempt(_ body: () throws -> TranscriptResult) -> Result<TranscriptResult, ControlClientError> {
                do { return .success(try body()) } catch { return .failure(error as! ControlClientError) }
            }
            return [
                attempt { try client.transcribe(s16le: pcm, rate: 8000, language: "en") },
                attempt { try client.transcribe(wav: Data(wav)) },
                attempt { try client.transcribe(wav: Data("garbage".utf8)) },
            ]
        }
        await server.shutdown()
        XCTAssertEqual(try results[0].get().text, "hello world 8000")  // 0.5 s at 8 kHz resampled to 16 kHz
        XCTAssertEqual(try results[0].get().segments.count, 2)
        XCTAssertEqual(transcriber.calls.first?.language, "en")
        XCTAssertEqual(try results[1].get().text, "hello world 800")
        // The WAV's samples arrive exactly (16 kHz: no resampling).
        let expected = Float(Int16(0.5 * 32767 * sin(2 * Double.pi * 300 * 7 / 16000))) / 32768
        XCTAssertEqual(transcriber.calls[1].samples[7], expected, accuracy: 1e-6)
        guard case .failure(.daemon(let code, _)) = results[2] else { return XCTFail("garbage WAV accepted") }
        XCTAssertEqual(code, "bad_audio")
    }

    func testOversizedRequestLineIsRefused() async throws {
        var configuration = ControlServerConfiguration()
        configuration.maxRequestBytes = 1000
        let server = try await startServer(configuration: configuration)
        let (line, closed) = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send("{\"id\":1,\"command\":\"transcribe\",\"audio\":\"" + String(repeating: "A", count: 2000))
            return (try client.readJSONLine(), try client.waitForEndOfStream())
        }
        await server.shutdown()
        XCTAssertEqual(line?["error"]?["code"], "request_too_large")
        XCTAssertTrue(closed)
    }

    func testListenReceivesPushedTranscripts() async throws {
        let backend = TestControlBackend()
        let server = try await startServer(control: backend)
        let client = try RawClient(unixPath: socketPath)
        try client.send("{\"id\":1,\"command\":\"listen\"}\n")
        let ack = try await onThread { try client.readJSONLine() }
        XCTAssertEqual(ack?["result"]?["listening"], true)
        for i in 0..<5 { backend.publish(LiveTranscript(text: "utterance \(i)", start: Double(i), end: Double(i) + 0.5, language: "en")) }
        let events = try await onThread { try (0..<5).map { _ in try client.readJSONLine() } }
        XCTAssertEqual(events.map { $0?["text"]?.stringValue }, (0..<5).map { "utterance \($0)" })
        XCTAssertEqual(events[2]?["event"], "transcript")
        XCTAssertEqual(events[2]?["start"], 2)
        XCTAssertEqual(events[2]?["end"], 2.5)
        client.close()
        await server.shutdown()
    }

    func testControlClientListen() async throws {
        let backend = TestControlBackend()
        let server = try await startServer(control: backend)
        let received = Locked<[String]>([])
        let listening = Task {
            try await onThread { [socketPath] in
                let client = try ControlClient(socketPath: socketPath)
                try client.listen { transcript in
                    received.withLockedValue { $0.append(transcript.text) }
                    return transcript.text != "last"
                }
            }
        }
        // Wait for the subscription to exist (a real event: the backend's listener count), then publish.
        while backend.listenerCount == 0 { await Task.yield() }
        backend.publish(LiveTranscript(text: "first", start: 0, end: 1))
        backend.publish(LiveTranscript(text: "last", start: 1, end: 2))
        try await listening.value
        XCTAssertEqual(received.withLockedValue { $0 }, ["first", "last"])
        await server.shutdown()
    }

    func testStalledListenerIsDroppedAndDoesNotBlockOthers() async throws {
        let backend = TestControlBackend()
        var configuration = ControlServerConfiguration()
        configuration.connection.maxQueuedOutboundBytes = 64 * 1024
        // Long enough that the reader, whose channel also goes unwritable between its reads, is never dropped
        // because its thread was not scheduled for a while (a busy machine, a ThreadSanitizer build).
        configuration.listenStallTimeout = .seconds(3)
        let server = try await startServer(control: backend, configuration: configuration)
        let stalled = try RawClient(unixPath: socketPath)
        let reader = try RawClient(unixPath: socketPath)
        try stalled.send("{\"id\":1,\"command\":\"listen\"}\n")
        try reader.send("{\"id\":1,\"command\":\"listen\"}\n")
        _ = try await onThread { try stalled.readJSONLine() }
        _ = try await onThread { try reader.readJSONLine() }
        XCTAssertEqual(backend.listenerCount, 2)

        let count = 400
        let text = String(repeating: "x", count: 8 * 1024)  // 400 x 8 KiB = 3.2 MiB, far above socket buffers
        let readAll = Task {
            try await onThread { () -> Int in
                var n = 0
                while n < count, let line = try reader.readJSONLine() {
                    if line["event"] == "transcript" { n += 1 }
                }
                return n
            }
        }
        let started = Date()
        for i in 0..<count { backend.publish(LiveTranscript(text: text, start: Double(i), end: Double(i) + 1)) }
        let readCount = try await readAll.value
        print("reader received \(readCount) x 8 KiB while another listener stalled: \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
        XCTAssertEqual(readCount, count)
        // The stalled client is dropped once it has been unwritable for the stall timeout: its subscription
        // ends while it still has not read anything.
        var ended = backend.listenerEnded.makeAsyncIterator()
        _ = await ended.next()
        XCTAssertEqual(backend.listenerCount, 1)
        // It then finds what was buffered for it (far fewer than all events) followed by end of stream.
        let stalledLines = try await onThread { () -> Int in
            var lines = 0
            while let line = try stalled.readLine() { if !line.isEmpty { lines += 1 } }
            return lines
        }
        print("stalled listener got \(stalledLines) of \(count) events before being dropped")
        XCTAssertLessThan(stalledLines, count / 2)
        reader.close()
        await server.shutdown()
    }

    func testClientErrorsAreSpecific() async throws {
        // No socket file.
        XCTAssertThrowsError(try ControlClient(socketPath: directory + "/missing.sock")) { error in
            XCTAssertEqual(error as? ControlClientError, .socketNotFound(path: directory + "/missing.sock"))
        }
        // A stale socket file with nobody listening.
        let stale = directory + "/stale.sock"
        let fd = try bindUnixSocket(stale, listen: false)
        Glibc.close(fd)
        XCTAssertThrowsError(try ControlClient(socketPath: stale)) { error in
            XCTAssertEqual(error as? ControlClientError, .daemonNotRunning(path: stale))
        }
        // A listener that never answers.
        let silent = directory + "/silent.sock"
        let silentFD = try bindUnixSocket(silent, listen: true)
        defer { Glibc.close(silentFD) }
        let client = try ControlClient(socketPath: silent, timeout: 0.3)
        XCTAssertThrowsError(try client.status()) { error in
            XCTAssertEqual(error as? ControlClientError, .timedOut(seconds: 0.3))
        }
    }

    func testPeerPolicyRefusesUnlistedUser() async throws {
        // The real SO_PEERCRED of this process, against a policy that does not include its uid.
        var configuration = ControlServerConfiguration()
        configuration.connection.peerPolicy = PeerPolicy(allowedUIDs: [getuid() &+ 12345], trustRootAndSelf: false)
        let server = try await startServer(configuration: configuration)
        let error = await Task.detached { [socketPath] () -> ControlClientError? in
            do {
                let client = try ControlClient(socketPath: socketPath)
                _ = try client.status()
                return nil
            } catch { return error as? ControlClientError }
        }.value
        await server.shutdown()
        guard case .permissionDenied(_, let detail)? = error else { return XCTFail("not refused: \(String(describing: error))") }
        XCTAssertTrue(detail.contains("user id \(getuid())"), detail)
    }

    func testPeerPolicyAllowsListedUserAndGroup() async throws {
        for policy in [PeerPolicy(allowedUIDs: [getuid()], trustRootAndSelf: false),
                       PeerPolicy(allowedGroup: getgid(), trustRootAndSelf: false)] {
            var configuration = ControlServerConfiguration()
            configuration.connection.peerPolicy = policy
            let server = try await startServer(configuration: configuration)
            let status = try await onThread { [socketPath] in try ControlClient(socketPath: socketPath).status() }
            await server.shutdown()
            XCTAssertEqual(status.modelName, "whisper-tiny.en")
        }
        let me = try PeerCredentials.of(socket: try bindUnixSocketPair())
        XCTAssertEqual(me.uid, getuid())
        XCTAssertEqual(me.pid, getpid())
        XCTAssertEqual(me.gid, getegid())
        // The supplementary groups come from the kernel (SO_PEERGROUPS), as getgroups(2) gives them here.
        var count = getgroups(0, nil)
        var mine = [gid_t](repeating: 0, count: Int(max(count, 0)))
        count = getgroups(count, &mine)
        XCTAssertEqual(Set(me.groups), Set(mine.prefix(Int(max(count, 0))).filter { $0 != 0 }))
    }

    /// The group check reads only the credentials: a supplementary group no user database lists still counts,
    /// and nothing else does (no lookup that could block an event loop).
    func testPeerPolicyGroupCheckUsesTheKernelsGroups() {
        let policy = PeerPolicy(allowedGroup: 4242, trustRootAndSelf: false)
        XCTAssertTrue(policy.permits(PeerCredentials(pid: 1, uid: 61234, gid: 61234, groups: [7, 4242])))
        XCTAssertTrue(policy.permits(PeerCredentials(pid: 1, uid: 61234, gid: 4242)))
        XCTAssertFalse(policy.permits(PeerCredentials(pid: 1, uid: 61234, gid: 61234, groups: [7])))
        XCTAssertTrue(PeerCredentials(pid: 1, uid: 0, gid: 1).isPrivileged)
        XCTAssertTrue(PeerCredentials(pid: 1, uid: getuid(), gid: 1).isPrivileged)
    }

    /// `socketGroup` gives the socket file to that group (next to its mode); without it the file keeps the
    /// creating process's group; a group this process may not give is a start-up error naming chown.
    func testSocketGroupIsAppliedAfterBind() async throws {
        func fileGroup() throws -> gid_t {
            var st = stat()
            guard stat(socketPath, &st) == 0 else { throw ServingError.system(call: "stat(\(socketPath))", errno: errno) }
            XCTAssertEqual(st.st_mode & 0o777, 0o660)
            return st.st_gid
        }
        var count = getgroups(0, nil)
        var supplementary = [gid_t](repeating: 0, count: Int(max(count, 0)))
        count = getgroups(count, &supplementary)
        // A group other than the one the file gets by default: root may use any; others one of their own.
        let target: gid_t
        if geteuid() == 0 {
            target = getegid() == 65534 ? 65533 : 65534
        } else if let other = supplementary.prefix(Int(max(count, 0))).first(where: { $0 != getegid() }) {
            target = other
        } else {
            throw XCTSkip("this process belongs to one group only: no other group to give the socket")
        }

        let plain = try await startServer()
        XCTAssertEqual(try fileGroup(), getegid())
        await plain.shutdown()

        var configuration = ControlServerConfiguration()
        configuration.connection.socketGroup = UInt32(target)
        let server = try await startServer(configuration: configuration)
        XCTAssertEqual(try fileGroup(), target)
        let status = try await onThread { [socketPath] in try ControlClient(socketPath: socketPath).status() }
        XCTAssertEqual(status.modelName, "whisper-tiny.en")
        await server.shutdown()

        if geteuid() != 0 && getegid() != 0 && !supplementary.contains(0) {
            // Group 0 is not ours to give: chown fails and the server does not start.
            var foreign = configuration
            foreign.connection.socketGroup = 0
            do {
                let server = try await startServer(configuration: foreign)
                await server.shutdown()
                XCTFail("a group this process may not give was applied")
            } catch let error as ServingError {
                XCTAssertTrue("\(error)".contains("chown(\(socketPath), group 0)"), "\(error)")
            }
        }
    }

    func testStaleSocketReplacedLiveSocketRefusedModeSet() async throws {
        let stale = try bindUnixSocket(socketPath, listen: false)
        Glibc.close(stale)
        XCTAssertTrue(FileManager.default.fileExists(atPath: socketPath))
        let server = try await startServer()
        var st = stat()
        XCTAssertEqual(stat(socketPath, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
        let second = ControlServer(endpoints: [.unix(path: socketPath)], control: TestControlBackend(),
                                   transcription: CannedTranscriber())
        do {
            try await second.start()
            XCTFail("a live socket was replaced")
        } catch {
            XCTAssertEqual(error as? ServingError, .socketInUse(path: socketPath))
        }
        // The first server still works.
        let status = try await onThread { [socketPath] in try ControlClient(socketPath: socketPath).status() }
        XCTAssertEqual(status.utterancesSeen, 3)
        await server.shutdown()

        let plainFile = directory + "/file"
        XCTAssertTrue(FileManager.default.createFile(atPath: plainFile, contents: Data()))
        let third = ControlServer(endpoints: [.unix(path: plainFile)], control: TestControlBackend(),
                                  transcription: CannedTranscriber())
        do {
            try await third.start()
            XCTFail("a regular file was replaced")
        } catch {
            XCTAssertEqual(error as? ServingError, .notASocket(path: plainFile))
        }
    }
}

/// Binds a Unix stream socket at `path` (optionally listening) and returns its descriptor.
func bindUnixSocket(_ path: String, listen shouldListen: Bool) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
    let r = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard r == 0 else { throw TestSocketError(description: "bind(\(path)): \(String(cString: strerror(errno)))") }
    if shouldListen { guard listen(fd, 16) == 0 else { throw TestSocketError(description: "listen failed") } }
    return fd
}

/// One end of a connected Unix socket pair (the other end is leaked for the test's lifetime).
func bindUnixSocketPair() throws -> Int32 {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw TestSocketError(description: "socketpair") }
    return fds[0]
}
