import Capture
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Serving
import WhisperEngine

/// Sees every live utterance once, after it is transcribed and before it is wiped: the place where the
/// personalisation statistics plug in. Called on a transcription worker thread, with that worker's model.
public protocol UtteranceObserver: AnyObject, Sendable {
    /// One utterance, still holding its audio; do not keep `utterance` or copies of its samples.
    func observe(utterance: Utterance, transcript: Transcript, model: WhisperModel)
    /// Activation-statistics samples gathered so far (reported by `status`).
    var statisticsSamples: Int { get }
    /// Deletes everything gathered (the control `forget` command).
    func forget()
}

/// Why a transcription request was not carried out.
public enum TranscriptionQueueError: Error, Equatable, CustomStringConvertible {
    /// Every worker is busy and the queue is full.
    case busy(queueDepth: Int)
    /// The daemon is shutting down.
    case shuttingDown

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .busy(let depth): return "the daemon is busy (\(depth) requests already waiting); try again shortly"
        case .shuttingDown: return "the daemon is shutting down"
        }
    }
}

/// What a finished live utterance produced, for counting and publishing (no audio).
public struct LiveResult: Sendable {
    /// The transcript.
    public var transcript: LiveTranscript
    /// Seconds of audio.
    public var audioSeconds: Double
    /// Seconds spent transcribing.
    public var processingSeconds: Double
}

/// Dedicated transcription threads sharing one bounded queue of socket requests and live utterances.
///
/// Each worker owns one `SpeechRecognizer`, rebuilt when the `ModelStore` generation changes (between jobs,
/// never during one). Live utterances have their own lane and are taken first; when their lane is full the
/// oldest waiting one is wiped and dropped, so the microphone never waits for anybody. Requests beyond the
/// queue depth are refused with `TranscriptionQueueError.busy`.
public final class TranscriptionWorkers: @unchecked Sendable {
    private enum Job {
        case request(samples: [Float], language: String?, reply: @Sendable (Result<Transcript, Error>) -> Void)
        case live(Utterance)
    }

    private let store: ModelStore
    private let threads: Int
    private let queueDepth: Int
    private let liveDepth: Int
    private let logger: Logger
    private let condition = NSCondition()
    private var requests: [Job] = []
    private var live: [Utterance] = []
    private var stopping = false
    private var running = 0
    private let finished = DispatchGroup()
    private let observerBox = ObserverBox()
    private let onLiveResult: @Sendable (LiveResult) -> Void
    private var droppedLive = 0
    private var busyWorkers = 0

    /// Creates `count` workers (not yet started) transcribing with `threads` threads each.
    public init(store: ModelStore, count: Int, threads: Int, queueDepth: Int, liveDepth: Int = 8,
                logger: Logger, onLiveResult: @escaping @Sendable (LiveResult) -> Void) {
        self.store = store
        self.threads = threads
        self.queueDepth = queueDepth
        self.liveDepth = liveDepth
        self.logger = logger
        self.onLiveResult = onLiveResult
        for index in 0..<count { startThread(index: index) }
    }

    /// The utterance observer (nil: none).
    public var utteranceObserver: UtteranceObserver? {
        get { observerBox.value }
        set { observerBox.value = newValue }
    }

    /// Live utterances dropped because transcription fell behind.
    public var droppedLiveUtterances: Int {
        condition.lock()
        defer { condition.unlock() }
        return droppedLive
    }

    /// Jobs waiting plus jobs running.
    public var load: (waiting: Int, running: Int) {
        condition.lock()
        defer { condition.unlock() }
        return (requests.count + live.count, busyWorkers)
    }

