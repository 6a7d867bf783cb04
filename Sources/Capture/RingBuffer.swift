import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Counters and fill level of a `PrivacyRingBuffer`.
public struct RingBufferStatistics: Sendable, Equatable {
    /// Capacity in samples.
    public var capacity: Int
    /// Samples currently held (written, not yet read or dropped).
    public var buffered: Int
    /// Samples ever offered to `write`.
    public var written: Int64
    /// Samples handed to readers.
    public var consumed: Int64
    /// Samples lost because the buffer was full (overwritten or never stored).
    public var dropped: Int64
    /// Whether the storage is locked in RAM (`mlock`), so it cannot reach swap.
    public var lockedInMemory: Bool
}

/// Where a chunk returned by `PrivacyRingBuffer.read` sits in the captured stream.
public struct RingBufferChunk: Sendable, Equatable {
    /// Number of samples copied into the caller's buffer.
    public var count: Int
    /// Stream position (samples since the buffer was created or cleared) of the first sample.
    /// A jump from the previous chunk's end means samples were dropped in between.
    public var streamPosition: Int64
}

/// A bounded, RAM-only buffer of 16 kHz mono audio between capture and the detector.
///
/// Privacy properties:
/// - the storage is allocated once (page-aligned, whole pages) and locked with `mlock`
///   so it is never written to swap; when `mlock` is not permitted a warning is logged
///   once per process and the buffer works unlocked;
/// - samples are zeroed with `explicit_bzero` (which the optimiser may not remove) as soon
///   as they are read, when unread samples are released to make room, on `clear()`, and
///   on deinit;
/// - when full, the oldest samples are dropped (and counted), so memory stays bounded.
///
/// Thread safety: any number of threads may call the methods; the intended use is one
/// producer (the capture thread) and one consumer. A single lock guards the indices and
/// copies; a period is a few hundred samples, so the lock is held for microseconds.
public final class PrivacyRingBuffer: @unchecked Sendable {
    /// Capacity in samples.
    public let capacity: Int
    /// Capacity in seconds at `CaptureFormat.sampleRate`.
    public var capacitySeconds: Double { Double(capacity) / Double(CaptureFormat.sampleRate) }

    private let storage: UnsafeMutablePointer<Int16>
    private let storageBytes: Int
    private let locked: Bool
    private let condition = NSCondition()
    /// Stream position of the oldest held sample.
    private var readPosition: Int64 = 0
    /// Stream position one past the newest held sample.
    private var writePosition: Int64 = 0
    private var consumedCount: Int64 = 0
    private var droppedCount: Int64 = 0
    private var closed = false

    private static let warningLock = NSLock()
    private static var warnedAboutMlock = false

    /// Allocates (and tries to lock) storage for `seconds` of 16 kHz mono audio.
    /// - Throws: `CaptureError.invalidParameter` when `seconds` is not positive or too large.
    public convenience init(seconds: Double, logger: Logger = Logger(label: "myqasr.capture.ring")) throws {
        guard seconds > 0, seconds <= 3600 else {
            throw CaptureError.invalidParameter("ring buffer length must be in (0, 3600] seconds, got \(seconds)")
        }
        try self.init(capacity: Int((seconds * Double(CaptureFormat.sampleRate)).rounded(.up)), logger: logger)
    }

