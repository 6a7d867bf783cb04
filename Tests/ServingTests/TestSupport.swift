#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@_exported import SocketTestSupport
@testable import Serving

/// A fresh short directory under /tmp (Unix socket paths are limited to 107 bytes).
func makeTemporaryDirectory() throws -> String {
    var template = Array("/tmp/mqs-XXXXXX".utf8CString)
    guard let result = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
    return String(cString: result)
}

func removeDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// A plain blocking Unix (or TCP) stream client for driving the servers byte by byte.
final class RawClient {
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    var timeout: Double = 10

    init(unixPath: String) throws {
        fd = try TestSocket.connect(unixPath: unixPath)
    }

    init(tcpPort: Int) throws {
        fd = try TestSocket.connect(tcpPort: tcpPort)
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 { throw TestSocketError(description: "send: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ event: WyomingEvent) throws { try send(event.encoded()) }

    /// Reads more bytes; returns false at end of stream. Fails the wait after `timeout`.
    private func fill() throws -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&pfd, 1, Int32(timeout * 1000))
        if ready == 0 { throw TestSocketError(description: "no data within \(timeout) s") }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 {
            if errno == ECONNRESET { return false }
            throw TestSocketError(description: "recv: \(String(cString: strerror(errno)))")
        }
        if n == 0 { return false }
        buffer += chunk[..<n]
        return true
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        while buffer.count < count {
            guard try fill() else { throw TestSocketError(description: "end of stream inside a frame") }
        }
        defer { buffer.removeFirst(count) }
        return Array(buffer[..<count])
    }

    /// Reads one line (without newline), or nil at end of stream.
    func readLine() throws -> [UInt8]? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return line
            }
            guard try fill() else { return nil }
        }
    }

    func readJSONLine() throws -> [String: JSONValue]? {
        guard let line = try readLine() else { return nil }
        return try JSONDecoder().decode([String: JSONValue].self, from: Data(line))
    }

    /// Reads one Wyoming event the way the Python package does, or nil at end of stream.
    func readEvent() throws -> WyomingEvent? {
        guard let line = try readLine() else { return nil }
        let header = try JSONDecoder().decode([String: JSONValue].self, from: Data(line))
        var data = header["data"]?.objectValue ?? [:]
        if let n = header["data_length"]?.intValue, n > 0 {
            let extra = try JSONDecoder().decode([String: JSONValue].self, from: Data(try readExactly(n)))
            data.merge(extra) { $1 }
        }
        var payload: [UInt8]?
        if let n = header["payload_length"]?.intValue, n > 0 { payload = try readExactly(n) }
        guard let type = header["type"]?.stringValue else { throw TestSocketError(description: "event without type") }
        return WyomingEvent(type: type, data: data, payload: payload)
    }

    /// True when the peer has closed (all pending data is read and discarded).
    func waitForEndOfStream() throws -> Bool {
        buffer.removeAll()
        while try fill() { buffer.removeAll() }
        return true
    }
}

/// A transcription backend test double: records what it receives and returns a canned transcript.
final class CannedTranscriber: TranscriptionBackend, @unchecked Sendable {
    struct Call { var sampleCount: Int; var language: String?; var samples: [Float]; var origin: RequestOrigin }
    private let lock = NSLock()
    private var _calls: [Call] = []
    var calls: [Call] { lock.lock(); defer { lock.unlock() }; return _calls }
    let failWith: Error?

    init(failWith: Error? = nil) { self.failWith = failWith }

    func transcribe(samples: [Float], language: String?, origin: RequestOrigin) async throws -> TranscriptResult {
        lock.withLock { _calls.append(Call(sampleCount: samples.count, language: language, samples: samples, origin: origin)) }
        if let failWith { throw failWith }
        return TranscriptResult(
            text: "hello world \(samples.count)", language: language ?? "en",
            segments: [
                TranscriptSegment(start: 0, end: 0.5, text: "hello"),
                TranscriptSegment(start: 0.5, end: 1, text: " world \(samples.count)"),
            ])
    }
}

