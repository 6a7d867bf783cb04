import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Quantization
import Serving
import SocketTestSupport
import WhisperEngine
@_exported import TestSupport  // `Fixtures` in every file of these tests
import XCTest

/// tiny.en quantized to uniform 4 bits with its layers in an unnamed file in `directory`, as the daemon builds them
/// (`LayerFile`), and how much of those layers is resident: for tests of the pages a model hands back.
struct FileBackedModel: Sendable {
    let model: WhisperModel
    private let layers: [QuantizedMatrix]

    init(directory: String) throws {
        let float = try Fixtures.model("tiny.en")
        var options = QuantizationOptions(target: .uniform(bits: 4), groupSize: 32, calibrate: false)
        options.layerFile = try XCTUnwrap(LayerFile.open(directory: directory))
        model = float.withWeights(try Quantizer.quantize(model: float, statistics: nil, options: options).weights)
        layers = try model.weights.linearLayers.map { try XCTUnwrap($0.weight as? QuantizedMatrix) }
    }

    /// KiB of the model's layers resident now.
    func residentKiB() -> Int { layers.reduce(0) { $0 + (ResidentPages.kib(ofMappingAt: $1.packed.baseAddress) ?? 0) } }
}

extension ControlClient {
    /// The job queue's counters, from `status`.
    func queue() throws -> QueueStatus {
        guard let queue = try status().queue else { throw HarnessError("status has no queue") }
        return queue
    }
}

/// Failure of a test helper, with what was waited for.
struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A fresh short directory under /tmp (Unix socket paths are limited to 107 bytes), removed on deinit.
final class ScratchDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/mqdt-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else { throw HarnessError("mkdtemp failed: errno \(errno)") }
        path = String(cString: result)
    }

    func sub(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    func makeDirectory(_ name: String) throws -> String {
        let p = sub(name)
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// The daemon tests' helpers beside the shared fixtures (`TestSupport`'s `Fixtures`: models, samples, tools and
/// built products, skipped when missing and failed under MYQASR_REQUIRE_FIXTURES=1).
extension Fixtures {
    /// The tiny.en model directory.
    static func tinyModel() throws -> String { try modelDirectory("tiny.en").path }

    /// The 16-bit PCM data of a 16 kHz mono WAV (the `data` chunk).
    static func pcm16(ofWAV path: String) throws -> Data {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var offset = 12
        while offset + 8 <= data.count {
            let id = String(decoding: data[offset..<offset + 4], as: UTF8.self)
            let size = Int(data[offset + 4]) | Int(data[offset + 5]) << 8 | Int(data[offset + 6]) << 16 | Int(data[offset + 7]) << 24
            if id == "data" { return data[(offset + 8)..<min(data.count, offset + 8 + size)] }
            offset += 8 + size + (size & 1)
        }
        throw HarnessError("\(path) has no data chunk")
    }

    /// Lower case, letters, digits and single spaces: for comparing transcripts.
    static func normalise(_ text: String) -> String {
        let kept = text.lowercased().map { $0.isLetter || $0.isNumber ? $0 : " " }
        return String(kept).split(separator: " ").joined(separator: " ")
    }
}

/// How many times longer than its stated timeout a test waits for an event before it fails
/// (MYQASR_TEST_PATIENCE, default 4). A timeout only stops a broken run from hanging; a machine busy with other
/// work (CI's 2 cores) makes every step slower, and a test must not fail because of that.
let testPatience: Double = Double(ProcessInfo.processInfo.environment["MYQASR_TEST_PATIENCE"] ?? "") ?? 4

/// `seconds` stretched by `testPatience`: the deadline of every wait below.
func patient(_ seconds: Double) -> Double { seconds * testPatience }

/// Waits on a condition with a deadline; every test wait goes through here (no sleeps to synchronise).
final class Waiter<Value>: @unchecked Sendable {
    private let condition = NSCondition()
    private var items: [Value] = []

    func append(_ value: Value) {
        condition.lock()
        items.append(value)
        condition.broadcast()
        condition.unlock()
    }

    var all: [Value] {
        condition.lock()
        defer { condition.unlock() }
        return items
    }

    /// Waits until `predicate(items)` returns non-nil, or throws after `timeout` seconds.
    func wait<R>(timeout: Double, what: String, _ predicate: ([Value]) -> R?) throws -> R {
        let deadline = Date().addingTimeInterval(patient(timeout))
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let result = predicate(items) { return result }
            if !condition.wait(until: deadline) {
                if let result = predicate(items) { return result }
                throw HarnessError("timed out after \(patient(timeout)) s waiting for \(what)")
            }
        }
    }
}

/// A `NOTIFY_SOCKET` of our own: a Unix datagram socket collecting every sd_notify message.
final class NotifyListener: @unchecked Sendable {
    let path: String
    let messages = Waiter<String>()
    private let fd: Int32
    private var thread: Thread?
    private let stopped = DispatchSemaphore(value: 0)

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: errno \(errno)") }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else { throw HarnessError("bind(\(path)): errno \(errno)") }
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                var pfd = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&pfd, 1, 200)
                if self.isClosing { break }
                if ready <= 0 { continue }
                let n = recv(self.fd, &buffer, buffer.count, 0)
                if n > 0 { self.messages.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
            }
            self.stopped.signal()
        }
        thread.start()
        self.thread = thread
    }

    private let closingLock = NSLock()
    private var closing = false
    private var isClosing: Bool {
        closingLock.lock()
        defer { closingLock.unlock() }
        return closing
    }

    /// Waits for a message containing every one of `parts`, after the first `skip` messages.
    @discardableResult
    func waitFor(_ parts: [String], after skip: Int = 0, timeout: Double = 60) throws -> (index: Int, message: String) {
        try messages.wait(timeout: timeout, what: "sd_notify message with \(parts)") { all in
            for (i, m) in all.enumerated() where i >= skip && parts.allSatisfy({ m.contains($0) }) { return (i, m) }
            return nil
        }
    }

    func close() {
        closingLock.lock()
        closing = true
        closingLock.unlock()
        stopped.wait()
        Glibc.close(fd)
    }
}

