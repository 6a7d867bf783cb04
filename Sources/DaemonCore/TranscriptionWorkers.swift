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
}

/// Why a transcription request was not carried out.
public enum TranscriptionQueueError: Error, Equatable, CustomStringConvertible {
    /// The queue is full (and this client does not have fewer requests waiting than the one with the most).
    case busy(queueDepth: Int)
    /// The daemon is shutting down.
    case shuttingDown
    /// No model serves yet.
    case notReady

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .busy(let depth): return "the daemon is busy (\(depth) jobs already waiting); try again shortly"
        case .shuttingDown: return "the daemon is shutting down"
        case .notReady: return "the daemon is still starting"
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

/// Counters of the job queue, for `status`.
public struct QueueStatistics: Sendable, Equatable {
    /// Jobs waiting (live utterances and requests).
    public var waiting: Int
    /// Jobs being transcribed.
    public var running: Int
    /// Most jobs that may wait (`limits.queue_depth`).
    public var depth: Int
    /// Live utterances wiped unheard because the queue was full.
    public var droppedUtterances: Int
    /// Requests refused (or pushed out) as busy.
    public var refusedRequests: Int
    /// Requests whose client went away: dropped from the queue, or stopped while running.
    public var cancelledRequests: Int
}

/// Dedicated transcription threads and the one bounded queue that feeds them: live utterances straight from
/// capture and socket requests, at most `queueDepth` jobs waiting in all.
///
/// - Order: live utterances first (oldest first), but never twice in a row while a request waits, so a microphone
///   that hears speech without pause cannot starve the sockets; requests one per client in turn (round-robin over
///   the clients that have requests waiting, a client being a user id or a connection), so one client's backlog
///   cannot starve another's.
/// - When the queue is full: a live utterance pushes out the oldest waiting utterance (wiped, counted as dropped),
///   or, if none waits, the newest request of the client with the most waiting; a request pushes out the newest
///   request of the client with the most waiting if that client has at least two more than this one, else it is
///   refused. Either way a pushed-out or refused request gets `busy`.
/// - A request whose caller's task is cancelled (the server cancels it when the client disconnects) is removed
///   from the queue, or, if running, stops at its next window or decoding step (`Cancellation`).
/// - Partial passes (a copy of speech still going on: a live utterance from capture, or a Wyoming request's audio
///   so far) are the lowest priority and never delay a final result: at most one waits per source (a newer copy
///   replaces it), they do not count in the queue depth, a worker takes one only when no other job waits, and a
///   running one is stopped at its next window or decoding step when a final job finds no idle worker, or when
///   the final job of its own source arrives. This is the one place that decides whether a partial runs.
///
/// Each worker owns one `SpeechRecognizer`, rebuilt when the served model changes (between jobs, never during
/// one). The `ModelStore` tells the workers of each swap: an idle worker lets go of its recognizer (and so of the
/// old model) at once.
public final class TranscriptionWorkers: @unchecked Sendable {  // @unchecked: mutable state is guarded by `condition`
    private struct Request {
        let id: UInt64
        let client: String
        let samples: [Float]
        let language: String?
        let cancellation: Cancellation
        let reply: @Sendable (Result<Transcript, Error>) -> Void
    }

    private struct Live {
        let utterance: Utterance
        /// The `forgetLive` epoch it arrived in; an utterance from before a forget is not observed.
        let epoch: Int
    }

    /// A partial pass: `audio` is a copy of speech still going on; `deliver` gets its transcript, or nil when it
    /// was dropped or stopped (called with `condition` held, so it must only hand the result on).
    private struct Partial {
        let id: UInt64
        /// "live", or the connection of a streamed request: one partial per source waits at a time.
        let source: String
        let audio: Utterance
        let language: String?
        let cancellation: Cancellation
        /// Called once, with `condition` held: it must not wait for anything (no continuation resumed inline).
        let deliver: @Sendable (Transcript?) -> Void
    }

    private enum Job {
        case request(Request)
        case live(Live)
        case partial(Partial)
    }

    private enum Next {
        case job(Job)
        case release
        case stop
    }

    private let store: ModelStore
    private let threads: Int
    private let queueDepth: Int
    private let logger: Logger
    private let observer: UtteranceObserver?
    private let onLiveResult: @Sendable (LiveResult) -> Void
    private let onLivePartial: @Sendable (LiveTranscript) -> Void
    private let workerCount: Int
    private let condition = NSCondition()
    private let finished = DispatchGroup()
    // Guarded by `condition`.
    private var live: [Live] = []
    private var requests: [String: [Request]] = [:]
    private var partials: [Partial] = []            // waiting, oldest first, at most one per source
    private var runningPartials: [UInt64: Partial] = [:]
    private var turn: [String] = []   // clients with requests waiting, next first
    private var busyWorkers = 0
    private var lastWasLive = false
    private var stopping = false
    private var nextID: UInt64 = 0
    private var liveEpoch = 0
    private var dropped = 0
    private var refused = 0
    private var cancelled = 0

