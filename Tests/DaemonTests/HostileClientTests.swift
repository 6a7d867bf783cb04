import Foundation
#if canImport(Glibc)
import Glibc
#endif
import DaemonCore
@testable import Quantization
import Serving
import SocketTestSupport
import XCTest

/// The daemon (a real `myqasrd` subprocess, tiny.en, capture off) against clients that lie, overreach, dawdle or
/// crowd, some of them running as other users: each is refused or bounded, and correct clients keep being served.
///
/// Memory is judged by the kernel's own peak (`VmHWM` of /proc/PID/status: the largest resident size the
/// process ever had, no sampling involved) against a stated bound: the served model's weights, plus the
/// configured client memory (`limits.max_buffered_bytes`), plus `HostileClientTests.constantMiB` for everything
/// else (binary, libraries, allocator, the engine's working memory of one worker, event loops).
final class HostileClientTests: XCTestCase {
    /// What the daemon may hold beyond the weights and the client memory, in MiB. Measured peaks above the
    /// weights and the charged client memory: 130-160 MiB (tiny.en, one worker, two threads; peaks of 274-327 MiB).
    static let constantMiB = 320
    /// The group the foreign clients' sockets are shared with (nogroup).
    static let sharedGroup: UInt32 = 65534

    private func harness(limits: String = "", environment: [String: String] = [:],
                         captureSection: String? = nil) throws -> DaemonHarness {
        try ForeignClient.available()
        return try DaemonHarness(
            microphone: nil, limits: limits, extraEnvironment: environment, captureSection: captureSection,
            sockets: "group = \"\(Self.sharedGroup)\"", prepare: { scratch in chmod(scratch.path, 0o755) })
    }

    private func foreign(_ harness: DaemonHarness, uid: UInt32, groups: [UInt32] = [], gid: UInt32 = sharedGroup,
                         _ arguments: [String]) throws -> ForeignClient {
        let script = try ForeignClient.install(in: harness.scratch.path)
        return try ForeignClient(scriptPath: script, uid: uid, gid: gid, groups: groups, arguments: arguments)
    }

    /// One control request on a fresh connection; the answer.
    private func ask(_ harness: DaemonHarness, _ line: String) throws -> [String: JSONValue] {
        let fd = try TestSocket.connect(unixPath: harness.controlSocket)
        defer { close(fd) }
        let bytes = Array((line + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw HarnessError("send: errno \(errno)") }
            offset += n
        }
        return try readLine(fd: fd)
    }

