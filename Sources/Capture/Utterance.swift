import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One stretch of speech cut from the captured stream: 16 kHz mono Float samples in -1...1.
///
/// The utterance owns its samples in a single allocation of exactly the right size.
/// `wipe()` zeroes them (with `explicit_bzero`) and deinit does the same, so audio does
/// not outlive its use. `withUnsafeSamples` gives access without copying; `samples`
/// returns a copy that the caller is then responsible for.
public final class Utterance: @unchecked Sendable, CustomStringConvertible {
    /// Why the segmenter ended an utterance.
    public enum EndReason: String, Sendable, Equatable {
        /// Silence lasted for the hang-over time.
        case silence
        /// The maximum utterance length was reached; speech may continue in the next one.
        case maximumLength
        /// The stream ended (capture stopped or `finish()` was called) during speech.
        case endOfStream
        /// Samples were dropped in the ring buffer, so the stream has a gap here.
        case gap
        /// Not ended: a copy of an utterance still being spoken, for a partial transcript.
        case inProgress
    }

    /// Stream position (samples since capture started) of the first sample.
    public let streamPosition: Int64
    /// Number of samples.
    public let sampleCount: Int
    /// Why the utterance ended.
    public let endReason: EndReason

    private let lock = NSLock()
    private let storage: UnsafeMutableBufferPointer<Float>
    private var wiped = false

    /// Creates an utterance holding a copy of `samples` (16 kHz mono).
    public convenience init(samples: [Float], streamPosition: Int64 = 0, endReason: EndReason = .silence) {
        let storage = samples.withUnsafeBufferPointer { Utterance.makeStorage(copying: $0) }
        self.init(storage: storage, count: samples.count, streamPosition: streamPosition, endReason: endReason)
    }

    /// Creates an utterance holding a copy of `source`.
    convenience init(copying source: UnsafeBufferPointer<Float>, streamPosition: Int64, endReason: EndReason) {
        self.init(storage: Utterance.makeStorage(copying: source), count: source.count,
                  streamPosition: streamPosition, endReason: endReason)
    }

    private init(storage: UnsafeMutableBufferPointer<Float>, count: Int, streamPosition: Int64, endReason: EndReason) {
        self.storage = storage
        self.sampleCount = count
        self.streamPosition = streamPosition
        self.endReason = endReason
    }

    private static func makeStorage(copying source: UnsafeBufferPointer<Float>) -> UnsafeMutableBufferPointer<Float> {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: max(1, source.count))
        buffer.initialize(repeating: 0)
        if let base = source.baseAddress, source.count > 0 {
            buffer.baseAddress!.update(from: base, count: source.count)
        }
        return buffer
    }

    deinit {
        explicit_bzero(storage.baseAddress!, storage.count * MemoryLayout<Float>.stride)
        storage.deallocate()
    }

    /// Start time in seconds since capture started.
    public var startTime: TimeInterval { Double(streamPosition) / Double(CaptureFormat.sampleRate) }
    /// Duration in seconds.
    public var duration: TimeInterval { Double(sampleCount) / Double(CaptureFormat.sampleRate) }
    /// End time in seconds since capture started.
    public var endTime: TimeInterval { startTime + duration }

    /// Whether `wipe()` has been called.
    public var isWiped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return wiped
    }

    /// A copy of the samples (all zeros after `wipe()`). The copy is not covered by `wipe()`.
    public var samples: [Float] {
        withUnsafeSamples { Array($0) }
    }

    /// Calls `body` with the samples in place (no copy); do not let the pointer escape.
    public func withUnsafeSamples<Result>(_ body: (UnsafeBufferPointer<Float>) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(UnsafeBufferPointer(rebasing: storage[0..<sampleCount]))
    }

    /// Zeroes the samples in memory; afterwards they read as silence.
    public func wipe() {
        lock.lock()
        explicit_bzero(storage.baseAddress!, storage.count * MemoryLayout<Float>.stride)
        wiped = true
        lock.unlock()
    }

    /// A one-line summary (never the audio).
    public var description: String {
        "utterance at \(String(format: "%.2f", startTime)) s, \(String(format: "%.2f", duration)) s long, ended by \(endReason.rawValue)"
    }
}
