import Foundation
#if canImport(Glibc)
import Glibc
#endif
import XCTest

/// A private temporary directory removed at the end of the test.
final class TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("myqasr-capture-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    deinit { try? FileManager.default.removeItem(at: url) }
}

/// Synthesised test audio.
enum Signal {
    static func tone(frequency: Double, amplitude: Double, seconds: Double, rate: Int = 16_000) -> [Float] {
        let count = Int(seconds * Double(rate))
        return (0..<count).map { Float(amplitude * sin(2 * Double.pi * frequency * Double($0) / Double(rate))) }
    }

    /// Deterministic uniform noise in -amplitude...amplitude.
    static func noise(amplitude: Double, count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [Float] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let unit = Double(state >> 11) / Double(1 << 53)
            return Float(amplitude * (2 * unit - 1))
        }
    }

    static func int16(_ samples: [Float]) -> [Int16] {
        samples.map { Int16(max(-32768, min(32767, ($0 * 32768).rounded()))) }
    }

    static func bytes(_ samples: [Int16]) -> Data {
        samples.withUnsafeBufferPointer { Data(buffer: $0) }  // little-endian host
    }
}

/// ALSA configuration text for a capture PCM that reads a raw file (or FIFO).
func filePCMConfiguration(name: String, infile: String) -> String {
    """
    pcm.\(name) {
        type file
        slave.pcm "null"
        file "/dev/null"
        infile "\(infile)"
        format "raw"
    }
    """
}

/// Feeds bytes into a FIFO from its own thread and keeps the FIFO open (so ALSA's file
/// plugin blocks instead of repeating the last chunk) until `finish()`.
///
/// ALSA's `file` plugin fills each period with a single read(2) of the infile and does not
/// retry a short read, so a FIFO must never hold a partial period. The feeder therefore
/// waits for `begin(chunkBytes:)` (the period size, known from the `.opened` event) and
/// writes exactly one period per write(2); writes up to PIPE_BUF bytes are atomic.
final class FIFOFeeder {
    let path: String
    private let data: Data
    private let chunkReady = DispatchSemaphore(value: 0)
    private let release = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var opened = false
    private var finished = false
    private var chunkBytes = 0

    init(path: String, data: Data) throws {
        self.path = path
        self.data = data
        guard mkfifo(path, 0o600) == 0 else {
            throw NSError(domain: "FIFOFeeder", code: Int(errno),
                          userInfo: [NSLocalizedDescriptionKey: "mkfifo \(path) failed: errno \(errno)"])
        }
    }

    /// Starts the writer thread; it blocks in open(2) until ALSA opens the FIFO for reading,
    /// then waits for `begin(chunkBytes:)`.
    func start() {
        let thread = Thread { [self] in
            let fd = open(self.path, O_WRONLY)
            self.lock.lock()
            self.opened = fd >= 0
            self.lock.unlock()
            if fd >= 0 {
                self.chunkReady.wait()
                self.lock.lock()
                let chunk = self.chunkBytes
                self.lock.unlock()
                if chunk > 0 {
                    self.data.withUnsafeBytes { raw in
                        var offset = 0
                        while offset < raw.count {
                            let length = min(chunk, raw.count - offset)
                            let written = write(fd, raw.baseAddress! + offset, length)
                            if written <= 0 { break }
                            offset += written
                        }
                    }
                }
                self.release.wait()
                close(fd)
            }
            self.done.signal()
        }
        thread.name = "fifo-feeder"
        thread.start()
    }

    /// Lets the writer start, one `chunkBytes` write at a time (at most PIPE_BUF = 4096).
    func begin(chunkBytes: Int) {
        lock.lock()
        let first = self.chunkBytes == 0
        if first { self.chunkBytes = min(max(2, chunkBytes), 4096) }
        lock.unlock()
        if first { chunkReady.signal() }
    }

    /// Closes the FIFO (the reader then sees end of file) and waits for the writer thread.
    func finish() {
        lock.lock()
        if finished {
            lock.unlock()
            return
        }
        finished = true
        let wasOpened = opened
        lock.unlock()
        if !wasOpened {
            // Nobody opened the reading side: open it ourselves so the writer's open returns.
            let fd = open(path, O_RDONLY | O_NONBLOCK)
            chunkReady.signal()
            release.signal()
            done.wait()
            if fd >= 0 { close(fd) }
        } else {
            chunkReady.signal()
            release.signal()
            done.wait()
        }
    }
}

/// Asserts two sample sequences are identical, reporting the first difference (not both arrays).
func assertSameSamples<T: Equatable>(_ actual: [T], _ expected: [T], _ message: String = "",
                                     file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        return XCTFail("\(message): \(actual.count) samples, expected \(expected.count)", file: file, line: line)
    }
    if let index = actual.indices.first(where: { actual[$0] != expected[$0] }) {
        XCTFail("\(message): first difference at sample \(index): \(actual[index]) != \(expected[index])",
                file: file, line: line)
    }
}

/// A thread-safe accumulator for samples delivered on the capture thread.
final class SampleCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var samples: [Int16] = []
    private let target: Int
    private let reached: XCTestExpectation

    init(target: Int, reached: XCTestExpectation) {
        self.target = target
        self.reached = reached
    }

    func append(_ chunk: UnsafeBufferPointer<Int16>) {
        lock.lock()
        let before = samples.count
        if before < target { samples.append(contentsOf: chunk) }
        let after = samples.count
        lock.unlock()
        if before < target && after >= target { reached.fulfill() }
    }

    var collected: [Int16] {
        lock.lock()
        defer { lock.unlock() }
        return samples
    }
}

/// Counts zero crossings (sign changes) of a signal.
func zeroCrossings<S: Collection>(_ samples: S) -> Int where S.Element == Int16 {
    var count = 0
    var previous: Int16?
    for sample in samples where sample != 0 {
        if let previous, (previous < 0) != (sample < 0) { count += 1 }
        previous = sample
    }
    return count
}

func rms<S: Collection>(_ samples: S) -> Double where S.Element == Int16 {
    guard !samples.isEmpty else { return 0 }
    let sum = samples.reduce(0.0) { $0 + Double($1) * Double($1) }
    return (sum / Double(samples.count)).squareRoot()
}

/// A value shared between a test and a worker thread.
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value

    init(_ value: Value) { stored = value }

    var value: Value {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }

    func mutate(_ change: (inout Value) -> Void) {
        lock.lock()
        change(&stored)
        lock.unlock()
    }
}

extension Signal {
    /// Background noise at about -65 dBFS with 440 Hz tone bursts (amplitude 0.3) mixed in.
    static func bursts(seconds: Double, bursts: [(start: Double, length: Double)]) -> [Float] {
        let rate = Double(16_000)
        var samples = noise(amplitude: 0.001, count: Int(seconds * rate))
        for burst in bursts {
            let tone = tone(frequency: 440, amplitude: 0.3, seconds: burst.length)
            let offset = Int(burst.start * rate)
            for (index, value) in tone.enumerated() where offset + index < samples.count {
                samples[offset + index] += value
            }
        }
        return samples
    }
}