/// `myqasrd` as a subprocess with its own environment; stderr goes to a file the test can read.
final class DaemonProcess {
    let process = Process()
    let stderrPath: String

    init(binary: String, arguments: [String], environment: [String: String], workingDirectory: String, stderrPath: String) throws {
        self.stderrPath = stderrPath
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = URL(fileURLWithPath: workingDirectory)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }

    var stderrText: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    func signal(_ number: Int32) { kill(pid, number) }

    /// Waits for a line of stderr matching `predicate`, with a deadline (polls the file the daemon writes).
    func waitForLog<R>(timeout: Double, what: String, _ predicate: (String) -> R?) throws -> R {
        let deadline = Date().addingTimeInterval(patient(timeout))
        while Date() < deadline {
            if let r = predicate(stderrText) { return r }
            if !process.isRunning { break }
            usleep(20_000)
        }
        if let r = predicate(stderrText) { return r }
        throw HarnessError("timed out waiting for \(what) in the daemon's log:\n\(stderrText.suffix(3000))")
    }

    /// Waits for the process to exit; returns its status, killing it after `timeout`.
    @discardableResult
    func waitForExit(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(patient(timeout))
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    /// VmRSS in KiB from /proc/PID/status.
    func residentKiB() -> Int? { statusKiB("VmRSS") }

    /// A KiB field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`).
    func statusKiB(_ field: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        }
        return nil
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Plays PCM into a FIFO that ALSA's `file` plugin reads as its `infile`, one period per write(2) (the plugin
/// does not retry a short read), paced at `speed` times real time. After the audio it goes on writing quiet
/// noise, as a real microphone would, until `finish()`: a FIFO left open without data would block the plugin's
/// read (and so the capture thread) indefinitely. Writes while no reader has the FIFO open (capture restarted)
/// fail with EPIPE and are skipped.
final class PacedFIFOFeeder: @unchecked Sendable {
    let path: String
    private var audio: Data   // guarded by `lock` (the test may `append`)
    private let speed: Double
    private let start = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var chunkBytes = 0
    private var opened = false
    private var finished = false
    /// Writing pauses once this many bytes of the audio are played, until `release()`.
    private var holdAt: Int?
    private let resume = DispatchSemaphore(value: 0)
    let written = Waiter<Int>()

    private var isFinished: Bool {
        lock.lock()
        defer { lock.unlock() }
        return finished
    }

    init(path: String, audio: Data, speed: Double) throws {
        self.path = path
        self.audio = audio
        self.speed = speed
        guard mkfifo(path, 0o600) == 0 else { throw HarnessError("mkfifo \(path): errno \(errno)") }
    }

    /// Starts the writer: it opens the FIFO (blocking until ALSA opens it) and waits for `begin`.
    func startWriter() {
        let thread = Thread { [self] in
            let fd = open(self.path, O_WRONLY)
            self.lock.lock()
            self.opened = fd >= 0
            self.lock.unlock()
            if fd >= 0 {
                self.start.wait()
                self.lock.lock()
                let chunk = self.chunkBytes
                self.lock.unlock()
                if chunk > 0 { self.play(fd: fd, chunk: chunk) }
                close(fd)
            }
            self.done.signal()
        }
        thread.name = "fifo-feeder"
        thread.start()
    }

    private func play(fd: Int32, chunk: Int) {
        let secondsPerChunk = Double(chunk / 2) / 16000 / speed
        var began = Date()
        var offset = 0
        var index = 0
        var noiseState: UInt64 = 0x2545_F491_4F6C_DD1D
        while !isFinished {
            var piece = [UInt8](repeating: 0, count: chunk)
            lock.lock()
            let audio = self.audio
            let holdAt = self.holdAt
            lock.unlock()
            if let holdAt, offset >= holdAt {
                let held = Date()
                resume.wait()
                began = began.addingTimeInterval(Date().timeIntervalSince(held))
                continue
            }
            if offset < audio.count {
                let length = min(chunk, audio.count - offset)  // the last chunk is padded with silence
                piece.withUnsafeMutableBytes { raw in
                    audio.copyBytes(to: raw.bindMemory(to: UInt8.self), from: (audio.startIndex + offset)..<(audio.startIndex + offset + length))
                }
                offset += length
                written.append(offset)
            } else {
                for i in stride(from: 0, to: chunk, by: 2) {
                    noiseState = noiseState &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                    let sample = Int16(truncatingIfNeeded: Int64(noiseState >> 33) % 33 - 16)
                    piece[i] = UInt8(truncatingIfNeeded: sample)
                    piece[i + 1] = UInt8(truncatingIfNeeded: sample >> 8)
                }
            }
            _ = write(fd, piece, chunk)  // EPIPE while capture is being restarted
            index += 1
            let wait = began.addingTimeInterval(Double(index) * secondsPerChunk).timeIntervalSinceNow
            if wait > 0 { usleep(useconds_t(wait * 1_000_000)) }
        }
    }

    /// Plays `more` once what was given before has been played (at once, if the writer is in its quiet noise).
    func append(_ more: Data) {
        lock.lock()
        audio += more
        lock.unlock()
    }

    /// Pauses writing once `bytes` of the audio are played (rounded up to a period), until `release()`: capture
    /// then waits in its read, as with a microphone that delivers nothing, and the speech so far stays open.
    func hold(atByte bytes: Int) {
        lock.lock()
        holdAt = bytes
        lock.unlock()
    }

    /// Ends `hold(atByte:)`.
    func release() {
        lock.lock()
        holdAt = nil
        lock.unlock()
        resume.signal()
    }

    /// Lets the writer go with `periodFrames` frames per write.
    func begin(periodFrames: Int) {
        lock.lock()
        chunkBytes = min(max(1, periodFrames), 2048) * 2
        lock.unlock()
        start.signal()
    }

    /// Stops writing, closes the FIFO and waits for the writer.
    func finish() {
        lock.lock()
        if finished {
            lock.unlock()
            return
        }
        finished = true
        let wasOpened = opened
        lock.unlock()
        var fd: Int32 = -1
        if !wasOpened { fd = open(path, O_RDONLY | O_NONBLOCK) }  // lets a writer blocked in open(2) through
        start.signal()
        resume.signal()
        done.wait()
        if fd >= 0 { close(fd) }
    }
}

/// A blocking Wyoming client over a Unix socket.
final class WyomingTestClient {
    private var fd: Int32
    private var buffer: [UInt8] = []
    var timeout: Double = 120

    init(unixPath: String) throws {
        fd = try TestSocket.connect(unixPath: unixPath)
    }

    init(tcpPort: Int) throws {
        fd = try TestSocket.connect(tcpPort: tcpPort)
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    func send(_ event: WyomingEvent) throws { try sendRaw(event.encoded()) }

    /// Sends bytes as they are (for malformed or hostile input).
    func sendRaw(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw HarnessError("send: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    private func fill() throws {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(patient(timeout) * 1000)) > 0 else { throw HarnessError("no Wyoming answer within \(patient(timeout)) s") }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &chunk, chunk.count, 0)
        guard n > 0 else { throw HarnessError("the server closed the connection") }
        buffer += chunk[0..<n]
    }

    private func read(_ count: Int) throws -> [UInt8] {
        while buffer.count < count { try fill() }
        defer { buffer.removeFirst(count) }
        return Array(buffer[0..<count])
    }

    /// Reads one event: header line, optional data, optional payload.
    func receive() throws -> (type: String, data: [String: JSONValue]) {
        var newline: Int?
        while newline == nil {
            newline = buffer.firstIndex(of: UInt8(ascii: "\n"))
            if newline == nil { try fill() }
        }
        let line = Array(buffer[0..<newline!])
        buffer.removeFirst(newline! + 1)
        let header = try JSONDecoder().decode([String: JSONValue].self, from: Data(line))
        var data = header["data"]?.objectValue ?? [:]
        if let length = header["data_length"]?.intValue, length > 0 {
            let extra = try JSONDecoder().decode([String: JSONValue].self, from: Data(try read(length)))
            data.merge(extra) { _, new in new }
        }
        if let length = header["payload_length"]?.intValue, length > 0 { _ = try read(length) }
        return (header["type"]?.stringValue ?? "", data)
    }

    /// Sends `transcribe`, the audio in 100 ms chunks, `audio-stop`; returns the transcript text.
    func transcribe(pcm16 audio: Data, rate: Int = 16000) throws -> String {
        try sendAudio(pcm16: audio, rate: rate)
        while true {
            let event = try receive()
            if event.type == "transcript" { return event.data["text"]?.stringValue ?? "" }
            if event.type == "error" {
                throw HarnessError("Wyoming error: \(event.data["text"]?.stringValue ?? "?") (\(event.data["code"]?.stringValue ?? "?"))")
            }
        }
    }

    /// Sends `transcribe`, the audio in 100 ms chunks and `audio-stop`, without waiting for the answer.
    func sendAudio(pcm16 audio: Data, rate: Int = 16000) throws {
        let format: [String: JSONValue] = ["rate": .number(Double(rate)), "width": 2, "channels": 1]
        try send(WyomingEvent(type: "transcribe", data: ["language": "en"]))
        try send(WyomingEvent(type: "audio-start", data: format))
        let step = rate / 10 * 2
        var offset = 0
        while offset < audio.count {
            let end = min(audio.count, offset + step)
            try send(WyomingEvent(type: "audio-chunk", data: format, payload: Array(audio[audio.startIndex + offset..<audio.startIndex + end])))
            offset = end
        }
        try send(WyomingEvent(type: "audio-stop"))
    }
}
