import Foundation
import Logging

/// Settings for a `CapturePipeline`.
public struct CapturePipelineConfiguration: Sendable, Equatable {
    /// The ALSA device and retry policy.
    public var capture: AlsaCaptureConfiguration
    /// Voice-activity thresholds and utterance timing.
    public var segmenter: SegmenterConfiguration
    /// Length of the privacy ring buffer between capture and the detector, in seconds.
    public var ringBufferSeconds: Double
    /// Seconds of speech between two copies of an utterance still being spoken handed to `onPartial` (the first
    /// after this much speech); 0: none.
    public var partialInterval: Double

    /// Creates a configuration.
    public init(
        capture: AlsaCaptureConfiguration = AlsaCaptureConfiguration(),
        segmenter: SegmenterConfiguration = SegmenterConfiguration(),
        ringBufferSeconds: Double = 10,
        partialInterval: Double = 0
    ) {
        self.capture = capture
        self.segmenter = segmenter
        self.ringBufferSeconds = ringBufferSeconds
        self.partialInterval = partialInterval
    }
}

/// Counters of a running or stopped `CapturePipeline`.
public struct CapturePipelineStatistics: Sendable, Equatable {
    /// Samples delivered by ALSA.
    public var samplesCaptured: Int64
    /// ALSA overruns recovered.
    public var overruns: Int
    /// Samples lost in the ring buffer because the detector fell behind.
    public var droppedSamples: Int64
    /// Utterances handed to `onUtterance`.
    public var utterances: Int
    /// Times the device was opened (more than one means it was lost and reopened).
    public var deviceOpens: Int
    /// Whether the ring buffer is locked in RAM.
    public var ringBufferLockedInMemory: Bool
}

/// Microphone to utterances: ALSA capture -> privacy ring buffer -> voice-activity
/// segmenter -> `onUtterance`.
///
/// Capture runs on its own thread (see `AlsaCapture`) and only copies periods into the
/// ring buffer; a second dedicated thread reads the ring buffer, runs the detector and
/// hands each finished utterance to `onUtterance` (which owns it from then on and must
/// not block: the daemon puts it in the transcription workers' bounded queue). There is
/// no queue here. A pipeline runs once: `start()`, then `stop()`. Audio still in the ring
/// buffer or in an unfinished utterance at `stop()` is discarded and zeroed, not handed
/// on. Both threads hold the pipeline while it runs: keep a reference and call `stop()`
/// (deinit cannot run before that).
public final class CapturePipeline: @unchecked Sendable {  // @unchecked: `phase`, `stopping` and the counters are guarded by `lock`
    /// The configuration in use.
    public let configuration: CapturePipelineConfiguration
    /// The ring buffer between capture and the detector.
    public let ringBuffer: PrivacyRingBuffer

    private let onUtterance: @Sendable (Utterance) -> Void
    private let onPartial: @Sendable (Utterance) -> Void
    private let logger: Logger
    private var capture: AlsaCapture!
    private let segmenter: UtteranceSegmenter

    private let lock = NSLock()
    private var phase = Phase.created
    private var stopping = false
    private var consumerDone: DispatchSemaphore?
    private var utteranceCount = 0

    private enum Phase { case created, running, stopped }

    /// Builds the pipeline: validates the settings and allocates the ring buffer and the
    /// segmenter's working memory. Nothing is opened until `start()`. `onEvent` gets the
    /// capture device's events (opened, overrun, lost, retrying, stopped: `AlsaCapture`
    /// logs them), `onUtterance` each finished utterance and `onPartial` every
    /// `partialInterval` seconds of speech a copy of the utterance still being spoken
    /// (`.inProgress`; before that utterance reaches `onUtterance`), all on the pipeline's
    /// threads and without blocking.
    /// - Throws: `CaptureError.invalidParameter` for inconsistent settings.
    public init(configuration: CapturePipelineConfiguration = CapturePipelineConfiguration(),
                logger: Logger = Logger(label: "myqasr.capture"),
                onEvent: @escaping @Sendable (CaptureEvent) -> Void = { _ in },
                onPartial: @escaping @Sendable (Utterance) -> Void = { _ in },
                onUtterance: @escaping @Sendable (Utterance) -> Void) throws {
        try configuration.capture.validate()
        guard configuration.ringBufferSeconds >= 0.1 else {
            throw CaptureError.invalidParameter("the ring buffer must hold at least 0.1 s, got \(configuration.ringBufferSeconds)")
        }
        guard configuration.partialInterval >= 0 else {
            throw CaptureError.invalidParameter("the partial interval must not be negative, got \(configuration.partialInterval)")
        }
        self.configuration = configuration
        self.logger = logger
        self.onUtterance = onUtterance
        self.onPartial = onPartial
        ringBuffer = try PrivacyRingBuffer(seconds: configuration.ringBufferSeconds, logger: logger)
        segmenter = try UtteranceSegmenter(configuration: configuration.segmenter)
        let ring = ringBuffer
        capture = AlsaCapture(
            configuration: configuration.capture,
            logger: logger,
            eventHandler: onEvent,
            sink: { samples in ring.write(samples) }
        )
    }