    /// Starts `count` workers transcribing with `threads` threads each, at most `queueDepth` jobs waiting.
    /// `observer` sees each live utterance before it is wiped; `onLiveResult` gets each live transcript and
    /// `onLivePartial` each partial transcript of a live utterance still being spoken (never after that
    /// utterance's final job was submitted; called with the queue's lock held, so it must only hand it on).
    public init(store: ModelStore, count: Int, threads: Int, queueDepth: Int, logger: Logger,
                observer: UtteranceObserver? = nil, onLiveResult: @escaping @Sendable (LiveResult) -> Void,
                onLivePartial: @escaping @Sendable (LiveTranscript) -> Void = { _ in }) {
        self.store = store
        self.threads = threads
        self.queueDepth = queueDepth
        self.logger = logger
        self.observer = observer
        self.onLiveResult = onLiveResult
        self.onLivePartial = onLivePartial
        workerCount = count
        store.onSwap { [weak self] _ in self?.wakeIdleWorkers() }
        for index in 0..<count { startThread(index: index) }
    }

    /// The queue's counters.
    public var statistics: QueueStatistics {
        condition.lock()
        defer { condition.unlock() }
        return QueueStatistics(waiting: waitingCount, running: busyWorkers, depth: queueDepth, droppedUtterances: dropped,
                               refusedRequests: refused, cancelledRequests: cancelled)
    }

    /// Jobs waiting and jobs running.
    public var load: (waiting: Int, running: Int) {
        let s = statistics
        return (s.waiting, s.running)
    }

    private var waitingCount: Int { live.count + requests.values.reduce(0) { $0 + $1.count } }

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

    // MARK: - Submitting