    private func startThread(index: Int) {
        finished.enter()
        let thread = Thread { [self] in
            self.work()
            self.finished.leave()
        }
        thread.name = "myqasr.worker.\(index)"
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// Queues a request and waits for its transcript.
    public func transcribe(samples: [Float], language: String?) async throws -> Transcript {
        try await withCheckedThrowingContinuation { continuation in
            let job = Job.request(samples: samples, language: language) { continuation.resume(with: $0) }
            condition.lock()
            if stopping {
                condition.unlock()
                continuation.resume(throwing: TranscriptionQueueError.shuttingDown)
                return
            }
            if requests.count >= queueDepth {
                condition.unlock()
                continuation.resume(throwing: TranscriptionQueueError.busy(queueDepth: queueDepth))
                return
            }
            requests.append(job)
            condition.signal()
            condition.unlock()
        }
    }

    /// Queues a live utterance; never blocks. When the live lane is full the oldest waiting utterance is
    /// wiped and dropped.
    public func submit(live utterance: Utterance) {
        condition.lock()
        if stopping {
            condition.unlock()
            utterance.wipe()
            return
        }
        var dropped: Utterance?
        if live.count >= liveDepth {
            dropped = live.removeFirst()
            droppedLive += 1
        }
        live.append(utterance)
        condition.signal()
        condition.unlock()
        if let dropped {
            dropped.wipe()
            logger.warning("live utterance dropped: transcription is behind", metadata: ["waiting": "\(liveDepth)"])
        }
    }

    /// Stops the workers: waiting requests fail with `shuttingDown`, waiting utterances are wiped, running jobs
    /// finish first.
    public func shutdown() {
        condition.lock()
        stopping = true
        let pending = requests
        let pendingLive = live
        requests.removeAll()
        live.removeAll()
        condition.broadcast()
        condition.unlock()
        for job in pending {
            if case .request(_, _, let reply) = job { reply(.failure(TranscriptionQueueError.shuttingDown)) }
        }
        for utterance in pendingLive { utterance.wipe() }
        finished.wait()
    }

    private func nextJob() -> Job? {
        condition.lock()
        defer { condition.unlock() }
        while !stopping && live.isEmpty && requests.isEmpty { condition.wait() }
        if stopping { return nil }
        busyWorkers += 1
        if !live.isEmpty { return .live(live.removeFirst()) }
        return requests.removeFirst()
    }

    private func jobDone() {
        condition.lock()
        busyWorkers -= 1
        let idle = busyWorkers == 0 && live.isEmpty && requests.isEmpty
        condition.unlock()
        // The engine keeps freed window scratch for the next window; once nothing is waiting,
        // an idle daemon gives it back.
        if idle { WhisperModel.releaseFreedMemory() }
    }

    /// One worker thread: its own recognizer, rebuilt between jobs when the model changed.
    private func work() {
        var recognizer: SpeechRecognizer?
        var generation = 0
        while let job = nextJob() {
            defer { jobDone() }
            let entry = store.current
            if recognizer == nil || entry.generation != generation {
                do {
                    recognizer = try SpeechRecognizer(model: entry.provided.model, threads: threads)
                    generation = entry.generation
                } catch {
                    logger.error("cannot prepare the model for transcription: \(error)")
                    recognizer = nil
                    fail(job, error)
                    continue
                }
            }
            guard let recognizer else { continue }
            switch job {
            case .request(let samples, let language, let reply):
                var options = TranscriptionOptions()
                options.decoding.language = language
                let started = DispatchTime.now()
                let result = Result { try recognizer.transcribe(samples: samples, options: options) }
                logger.debug("request transcribed", metadata: [
                    "audio_s": "\(String(format: "%.2f", Double(samples.count) / 16000))",
                    "took_s": "\(String(format: "%.2f", Self.seconds(since: started)))",
                ])
                reply(result)
            case .live(let utterance):
                runLive(utterance, recognizer: recognizer)
            }
        }
    }

    private func fail(_ job: Job, _ error: Error) {
        switch job {
        case .request(_, _, let reply): reply(.failure(error))
        case .live(let utterance): utterance.wipe()
        }
    }

    private func runLive(_ utterance: Utterance, recognizer: SpeechRecognizer) {
        defer { utterance.wipe() }
        let started = DispatchTime.now()
        var samples = utterance.withUnsafeSamples { Array($0) }
        defer {
            samples.withUnsafeMutableBytes { raw in
                if let base = raw.baseAddress { explicit_bzero(base, raw.count) }
            }
        }
        let transcript: Transcript
        do {
            transcript = try recognizer.transcribe(samples: samples)
        } catch {
            logger.error("live utterance failed to transcribe: \(error)")
            return
        }
        observerBox.value?.observe(utterance: utterance, transcript: transcript, model: recognizer.model)
        // Hook, then wipe, then publish: listeners never see a transcript whose audio still exists.
        let start = utterance.startTime, end = utterance.endTime, duration = utterance.duration
        utterance.wipe()
        let took = Self.seconds(since: started)
        let text = transcript.text.trimmingCharacters(in: .whitespacesAndNewlines)
        onLiveResult(LiveResult(
            transcript: LiveTranscript(text: text, start: start, end: end, language: transcript.language),
            audioSeconds: duration, processingSeconds: took))
    }

    static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}

/// A lock-protected optional observer.
final class ObserverBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: UtteranceObserver?

    var value: UtteranceObserver? {
        get {
            lock.lock()
            defer { lock.unlock() }
            return stored
        }
        set {
            lock.lock()
            stored = newValue
            lock.unlock()
        }
    }
}