    deinit {
        stop()
    }

    /// Starts capture and detection; returns at once. A missing device is reported through
    /// `onEvent` and retried, not thrown.
    /// - Throws: `CaptureError.alreadyRunning` when started twice (a pipeline runs once),
    ///   `.systemResource` when a thread or pipe cannot be created.
    public func start() throws {
        lock.lock()
        defer { lock.unlock() }
        guard phase == .created else { throw CaptureError.alreadyRunning }
        try capture.start()
        phase = .running
        let done = DispatchSemaphore(value: 0)
        consumerDone = done
        let thread = Thread { [self] in
            self.consume()
            done.signal()
        }
        thread.name = "myqasr.vad"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Stops capture and detection and discards (zeroing) unprocessed audio; no utterance
    /// is handed on after it returns. Waits for both threads; safe to call twice.
    public func stop() {
        lock.lock()
        guard phase == .running else {
            if phase == .created { phase = .stopped }
            lock.unlock()
            return
        }
        phase = .stopped
        stopping = true
        let done = consumerDone
        lock.unlock()

        capture.stop()
        ringBuffer.close()
        done?.wait()
        ringBuffer.clear()
    }

    /// A snapshot of the counters.
    public var statistics: CapturePipelineStatistics {
        let captureStats = capture.statistics
        let ringStats = ringBuffer.statistics
        lock.lock()
        defer { lock.unlock() }
        return CapturePipelineStatistics(
            samplesCaptured: captureStats.framesCaptured,
            overruns: captureStats.overruns,
            droppedSamples: ringStats.dropped,
            utterances: utteranceCount,
            deviceOpens: captureStats.opens,
            ringBufferLockedInMemory: ringStats.lockedInMemory
        )
    }

    private var shouldStop: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    /// The detector thread: ring buffer -> segmenter -> `utterances`.
    private func consume() {
        let chunkLength = max(configuration.segmenter.detector.frameLength, CaptureFormat.sampleRate / 20)
        let chunk = UnsafeMutableBufferPointer<Float>.allocate(capacity: chunkLength)
        chunk.initialize(repeating: 0)
        defer {
            explicit_bzero(chunk.baseAddress!, chunk.count * MemoryLayout<Float>.stride)
            chunk.deallocate()
        }
        var partials = PartialSchedule(interval: configuration.partialInterval)
        while !shouldStop {
            guard let read = ringBuffer.read(into: chunk, timeout: nil) else { break }
            if shouldStop { break }
            let finished = segmenter.process(UnsafeBufferPointer(rebasing: chunk[0..<read.count]),
                                             at: read.streamPosition)
            for utterance in finished { publish(utterance) }
            if partials.due(utterance: segmenter.confirmedUtteranceStart, speech: segmenter.confirmedSpeechDuration),
               let snapshot = segmenter.snapshot() {
                onPartial(snapshot)
            }
        }
        segmenter.reset()
    }

    /// When the utterance being spoken is next copied for a partial transcript: after each `interval` seconds of
    /// its speech. The one place that sets the partials' pace.
    struct PartialSchedule {
        let interval: Double
        private var utterance: Int64?
        private var next = 0.0

        init(interval: Double) { self.interval = interval }

        /// True when the utterance starting at `utterance` (nil: none), with `speech` seconds of speech so far, is
        /// due a partial now.
        mutating func due(utterance start: Int64?, speech: Double) -> Bool {
            guard interval > 0, let start else {
                utterance = nil
                return false
            }
            if start != utterance {
                utterance = start
                next = interval
            }
            guard speech >= next else { return false }
            next = (speech / interval).rounded(.down) * interval + interval
            return true
        }
    }

    private func publish(_ utterance: Utterance) {
        logger.debug("capture: \(utterance)")
        lock.lock()
        utteranceCount += 1
        lock.unlock()
        onUtterance(utterance)
    }
}