    /// Queues a request from `client` (a user id or a connection) and waits for its transcript. Cancelling the
    /// calling task drops the request from the queue, or stops it at its next window or decoding step; it then
    /// throws `CancellationError`.
    public func transcribe(samples: [Float], language: String?, client: String) async throws -> Transcript {
        let cancellation = Cancellation()
        let id: UInt64 = {
            condition.lock()
            defer { condition.unlock() }
            nextID += 1
            return nextID
        }()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                enqueue(Request(id: id, client: client, samples: samples, language: language, cancellation: cancellation,
                                reply: { continuation.resume(with: $0) }))
            }
        } onCancel: {
            cancellation.cancel()
            self.cancelWaiting(id)
        }
    }

    private func enqueue(_ request: Request) {
        condition.lock()
        var pushedOut: Request?
        let refusal: Error?
        if stopping {
            refusal = TranscriptionQueueError.shuttingDown
        } else if request.cancellation.isCancelled {
            cancelled += 1
            refusal = CancellationError()
        } else if waitingCount < queueDepth {
            refusal = nil
        } else if let (client, count) = largestBacklog(), count >= (requests[request.client]?.count ?? 0) + 2 {
            pushedOut = removeNewestRequest(of: client)
            refused += 1
            refusal = nil
        } else {
            refused += 1
            refusal = TranscriptionQueueError.busy(queueDepth: queueDepth)
        }
        if refusal == nil {
            if requests[request.client, default: []].isEmpty { turn.append(request.client) }
            requests[request.client, default: []].append(request)
            makeRoomForFinalJob()
            condition.signal()
        }
        condition.unlock()
        if let refusal { request.reply(.failure(refusal)) }
        pushedOut?.reply(.failure(TranscriptionQueueError.busy(queueDepth: queueDepth)))
    }

    /// Queues a live utterance; never blocks. A full queue pushes out the oldest waiting utterance (or, if none
    /// waits, the newest request of the client with the most waiting).
    public func submit(live utterance: Utterance) {
        condition.lock()
        if stopping {
            condition.unlock()
            utterance.wipe()
            return
        }
        var droppedUtterance: Utterance?
        var pushedOut: Request?
        if waitingCount >= queueDepth {
            if !live.isEmpty {
                droppedUtterance = live.removeFirst().utterance
                dropped += 1
            } else if let (client, _) = largestBacklog() {
                pushedOut = removeNewestRequest(of: client)
                refused += 1
            }
        }
        live.append(Live(utterance: utterance, epoch: liveEpoch))
        // The utterance is over: its partial pass, waiting or running, has nothing left to say.
        let stale = dropPartials(of: Self.liveSource)
        makeRoomForFinalJob()
        condition.signal()
        condition.unlock()
        stale.forEach { $0.audio.wipe() }
        if let droppedUtterance {
            droppedUtterance.wipe()
            logger.warning("live utterance dropped: transcription is behind", metadata: ["queue_depth": "\(queueDepth)"])
        }
        pushedOut?.reply(.failure(TranscriptionQueueError.busy(queueDepth: queueDepth)))
    }

    /// Queues a partial pass over a copy of a live utterance still being spoken (`Utterance.EndReason.inProgress`);
    /// its transcript goes to `onLivePartial` unless the utterance's final job is submitted first. Never blocks.
    public func submit(partial utterance: Utterance) {
        let (start, end) = (utterance.startTime, utterance.endTime)
        submit(Partial(id: takeID(), source: Self.liveSource, audio: utterance, language: nil,
                       cancellation: Cancellation(), deliver: { [onLivePartial] transcript in
            guard let transcript else { return }
            onLivePartial(LiveTranscript(
                text: transcript.text.trimmingCharacters(in: .whitespacesAndNewlines), start: start, end: end,
                language: transcript.language, partial: true))
        }))
    }

    /// A partial pass over `samples`, the audio so far of a request from `source` (a connection): its transcript,
    /// or nil when it was dropped (a final job needed the worker, a newer pass from `source` replaced it, the
    /// daemon is stopping) or the calling task was cancelled.
    public func transcribePartial(samples: [Float], language: String?, source: String) async -> Transcript? {
        let id = takeID()
        let cancellation = Cancellation()
        let audio = Utterance(samples: samples, endReason: .inProgress)
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                // A partial's `deliver` runs with `condition` held (so that a live partial never follows its
                // utterance's final result), and resuming a continuation takes its task's status lock, which a
                // cancellation holds while its handler below waits for `condition`: resumed inline, a worker
                // finishing this pass and the client's connection closing meanwhile deadlocked (found in a
                // fresh-clone run of LoadTests: two Wyoming clients waited forever). So it resumes on another thread.
                submit(Partial(id: id, source: source, audio: audio, language: language, cancellation: cancellation,
                               deliver: { transcript in
                                   DispatchQueue.global().async { continuation.resume(returning: transcript) }
                               }))
            }
        } onCancel: {
            cancellation.cancel()
            self.cancelPartial(id)
        }
    }

    private static let liveSource = "live"

    private func takeID() -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        nextID += 1
        return nextID
    }

    private func submit(_ partial: Partial) {
        condition.lock()
        guard !stopping, !partial.cancellation.isCancelled else {
            partial.deliver(nil)
            condition.unlock()
            partial.audio.wipe()
            return
        }
        var replaced: Partial?
        if let index = partials.firstIndex(where: { $0.source == partial.source }) {
            replaced = partials.remove(at: index)
            replaced?.deliver(nil)
        }
        partials.append(partial)
        condition.signal()
        condition.unlock()
        replaced?.audio.wipe()
    }

    /// Drops `id`'s partial pass if it waits, or stops it if it runs; its `deliver` gets nil.
    private func cancelPartial(_ id: UInt64) {
        condition.lock()
        var removed: Partial?
        if let index = partials.firstIndex(where: { $0.id == id }) {
            removed = partials.remove(at: index)
            removed?.deliver(nil)
        } else if let running = runningPartials.removeValue(forKey: id) {
            running.cancellation.cancel()
            running.deliver(nil)
        }
        condition.unlock()
        removed?.audio.wipe()
    }

    // Called with `condition` held: drops the waiting partial pass of `source` and stops its running one (their
    // `deliver` gets nil); returns the dropped waiting ones, whose audio the caller wipes once the lock is released.
    private func dropPartials(of source: String) -> [Partial] {
        let dropped = partials.filter { $0.source == source }
        partials.removeAll { $0.source == source }
        for (id, running) in runningPartials where running.source == source {
            running.cancellation.cancel()
            running.deliver(nil)
            runningPartials[id] = nil
        }
        for partial in dropped { partial.deliver(nil) }
        return dropped
    }

    // Called with `condition` held, after a final job was queued: when no worker is idle, running partial passes
    // stop at their next step, so the final job gets a worker at once.
    private func makeRoomForFinalJob() {
        guard busyWorkers >= workerCount else { return }
        for running in runningPartials.values {
            running.cancellation.cancel()
            running.deliver(nil)
        }
        runningPartials.removeAll()
    }

    /// Wipes the live utterances waiting and keeps the one being transcribed from the observer (`forget`).
    public func forgetLive() {
        condition.lock()
        liveEpoch += 1
        let waiting = live
        live.removeAll()
        let partialsWaiting = dropPartials(of: Self.liveSource)
        condition.unlock()
        for item in waiting { item.utterance.wipe() }
        for partial in partialsWaiting { partial.audio.wipe() }
    }

    /// Stops the workers: waiting requests fail with `shuttingDown`, waiting utterances are wiped, running jobs
    /// finish first.
    public func shutdown() {
        condition.lock()
        stopping = true
        let pending = requests.values.flatMap { $0 }
        let pendingLive = live
        let pendingPartials = partials
        requests.removeAll()
        turn.removeAll()
        live.removeAll()
        partials.removeAll()
        for partial in pendingPartials { partial.deliver(nil) }
        condition.broadcast()
        condition.unlock()
        for request in pending { request.reply(.failure(TranscriptionQueueError.shuttingDown)) }
        for item in pendingLive { item.utterance.wipe() }
        for partial in pendingPartials { partial.audio.wipe() }
        finished.wait()
    }

    // Called with `condition` held.
    private func largestBacklog() -> (String, Int)? {
        requests.max { $0.value.count < $1.value.count }.map { ($0.key, $0.value.count) }
    }

    // Called with `condition` held.
    private func removeNewestRequest(of client: String) -> Request? {
        guard let request = requests[client]?.popLast() else { return nil }
        if requests[client]!.isEmpty {
            requests[client] = nil
            turn.removeAll { $0 == client }
        }
        return request
    }

    private func cancelWaiting(_ id: UInt64) {
        condition.lock()
        var removed: Request?
        for (client, queue) in requests {
            guard let index = queue.firstIndex(where: { $0.id == id }) else { continue }
            removed = requests[client]!.remove(at: index)
            if requests[client]!.isEmpty {
                requests[client] = nil
                turn.removeAll { $0 == client }
            }
            cancelled += 1
            break
        }
        condition.unlock()
        removed?.reply(.failure(CancellationError()))
    }

    // MARK: - Working

    /// The next job, or `.release` when this idle worker holds a recognizer for a model no longer served.
    private func nextJob(holding generation: Int?) -> Next {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if stopping { return .stop }
            if !live.isEmpty && (!lastWasLive || turn.isEmpty) {
                busyWorkers += 1
                lastWasLive = true
                return .job(.live(live.removeFirst()))
            }
            if let client = turn.first, var queue = requests[client] {
                lastWasLive = false
                let request = queue.removeFirst()
                turn.removeFirst()
                if queue.isEmpty {
                    requests[client] = nil
                } else {
                    requests[client] = queue
                    turn.append(client)
                }
                busyWorkers += 1
                return .job(.request(request))
            }
            if !partials.isEmpty {
                let partial = partials.removeFirst()
                runningPartials[partial.id] = partial
                busyWorkers += 1
                return .job(.partial(partial))
            }
            if let generation, store.current?.generation != generation { return .release }
            condition.wait()
        }
    }

    private func jobDone() {
        condition.lock()
        busyWorkers -= 1
        condition.unlock()
        releaseIfIdle()
    }

    /// When no job runs or waits, hands back what only jobs use: the engine keeps freed window scratch for the next
    /// window, and the served model's layer pages stay mapped; an idle daemon gives both back, with the pages of
    /// the code it ran (`WhisperModel.releaseFreedMemory`). The page cache keeps the pages, and the next job maps
    /// them again (under 1 ms for tiny.en's 24 MiB model here), while a statistics pass or a build that runs
    /// meanwhile does not have them beside its own memory. After each job, and after other work that ran code
    /// nothing at rest runs (a `status`, `Daemon`).
    public func releaseIfIdle() {
        condition.lock()
        let idle = busyWorkers == 0 && waitingCount == 0
        condition.unlock()
        if idle {
            store.current?.provided.model.weights.releaseResidentPages()
            WhisperModel.releaseFreedMemory()
        }
    }

    private func wakeIdleWorkers() {
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    /// One worker thread: its own recognizer, rebuilt between jobs when the model changed, dropped when the model
    /// changes while it is idle.
    private func work() {
        var recognizer: SpeechRecognizer?
        var generation: Int?
        while true {
            switch nextJob(holding: generation) {
            case .stop:
                return
            case .release:
                recognizer = nil
                generation = nil
                WhisperModel.releaseFreedMemory()
            case .job(let job):
                defer { jobDone() }
                guard let entry = store.current else {
                    fail(job, TranscriptionQueueError.notReady)
                    continue
                }
                if recognizer == nil || entry.generation != generation {
                    recognizer = nil
                    do {
                        recognizer = try SpeechRecognizer(model: entry.provided.model, threads: threads)
                        generation = entry.generation
                    } catch {
                        logger.error("cannot prepare the model for transcription: \(error)")
                        generation = nil
                        fail(job, error)
                        continue
                    }
                }
                guard let recognizer else { continue }
                // Background work running meanwhile stops first (`BackgroundWork`): its time counts in the job's.
                let started = DispatchTime.now()
                BackgroundWork.transcription {
                    switch job {
                    case .request(let request): run(request, recognizer: recognizer, started: started)
                    case .live(let item): runLive(item, recognizer: recognizer, started: started)
                    case .partial(let partial): runPartial(partial, recognizer: recognizer)
                    }
                }
            }
        }
    }

    private func fail(_ job: Job, _ error: Error) {
        switch job {
        case .request(let request): request.reply(.failure(error))
        case .live(let item): item.utterance.wipe()
        case .partial(let partial): finishPartial(partial, with: nil)
        }
    }

    private func run(_ request: Request, recognizer: SpeechRecognizer, started: DispatchTime) {
        var options = TranscriptionOptions()
        options.decoding.language = request.language
        options.decoding.cancellation = request.cancellation
        let result = Result { try recognizer.transcribe(samples: request.samples, options: options) }
        if case .failure(DecodingError.cancelled) = result {
            condition.lock()
            cancelled += 1
            condition.unlock()
            logger.debug("request stopped: its client went away", metadata: [
                "client": "\(request.client)",
                "after_s": "\(String(format: "%.2f", Self.seconds(since: started)))",
            ])
            request.reply(.failure(CancellationError()))
            return
        }
        logger.debug("request transcribed", metadata: [
            "client": "\(request.client)",
            "audio_s": "\(String(format: "%.2f", Double(request.samples.count) / 16000))",
            "took_s": "\(String(format: "%.2f", Self.seconds(since: started)))",
        ])
        request.reply(result)
    }

    private func runLive(_ item: Live, recognizer: SpeechRecognizer, started: DispatchTime) {
        let utterance = item.utterance
        defer { utterance.wipe() }
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
        condition.lock()
        let current = item.epoch == liveEpoch
        condition.unlock()
        if current { observer?.observe(utterance: utterance, transcript: transcript, model: recognizer.model) }
        // Hook, then wipe, then publish: listeners never see a transcript whose audio still exists.
        let start = utterance.startTime, end = utterance.endTime, duration = utterance.duration
        utterance.wipe()
        let took = Self.seconds(since: started)
        let text = transcript.text.trimmingCharacters(in: .whitespacesAndNewlines)
        onLiveResult(LiveResult(
            transcript: LiveTranscript(text: text, start: start, end: end, language: transcript.language),
            audioSeconds: duration, processingSeconds: took))
    }

    /// Partial passes: the first temperature only, and a short window whose text stands even when its average
    /// log-probability is low (speech cut mid-word often is); the loop guards stay.
    static let partialOptions: TranscriptionOptions = {
        var options = TranscriptionOptions()
        options.fallback.temperatures = [0]
        options.shortWindow?.minAvgLogProb = nil
        return options
    }()

    private func runPartial(_ partial: Partial, recognizer: SpeechRecognizer) {
        var options = Self.partialOptions
        options.decoding.language = partial.language
        options.decoding.cancellation = partial.cancellation
        let started = DispatchTime.now()
        var samples = partial.audio.withUnsafeSamples { Array($0) }
        let transcript = try? recognizer.transcribe(samples: samples, options: options)
        logger.debug(transcript == nil ? "partial pass stopped" : "partial pass transcribed", metadata: [
            "audio_s": "\(String(format: "%.2f", Double(samples.count) / 16000))",
            "took_s": "\(String(format: "%.3f", Self.seconds(since: started)))",
        ])
        samples.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { explicit_bzero(base, raw.count) }
        }
        finishPartial(partial, with: transcript)
    }

    /// Wipes the pass's audio, then hands its transcript on unless it was dropped meanwhile (under the lock, so a
    /// live partial never follows its utterance's final job). Wiped first, so that whoever the transcript reaches
    /// finds the audio gone (`PartialPassTests` once caught the copy still there as the transcript arrived).
    private func finishPartial(_ partial: Partial, with transcript: Transcript?) {
        partial.audio.wipe()
        condition.lock()
        if runningPartials.removeValue(forKey: partial.id) != nil { partial.deliver(transcript) }
        condition.unlock()
    }

    static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}