    /// Allocates (and tries to lock) storage for `capacity` samples.
    /// - Throws: `CaptureError.invalidParameter` when `capacity` is not positive.
    public init(capacity: Int, logger: Logger = Logger(label: "myqasr.capture.ring")) throws {
        guard capacity > 0, capacity <= 3600 * CaptureFormat.sampleRate else {
            throw CaptureError.invalidParameter("ring buffer capacity must be in 1...\(3600 * CaptureFormat.sampleRate) samples, got \(capacity)")
        }
        self.capacity = capacity
        let page = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))
        let bytes = (capacity * MemoryLayout<Int16>.stride + page - 1) / page * page
        storageBytes = bytes
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: page)
        memset(raw, 0, bytes)
        storage = raw.bindMemory(to: Int16.self, capacity: bytes / MemoryLayout<Int16>.stride)
        if mlock(raw, bytes) == 0 {
            locked = true
        } else {
            let code = errno
            locked = false
            PrivacyRingBuffer.warningLock.lock()
            let first = !PrivacyRingBuffer.warnedAboutMlock
            PrivacyRingBuffer.warnedAboutMlock = true
            PrivacyRingBuffer.warningLock.unlock()
            if first {
                logger.warning("cannot lock the audio ring buffer in RAM (mlock: \(String(cString: strerror(code)))); it may be swapped out. Raise LimitMEMLOCK to fix.")
            }
        }
    }

    deinit {
        explicit_bzero(storage, storageBytes)
        if locked { munlock(storage, storageBytes) }
        UnsafeMutableRawPointer(storage).deallocate()
    }

    /// A snapshot of the counters.
    public var statistics: RingBufferStatistics {
        condition.lock()
        defer { condition.unlock() }
        return RingBufferStatistics(capacity: capacity, buffered: Int(writePosition - readPosition),
                                    written: writePosition, consumed: consumedCount,
                                    dropped: droppedCount, lockedInMemory: locked)
    }

    /// Appends samples, dropping (and zeroing) the oldest unread ones when there is no room.
    /// Writes after `close()` are ignored.
    public func write(_ samples: UnsafeBufferPointer<Int16>) {
        guard !samples.isEmpty, let base = samples.baseAddress else { return }
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return }
        let buffered = Int(writePosition - readPosition)
        let overflow = buffered + samples.count - capacity
        var input = base
        var remaining = samples.count
        if overflow > 0 {
            // Release the oldest held samples first ...
            let released = min(overflow, buffered)
            zero(from: readPosition, count: released)
            readPosition += Int64(released)
            // ... and if the input alone exceeds the capacity, only its tail is stored.
            let skipped = overflow - released
            if skipped > 0 {
                input += skipped
                remaining -= skipped
                writePosition += Int64(skipped)
                readPosition = writePosition
            }
            droppedCount += Int64(overflow)
        }
        var position = writePosition
        while remaining > 0 {
            let index = Int(position % Int64(capacity))
            let run = min(remaining, capacity - index)
            (storage + index).update(from: input, count: run)
            input += run
            remaining -= run
            position += Int64(run)
        }
        writePosition = position
        condition.broadcast()
    }

    /// Copies the oldest unread samples into `buffer` as Float in -1..<1, zeroes them in the
    /// ring, and returns where they sit in the stream. Waits up to `timeout` seconds
    /// (nil: forever, 0: not at all) for at least one sample; returns nil when nothing
    /// arrived in time or the buffer is closed and empty.
    public func read(into buffer: UnsafeMutableBufferPointer<Float>, timeout: TimeInterval? = 0) -> RingBufferChunk? {
        read(count: buffer.count, timeout: timeout) { source, offset, count in
            let destination = buffer.baseAddress! + offset
            for index in 0..<count {
                destination[index] = Float(source[index]) * (1.0 / 32768.0)
            }
        }
    }

    /// Copies the oldest unread samples into `buffer` unchanged, zeroes them in the ring, and
    /// returns where they sit in the stream. Waiting behaves as in the Float variant.
    public func read(into buffer: UnsafeMutableBufferPointer<Int16>, timeout: TimeInterval? = 0) -> RingBufferChunk? {
        read(count: buffer.count, timeout: timeout) { source, offset, count in
            (buffer.baseAddress! + offset).update(from: source, count: count)
        }
    }

    /// Marks the end of the stream: wakes waiting readers; later writes are ignored and
    /// reads return what is left, then nil.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    /// Whether `close()` has been called (and `reopen()` has not).
    public var isClosed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return closed
    }

    /// Accepts writes again after `close()`; held samples and counters are kept.
    public func reopen() {
        condition.lock()
        closed = false
        condition.unlock()
    }

    /// Discards and zeroes every held sample (they are not counted as dropped) and restarts
    /// the stream position at zero; the counters other than `buffered` are reset as well.
    public func clear() {
        condition.lock()
        explicit_bzero(storage, storageBytes)
        readPosition = 0
        writePosition = 0
        consumedCount = 0
        droppedCount = 0
        condition.unlock()
    }

    // MARK: - Internals

    private func read(count wanted: Int, timeout: TimeInterval?,
                      copy: (UnsafePointer<Int16>, Int, Int) -> Void) -> RingBufferChunk? {
        guard wanted > 0 else { return nil }
        condition.lock()
        defer { condition.unlock() }
        if writePosition == readPosition, !closed, timeout != 0 {
            let deadline = timeout.map { Date(timeIntervalSinceNow: $0) }
            while writePosition == readPosition, !closed {
                if let deadline {
                    if !condition.wait(until: deadline) { break }
                } else {
                    condition.wait()
                }
            }
        }
        let available = Int(writePosition - readPosition)
        guard available > 0 else { return nil }
        let count = min(available, wanted)
        let start = readPosition
        var position = start
        var copied = 0
        while copied < count {
            let index = Int(position % Int64(capacity))
            let run = min(count - copied, capacity - index)
            copy(storage + index, copied, run)
            explicit_bzero(storage + index, run * MemoryLayout<Int16>.stride)
            copied += run
            position += Int64(run)
        }
        readPosition = position
        consumedCount += Int64(count)
        return RingBufferChunk(count: count, streamPosition: start)
    }

    /// Zeroes `count` held samples starting at stream position `start` (lock held).
    private func zero(from start: Int64, count: Int) {
        var position = start
        var remaining = count
        while remaining > 0 {
            let index = Int(position % Int64(capacity))
            let run = min(remaining, capacity - index)
            explicit_bzero(storage + index, run * MemoryLayout<Int16>.stride)
            remaining -= run
            position += Int64(run)
        }
    }

    /// Test hook: a copy of the raw storage (capacity samples), to check that memory is zeroed.
    func storageSnapshot() -> [Int16] {
        condition.lock()
        defer { condition.unlock() }
        return Array(UnsafeBufferPointer(start: storage, count: capacity))
    }
}
