import Capture
import Foundation
import Logging
import Serving

/// The microphone for the daemon: one `CapturePipeline` at a time, started, stopped and restarted (reload,
/// `forget`) on request, handing each utterance to `deliver` (the workers' queue) on the detector thread, and
/// keeping the state `status` reports. Capture events are logged once, by `AlsaCapture`; here they only move
/// the state.
final class LiveCapture: @unchecked Sendable {  // @unchecked: `pipeline` and `state` are guarded by `lock`
    private let logger: Logger
    private let deliver: @Sendable (Utterance) -> Void
    private let deliverPartial: @Sendable (Utterance) -> Void
    private let lock = NSLock()
    private var pipeline: CapturePipeline?
    private var current: CaptureState = .disabled
    /// One more per pipeline: events of a pipeline that was replaced are ignored.
    private var generation = 0

    /// Capture that hands utterances to `deliver`, and copies of utterances still being spoken to
    /// `deliverPartial`.
    init(logger: Logger, deliverPartial: @escaping @Sendable (Utterance) -> Void = { _ in },
         deliver: @escaping @Sendable (Utterance) -> Void) {
        self.logger = logger
        self.deliver = deliver
        self.deliverPartial = deliverPartial
    }

    /// `capturing`, `paused` (until the device opens), `failed` or `disabled`.
    var state: CaptureState {
        lock.lock()
        defer { lock.unlock() }
        return current
    }

    /// Starts a pipeline with `configuration` (stopping the running one first).
    func start(_ configuration: CapturePipelineConfiguration) throws {
        stop()
        let pipeline: CapturePipeline
        lock.lock()
        generation += 1
        let generation = self.generation
        lock.unlock()
        do {
            pipeline = try CapturePipeline(
                configuration: configuration, logger: logger,
                onEvent: { [weak self] event in self?.note(event, generation: generation) },
                onPartial: { [weak self] in self?.hand($0, partial: true, generation: generation) ?? $0.wipe() },
                onUtterance: { [weak self] in self?.hand($0, partial: false, generation: generation) ?? $0.wipe() })
            lock.lock()
            self.pipeline = pipeline
            current = .paused  // until the device opens
            lock.unlock()
            try pipeline.start()
        } catch {
            lock.lock()
            self.pipeline = nil
            current = .disabled
            lock.unlock()
            throw DaemonError.capture(reason: "\(error)")
        }
    }

    /// Stops capture; audio not yet cut into utterances is zeroed and dropped. Blocks for at most 3 s.
    func stop() {
        lock.lock()
        let pipeline = self.pipeline
        self.pipeline = nil
        current = .disabled
        lock.unlock()
        guard let pipeline else { return }
        // stop() waits for the capture thread, which a driver can hold inside a blocking read (ALSA's file
        // plugin on a FIFO without data). Do not let that wedge shutdown, reload or forget: wait a bounded time;
        // the pipeline still stops (and zeroes its buffers) as soon as the read returns.
        let stopped = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            pipeline.stop()
            stopped.signal()
        }
        if stopped.wait(timeout: .now() + 3) == .timedOut {
            logger.warning("capture did not stop within 3 s (the device is blocked in a read); continuing without it")
        }
        let statistics = pipeline.statistics
        logger.info("capture stopped", metadata: [
            "utterances": "\(statistics.utterances)", "overruns": "\(statistics.overruns)",
            "dropped_samples": "\(statistics.droppedSamples)",
        ])
    }

    /// Hands on an utterance of the pipeline of `generation` only while that pipeline is the current one: one that
    /// a stop left behind (blocked in a read past `stop`'s wait) wipes what it still makes, so nothing heard before
    /// a `forget` or a reload reaches the workers after it.
    private func hand(_ utterance: Utterance, partial: Bool, generation: Int) {
        lock.lock()
        let current = pipeline != nil && generation == self.generation
        lock.unlock()
        if !current {
            utterance.wipe()
        } else if partial {
            deliverPartial(utterance)
        } else {
            deliver(utterance)
        }
    }

    private func note(_ event: CaptureEvent, generation: Int) {
        let state: CaptureState
        switch event {
        case .opened: state = .capturing
        case .unavailable, .lost: state = .failed
        case .retrying, .overrun, .stopped: return
        }
        lock.lock()
        if pipeline != nil && generation == self.generation { current = state }
        lock.unlock()
    }
}