    private func readLine(fd: Int32, timeout: Double = 120) throws -> [String: JSONValue] {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while pending.firstIndex(of: UInt8(ascii: "\n")) == nil {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(timeout * 1000)) > 0 else { throw HarnessError("no answer within \(timeout) s") }
            let n = recv(fd, &chunk, chunk.count, 0)
            guard n > 0 else { throw HarnessError("the daemon closed the connection without answering") }
            pending += chunk[0..<n]
        }
        let line = pending[..<pending.firstIndex(of: UInt8(ascii: "\n"))!]
        return try JSONDecoder().decode([String: JSONValue].self, from: Data(line))
    }

    private func wavLine(_ wav: [UInt8]) -> String {
        "{\"id\":1,\"command\":\"transcribe\",\"format\":\"wav\",\"audio\":\"\(Data(wav).base64EncodedString())\"}"
    }

    /// The peak resident size the kernel recorded for the daemon, and the bound it must stay under.
    private func checkPeak(_ harness: DaemonHarness, bufferedMiB: Int, file: StaticString = #filePath, line: UInt = #line)
        throws -> (peakMiB: Int, boundMiB: Int)
    {
        let weights = try harness.client().status().memoryBytes >> 20
        let peak = try XCTUnwrap(harness.daemon.statusKiB("VmHWM")) >> 10
        let bound = weights + bufferedMiB + Self.constantMiB
        XCTAssertLessThan(peak, bound, "peak RSS \(peak) MiB above weights \(weights) + client memory \(bufferedMiB) + \(Self.constantMiB) MiB",
                          file: file, line: line)
        return (peak, bound)
    }

    /// CPU seconds the daemon has used (user + system, from /proc/PID/stat).
    private func cpuSeconds(_ harness: DaemonHarness) throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(harness.daemon.pid)/stat", encoding: .utf8)
        let fields = stat[stat.range(of: ")")!.upperBound...].split(separator: " ")
        return Double(Int(fields[11])! + Int(fields[12])!) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    // MARK: item 1: the cost of a request comes from its header

    /// A 793-byte WAV that says 1 Hz (30 s of CPU on the old daemon) and 12 MB of 8-bit 1 kHz audio (RSS to
    /// 1.4 GB on the old daemon) are refused from their headers: little CPU, no memory beyond the request line.
    func testSampleRateAmplificationIsRefusedFromTheHeader() throws {
        let harness = try harness()
        let before = try cpuSeconds(harness)
        let oneHertz = wavFile(data: [UInt8](repeating: 0x40, count: 749), rate: 1, channels: 1, bits: 8)
        let answer = try ask(harness, wavLine(oneHertz))
        XCTAssertEqual(answer["error"]?["code"], "unsupported_format", "\(answer)")
        XCTAssertLessThan(try cpuSeconds(harness) - before, 2, "a refused 793-byte request cost seconds of CPU")

        let long = wavFile(data: [UInt8](repeating: 0x80, count: 12_000_000), rate: 1000, channels: 1, bits: 8)
        let longAnswer = try ask(harness, wavLine(long))
        XCTAssertEqual(longAnswer["error"]?["code"], "audio_too_long", "\(longAnswer)")
        XCTAssertTrue(longAnswer["error"]?["message"]?.stringValue?.contains("12000.0 seconds") ?? false, "\(longAnswer)")
        // A header that lies about its data's length costs what is there.
        let lying = wavFile(data: try Array(Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav"))), rate: 16000,
                            channels: 1, bits: 16, dataSize: 0xFFFF_FFF0)
        let heard = try ask(harness, wavLine(lying))
        XCTAssertTrue(Fixtures.normalise(heard["result"]?["text"]?.stringValue ?? "").contains("forward"), "\(heard)")
        let (peak, bound) = try checkPeak(harness, bufferedMiB: 512)
        print("amplification: peak RSS \(peak) MiB (bound \(bound) MiB)")
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 2: buffered audio is bounded across connections

    /// Ten connections of another user stream 100 s each at 384 kHz and hold it (1.5 GB as floats at the
    /// declared rate on the old daemon): they are charged as 16 kHz samples, the user's half of a 32 MiB pool
    /// runs out and the rest are told `busy`, and root still gets a transcript meanwhile.
    func testBufferedAudioIsBoundedAcrossConnections() throws {
        let harness = try harness(limits: "max_buffered_bytes = \"32MiB\"\nmax_connection_bytes = \"16MiB\"")
        let streams = try foreign(harness, uid: 65534, ["stream", harness.wyomingSocket, "10", "384000", "100"])
        defer { streams.finish() }
        let reports = try streams.waitForLines(10, timeout: 600)
        let busy = reports.filter { $0.contains("busy") }.count
        print("384 kHz streams: \(reports)")
        XCTAssertGreaterThanOrEqual(busy, 7, "\(reports)")  // a stream of 100 s is 6.4 MB at 16 kHz: 2 fit in 16 MiB
        XCTAssertTrue(reports.allSatisfy { $0.hasSuffix("none") || $0.contains("busy") }, "\(reports)")
        let status = try harness.client().status()
        let buffers = try XCTUnwrap(status.clientBuffers)
        XCTAssertLessThanOrEqual(buffers.usedBytes, 16 << 20)
        XCTAssertLessThanOrEqual(buffers.peakBytes, 32 << 20)
        let wyoming = try WyomingTestClient(unixPath: harness.wyomingSocket)
        let text = try wyoming.transcribe(pcm16: try Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav")))
        XCTAssertTrue(Fixtures.normalise(text).contains("forward"), text)
        let (peak, bound) = try checkPeak(harness, bufferedMiB: 32)
        print("buffered audio: peak RSS \(peak) MiB (bound \(bound) MiB), client memory peak \(buffers.peakBytes) bytes")
        streams.finish()
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 3: the work of a client that leaves is dropped

    /// The reproduction on the control socket: clients send 99 s of speech each and hang up once it is
    /// queued. The running request stops and the waiting ones leave the queue (counted as cancelled), and the
    /// next client is answered at once instead of after minutes of transcription nobody will read.
    func testRequestsOfClientsThatHangUpAreDropped() throws {
        let speech = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        var long = Data()
        for _ in 0..<9 { long += speech }
        let line = Array((wavLine(wavFile(data: Array(long), rate: 16000, channels: 1, bits: 16)) + "\n").utf8)
        let harness = try harness()
        let control = try harness.client()   // one connection for the polls below, not a new one every few ms
        var sockets: [Int32] = []
        defer { sockets.forEach { close($0) } }
        for n in 1...3 {
            let fd = try TestSocket.connect(unixPath: harness.controlSocket)
            sockets.append(fd)
            var offset = 0
            while offset < line.count {
                let sent = line.withUnsafeBytes { send(fd, $0.baseAddress! + offset, line.count - offset, Int32(MSG_NOSIGNAL)) }
                guard sent > 0 else { throw HarnessError("send: errno \(errno)") }
                offset += sent
            }
            _ = try Waiter<Int>.poll(timeout: 60, what: "request \(n) queued") {
                (try? control.queue()).map { $0.running + $0.waiting == n } == true ? 1 : nil
            }
        }
        sockets.forEach { close($0) }
        sockets = []
        let after = try Waiter<QueueStatus>.poll(timeout: 60, what: "the three requests dropped") {
            (try? control.queue()).flatMap { $0.cancelledRequests == 3 && $0.running == 0 && $0.waiting == 0 ? $0 : nil }
        }
        XCTAssertEqual(after.refusedRequests, 0)
        let heard = try ask(harness, wavLine(wavFile(data: Array(speech), rate: 16000, channels: 1, bits: 16)))
        XCTAssertTrue(Fixtures.normalise(heard["result"]?["text"]?.stringValue ?? "").contains(jfkPhrase),
                      "\(heard)")
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 4: one user cannot take every connection

    /// Another user opening 64 connections (the server's limit) gets 16 of them; root's `myqasrctl status` gets
    /// through, and so does a third user.
    func testOneUserCannotTakeEveryConnection() throws {
        let harness = try harness()
        let hog = try foreign(harness, uid: 65534, ["hold", harness.controlSocket, "control", "64"])
        defer { hog.finish() }
        XCTAssertEqual(try hog.waitForLines(1, timeout: 120), ["admitted 16 refused 48"])
        let wyomingHog = try foreign(harness, uid: 65534, ["hold", harness.wyomingSocket, "wyoming", "64"])
        defer { wyomingHog.finish() }
        XCTAssertEqual(try wyomingHog.waitForLines(1, timeout: 120), ["admitted 16 refused 48"])
        let (status, out, err) = try runTool(try Fixtures.binary("myqasrctl"), ["status", "--socket", harness.controlSocket])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("model:"), out)
        let other = try foreign(harness, uid: 65533, ["hold", harness.controlSocket, "control", "1"])
        defer { other.finish() }
        XCTAssertEqual(try other.waitForLines(1, timeout: 120), ["admitted 1 refused 0"])
        hog.finish()
        wyomingHog.finish()
        other.finish()
        XCTAssertEqual(harness.stop(), 0)
    }

    /// The peer check reads the connecting process's groups from the kernel (SO_PEERGROUPS), not from the user
    /// database on the event loop: a user the database does not know, holding the socket's group as a
    /// supplementary group, is let in (the old lookup found no such user and refused it).
    func testSupplementaryGroupsComeFromTheKernel() throws {
        let harness = try harness()
        let client = try foreign(harness, uid: 4242, groups: [Self.sharedGroup], gid: 4242,
                                 ["hold", harness.controlSocket, "control", "1"])
        defer { client.finish() }
        XCTAssertEqual(try client.waitForLines(1, timeout: 120), ["admitted 1 refused 0"])
        client.finish()
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 5: a state file that lies is set aside, not a restart loop

    /// A `statistics.myqs` with a correct checksum and a sample count of 2^64 - 1 trapped the daemon at every
    /// start (so systemd restarted it forever). Now it is corruption: the file is set aside as
    /// `statistics.myqs.corrupt`, gathering starts afresh, and the daemon serves.
    func testStateFileWithAnImpossibleCountIsSetAside() throws {
        var payload: [UInt8] = [1, 0, 0, 0, UInt8(ascii: "x")]          // model identity "x"
        payload += [UInt8](repeating: 0xFF, count: 8)                     // sample count 2^64 - 1
        payload += [0, 0, 0, 0]                                           // no layers
        var file = StatisticsFile.magic + [1, 0, 0, 0]                    // version 1
        file += (0..<8).map { UInt8(truncatingIfNeeded: UInt64(payload.count) >> (8 * UInt64($0))) }
        file += payload
        let crc = StatisticsFile.crc(file)
        file += (0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * UInt32($0))) }
        let harness = try DaemonHarness(microphone: nil, stateFiles: [PersonalStatistics.fileName: Data(file)])
        let status = try harness.client().status()
        XCTAssertEqual(status.statisticsSamples, 0)
        let state = harness.stateDirectory
        XCTAssertFalse(FileManager.default.fileExists(atPath: state + "/" + PersonalStatistics.fileName))
        XCTAssertEqual(FileManager.default.contents(atPath: state + "/" + PersonalStatistics.fileName + ".corrupt"), Data(file))
        XCTAssertTrue(harness.daemon.stderrText.contains("personal statistics unreadable, set aside"))
        let wyoming = try WyomingTestClient(unixPath: harness.wyomingSocket)
        let text = try wyoming.transcribe(pcm16: try Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav")))
        XCTAssertTrue(Fixtures.normalise(text).contains("forward"), text)
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 9: a half-closing client's unterminated request is answered

    func testUnterminatedRequestOfAHalfClosingClientIsAnswered() throws {
        let harness = try harness()
        let fd = try TestSocket.connect(unixPath: harness.controlSocket)
        defer { close(fd) }
        let request = Array("{\"id\":9,\"command\":\"budget\",\"bytes\":25165824}".utf8)
        XCTAssertEqual(send(fd, request, request.count, Int32(MSG_NOSIGNAL)), request.count)
        shutdown(fd, Int32(SHUT_WR))
        let answer = try readLine(fd: fd)
        XCTAssertEqual(answer["id"], 9)
        XCTAssertEqual(answer["ok"], true, "\(answer)")
        XCTAssertEqual(try harness.client().status().budgetBytes, 25_165_824)
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 10: error codes

    /// A full queue is `busy` on Wyoming too (it was `transcription-failed`); `bytes: 1e999` is a field error
    /// with the request's id (it was "not a JSON object"); a `data_length` of 2^62 is too large (it was called
    /// negative).
    func testErrorCodesSayWhatHappened() throws {
        // No partial passes: they count as running, and the polls below must see the requests themselves.
        let harness = try harness(limits: "queue_depth = 1", captureSection: "enabled = false\npartial_interval = 0")
        let control = try harness.client()   // one connection for the polls below
        // The first request is 66 s, far longer to transcribe than the other two (33 s each) take to arrive.
        let jfk = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let speech = jfk + jfk + jfk
        let clients = try (0..<3).map { _ in try WyomingTestClient(unixPath: harness.wyomingSocket) }
        let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
        // Three whole requests: one runs, one waits, the third finds the queue full.
        for (index, client) in clients.enumerated() {
            let audio = index == 0 ? speech + speech : speech
            try client.send(WyomingEvent(type: "audio-start", data: format))
            var offset = 0
            while offset < audio.count {
                let end = min(audio.count, offset + 32000)
                try client.send(WyomingEvent(type: "audio-chunk", data: format,
                                             payload: Array(audio[(audio.startIndex + offset)..<(audio.startIndex + end)])))
                offset = end
            }
            try client.send(WyomingEvent(type: "audio-stop"))
            switch index {
            case 0:
                _ = try Waiter<Int>.poll(timeout: 60, what: "the first request running") {
                    (try? control.queue()).map { $0.running == 1 && $0.waiting == 0 } == true ? 1 : nil
                }
            case 1:
                _ = try Waiter<Int>.poll(timeout: 60, what: "the second request waiting") {
                    (try? control.queue()).map { $0.waiting == 1 } == true ? 1 : nil
                }
            default:
                break
            }
        }
        var outcomes: [String] = []
        for client in clients {
            while true {
                let event = try client.receive()
                if event.type == "transcript" { outcomes.append("transcript"); break }
                if event.type == "error" { outcomes.append(event.data["code"]?.stringValue ?? "?"); break }
            }
        }
        XCTAssertEqual(outcomes, ["transcript", "transcript", "busy"])

        let budget = try ask(harness, "{\"id\":3,\"command\":\"budget\",\"bytes\":1e999}")
        XCTAssertEqual(budget["id"], 3)
        XCTAssertEqual(budget["error"]?["code"], "bad_request")
        XCTAssertTrue(budget["error"]?["message"]?.stringValue?.contains("\"bytes\" is out of range") ?? false, "\(budget)")

        let raw = try WyomingTestClient(unixPath: harness.wyomingSocket)
        try raw.sendRaw(Array("{\"type\":\"audio-chunk\",\"data_length\":4611686018427387904}\n".utf8))
        let error = try raw.receive()
        XCTAssertEqual(error.data["code"], "data-too-long")
        XCTAssertEqual(error.data["text"], "data_length 4611686018427387904 exceeds the limit of 262144 bytes")
        XCTAssertEqual(harness.stop(), 0)
    }

    // MARK: item 11: no core dumps

    /// With the core size limit raised and the kernel writing cores to a plain file, a crash of the daemon
    /// (SIGSEGV) leaves no core file: the process made itself not dumpable and set its core limit to 0.
    func testACrashWritesNoCoreDump() throws {
        let pattern = (try? String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        guard !pattern.isEmpty, !pattern.hasPrefix("|"), !pattern.hasPrefix("/") else {
            throw XCTSkip("core_pattern is \"\(pattern)\": cores do not go to the process's directory, so this machine cannot show one")
        }
        var saved = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &saved)
        var unlimited = rlimit(rlim_cur: rlim_t.max, rlim_max: rlim_t.max)  // RLIM_INFINITY
        guard setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &unlimited) == 0 else {
            throw HarnessError("cannot raise RLIMIT_CORE: errno \(errno)")
        }
        defer { setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &saved) }
        // Swift's crash reporter would catch a SIGSEGV sent from outside and carry on; without it the signal
        // takes the kernel's default action, as a real fault does after the report.
        let harness = try harness(environment: ["SWIFT_BACKTRACE": "enable=no"])
        // Audio in the daemon's memory at the time of the crash.
        let wyoming = try WyomingTestClient(unixPath: harness.wyomingSocket)
        _ = try wyoming.transcribe(pcm16: try Fixtures.pcm16(ofWAV: try Fixtures.sample("goforward.wav")))
        harness.daemon.signal(SIGSEGV)
        XCTAssertEqual(harness.daemon.waitForExit(timeout: 120), SIGSEGV, "the daemon did not die of the signal")
        XCTAssertEqual(harness.daemon.process.terminationReason, .uncaughtSignal)
        let left = try FileManager.default.contentsOfDirectory(atPath: harness.sandbox).filter { $0.hasPrefix("core") }
        XCTAssertEqual(left, [], "a core dump was written")
        XCTAssertTrue(harness.daemon.stderrText.contains("core dumps off (not dumpable, core limit 0)"))
    }

    // MARK: slow and crowding clients

    /// Slowloris on both sockets: a request trickled in one byte every half second (each byte resets the idle
    /// timeout) is cut off at the request timeout, with the protocol's error.
    func testSlowlorisOnBothSocketsIsCutOff() throws {
        let harness = try harness(limits: "request_timeout = 2")
        let control = try foreign(harness, uid: 65534, ["trickle", harness.controlSocket, "0.5", "{\"id\":1,\"command\":\"status\"}"])
        let wyoming = try foreign(harness, uid: 65533, ["trickle", harness.wyomingSocket, "0.5", "{\"type\":\"describe\"}\n"])
        defer { control.finish(); wyoming.finish() }
        let controlReport = try control.waitForLines(1, timeout: 120)[0]
        let wyomingReport = try wyoming.waitForLines(1, timeout: 120)[0]
        print("slowloris: \(controlReport) / \(wyomingReport)")
        XCTAssertTrue(controlReport.contains("request_timeout"), controlReport)
        XCTAssertTrue(wyomingReport.contains("request-timeout"), wyomingReport)
        // Cut off well before the whole request was sent (2 s of a 14 s trickle).
        for report in [controlReport, wyomingReport] {
            let sent = Int(report.split(separator: " ")[2])!
            XCTAssertLessThan(sent, 20, report)
        }
        XCTAssertEqual(harness.stop(), 0)
    }

    /// 20 correct clients at once (10 Wyoming, 10 control `transcribe`), while other users hold connections,
    /// stream 384 kHz audio into their share of the client memory, trickle requests and send lying headers:
    /// every correct client gets its transcript, and the daemon's peak RSS stays under the bound.
    func testTwentyCorrectClientsAreServedWhileHostileOnesRun() throws {
        let harness = try harness(limits: """
            max_buffered_bytes = "64MiB"
            max_connection_bytes = "32MiB"
            request_timeout = 5
            queue_depth = 64
            """)
        let goforward = try Fixtures.sample("goforward.wav")
        let clip = try Fixtures.pcm16(ofWAV: goforward)
        let wav = try Data(contentsOf: URL(fileURLWithPath: goforward))

        let holders = try foreign(harness, uid: 65534, ["hold", harness.controlSocket, "control", "64"])
        let wyomingHolders = try foreign(harness, uid: 65534, ["hold", harness.wyomingSocket, "wyoming", "64"])
        let streams = try foreign(harness, uid: 65533, ["stream", harness.wyomingSocket, "4", "384000", "30"])
        let trickleControl = try foreign(harness, uid: 65532, ["trickle", harness.controlSocket, "0.5", String(repeating: "x", count: 60)])
        let trickleWyoming = try foreign(harness, uid: 65532, ["trickle", harness.wyomingSocket, "0.5", String(repeating: "x", count: 60)])
        defer { [holders, wyomingHolders, streams, trickleControl, trickleWyoming].forEach { $0.finish() } }
        XCTAssertEqual(try holders.waitForLines(1, timeout: 120), ["admitted 16 refused 48"])
        XCTAssertEqual(try wyomingHolders.waitForLines(1, timeout: 120), ["admitted 16 refused 48"])

        let failures = Waiter<String>()
        let texts = Waiter<String>()
        let hostile = Thread {
            // Amplification and lying headers from root meanwhile: each refused from its header.
            let oneHertz = wavFile(data: [UInt8](repeating: 0x40, count: 749), rate: 1, channels: 1, bits: 8)
            let long = wavFile(data: [UInt8](repeating: 0x80, count: 2_000_000), rate: 1000, channels: 1, bits: 8)
            for wav in [oneHertz, long, oneHertz, long] {
                if let answer = try? self.ask(harness, self.wavLine(wav)), answer["ok"] == true {
                    failures.append("a hostile request was accepted: \(answer)")
                }
            }
        }
        hostile.start()
        DispatchQueue.concurrentPerform(iterations: 20) { index in
            do {
                let text: String
                if index % 2 == 0 {
                    let client = try WyomingTestClient(unixPath: harness.wyomingSocket)
                    client.timeout = 300
                    text = try client.transcribe(pcm16: clip)
                } else {
                    text = try harness.client(timeout: 300).transcribe(wav: wav).text
                }
                texts.append(text)
            } catch {
                failures.append("client \(index): \(error)")
            }
        }
        XCTAssertEqual(failures.all, [])
        XCTAssertEqual(texts.all.count, 20)
        for text in texts.all { XCTAssertTrue(Fixtures.normalise(text).contains("forward"), "transcript: \(text)") }
        let streamReports = try streams.waitForLines(4, timeout: 600)
        let trickles = [try trickleControl.waitForLines(1, timeout: 120)[0], try trickleWyoming.waitForLines(1, timeout: 120)[0]]
        print("while hostile clients ran: streams \(streamReports), trickles \(trickles)")
        XCTAssertTrue(trickles[0].contains("request_timeout"), trickles[0])
        XCTAssertTrue(trickles[1].contains("request-timeout"), trickles[1])
        while hostile.isExecuting { usleep(10_000) }

        let (peak, bound) = try checkPeak(harness, bufferedMiB: 64)
        let buffers = try XCTUnwrap(try harness.client().status().clientBuffers)
        print("hostile run: peak RSS \(peak) MiB (bound \(bound) MiB), client memory peak \(buffers.peakBytes) bytes")
        XCTAssertLessThanOrEqual(buffers.peakBytes, 64 << 20)
        // When the hostile clients leave, everything charged for them is given back.
        [holders, wyomingHolders, streams, trickleControl, trickleWyoming].forEach { $0.finish() }
        let deadline = Date().addingTimeInterval(60)
        var used = Int.max
        while Date() < deadline {
            used = try XCTUnwrap(try harness.client().status().clientBuffers).usedBytes
            if used == 0 { break }
            usleep(50_000)
        }
        XCTAssertEqual(used, 0)
        XCTAssertEqual(harness.stop(), 0)
    }
}