/// A control backend test double with a real fan-out of live transcripts to every listener.
final class TestControlBackend: ControlBackend, @unchecked Sendable {
    private let lock = NSLock()
    private var continuations: [UUID: AsyncStream<LiveTranscript>.Continuation] = [:]
    private(set) var budget: Int?
    private(set) var reloads = 0
    private(set) var forgets = 0
    let bufferLimit: Int
    /// One element each time a listener's stream terminates (the server cancelled it).
    let listenerEnded: AsyncStream<Void>
    private let listenerEndedContinuation: AsyncStream<Void>.Continuation

    init(bufferLimit: Int = 100_000) {
        self.bufferLimit = bufferLimit
        (listenerEnded, listenerEndedContinuation) = AsyncStream<Void>.makeStream()
    }

    var listenerCount: Int { lock.lock(); defer { lock.unlock() }; return continuations.count }

    func status() async -> DaemonStatus {
        DaemonStatus(
            modelName: "whisper-tiny.en", layerBits: ["encoder.blocks.0.fc1": 4], memoryBytes: 40_000_000,
            budgetBytes: budget, uptimeSeconds: 12.5, utterancesSeen: 3, statisticsSamples: 300,
            lastRequantization: Date(timeIntervalSince1970: 1_700_000_000), captureState: .capturing)
    }

    func setBudget(bytes: Int?) async throws {
        guard let bytes else {
            lock.withLock { budget = nil }
            return
        }
        guard bytes >= 1_000_000 else {
            throw ControlError(code: "impossible_budget", message: "budget \(bytes) B is below the 1 MB minimum")
        }
        lock.withLock { budget = bytes }
    }

    func reload() async throws { lock.withLock { reloads += 1 } }
    func forget() async throws { lock.withLock { forgets += 1 } }

    func liveTranscripts() -> AsyncStream<LiveTranscript> {
        let id = UUID()
        let (stream, continuation) = AsyncStream<LiveTranscript>.makeStream(bufferingPolicy: .bufferingNewest(bufferLimit))
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            self.lock.withLock { self.continuations[id] = nil }
            self.listenerEndedContinuation.yield()
        }
        lock.lock(); continuations[id] = continuation; lock.unlock()
        return stream
    }

    func publish(_ transcript: LiveTranscript) {
        lock.lock(); let all = Array(continuations.values); lock.unlock()
        for c in all { c.yield(transcript) }
    }
}

/// 16-bit little-endian PCM of a sine wave.
func sinePCM16(frequency: Double, rate: Int, seconds: Double, channels: Int = 1, amplitude: Double = 0.5) -> [UInt8] {
    let frames = Int(Double(rate) * seconds)
    var bytes: [UInt8] = []
    bytes.reserveCapacity(frames * channels * 2)
    for i in 0..<frames {
        let v = Int16(amplitude * 32767 * sin(2 * Double.pi * frequency * Double(i) / Double(rate)))
        for _ in 0..<channels {
            let u = UInt16(bitPattern: v)
            bytes.append(UInt8(u & 0xff)); bytes.append(UInt8(u >> 8))
        }
    }
    return bytes
}

/// Runs blocking client code off the test's async context.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// A transcription backend that holds every request until the test opens the gate.
final class GatedTranscriber: TranscriptionBackend, @unchecked Sendable {
    private let lock = NSLock()
    private var opened = false
    private var waiting: [CheckedContinuation<Void, Never>] = []
    /// One element each time a request reaches the backend.
    let started: AsyncStream<Int>
    private let startedContinuation: AsyncStream<Int>.Continuation

    init() { (started, startedContinuation) = AsyncStream<Int>.makeStream() }

    func open() {
        let waiters = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            opened = true
            defer { waiting = [] }
            return waiting
        }
        for waiter in waiters { waiter.resume() }
    }

    func transcribe(samples: [Float], language: String?, origin: RequestOrigin) async throws -> TranscriptResult {
        startedContinuation.yield(samples.count)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = lock.withLock { () -> Bool in
                if opened { return true }
                waiting.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
        return TranscriptResult(text: "gated \(samples.count)", language: "en")
    }
}
