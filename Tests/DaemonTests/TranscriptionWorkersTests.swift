import Capture
import DaemonCore
import Foundation
import Logging
import Serving
import WhisperEngine
import XCTest

/// JFK as 16 kHz float samples.
private func speech() throws -> [Float] {
    let pcm = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
    return pcm.withUnsafeBytes { raw in raw.bindMemory(to: Int16.self).map { Float($0) / 32768 } }
}

/// A store serving tiny.en at full precision.
private func tinyStore() throws -> ModelStore {
    let provided = try BudgetModelProvider().provide(
        ModelRequest(name: try Fixtures.tinyModel(), budgetBytes: nil, reloadFromDisk: false))
    let store = ModelStore()
    store.swap(to: provided, target: ModelTarget(source: "tiny.en", budget: Budget(bytes: nil, origin: .configuration)),
               reason: .start, check: nil)
    return store
}

/// Records what the utterance hook saw, on the worker thread.
final class RecordingObserver: UtteranceObserver, @unchecked Sendable {
    struct Seen {
        var utterance: ObjectIdentifier
        var model: ObjectIdentifier
        var wipedWhenSeen: Bool
        var peak: Float
        var text: String
    }

    let seen = Waiter<Seen>()

    func observe(utterance: Utterance, transcript: Transcript, model: WhisperModel) {
        let peak = utterance.withUnsafeSamples { $0.reduce(Float(0)) { max($0, abs($1)) } }
        seen.append(Seen(utterance: ObjectIdentifier(utterance), model: ObjectIdentifier(model),
                         wipedWhenSeen: utterance.isWiped, peak: peak, text: transcript.text))
    }
}

/// The worker pool in process with the real tiny.en model.
final class TranscriptionWorkersTests: XCTestCase {
    /// Each live utterance is offered to the hook once, with its audio intact, then wiped; a model swap while a
    /// transcription runs does not interrupt it (it finishes on the old model) and the next job uses the new one.
    func testHookSeesAudioBeforeWipeAndSwapWaitsForRunningJob() throws {
        _ = try Fixtures.tinyModel()
        let samples = try speech()
        let provider = BudgetModelProvider()
        let first = try provider.provide(ModelRequest(name: try Fixtures.tinyModel(), budgetBytes: nil, reloadFromDisk: false))
        let store = ModelStore()
        let target = ModelTarget(source: "tiny.en", budget: Budget(bytes: nil, origin: .configuration))
        store.swap(to: first, target: target, reason: .start, check: nil)
        let results = Waiter<LiveResult>()
        let observer = RecordingObserver()
        let workers = TranscriptionWorkers(store: store, count: 1, threads: 2, queueDepth: 4, logger: .init(label: "test"),
                                           observer: observer, onLiveResult: { results.append($0) })
        defer { workers.shutdown() }

        let one = Utterance(samples: samples, streamPosition: 16000)
        workers.submit(live: one)
        _ = try Waiter<Int>.poll(timeout: 30, what: "the worker to start the first utterance") {
            workers.load.running == 1 ? 1 : nil
        }
        // Swap while the first transcription is running.
        var second = first
        second.model = first.model.withWeights(first.model.weights)
        XCTAssertEqual(store.swap(to: second, target: target, reason: .reload, check: nil).generation, 2)
        let two = Utterance(samples: samples, streamPosition: 400_000)
        workers.submit(live: two)

        let seen = try observer.seen.wait(timeout: 180, what: "both utterances observed") { $0.count == 2 ? $0 : nil }
        XCTAssertEqual(seen.map(\.utterance), [ObjectIdentifier(one), ObjectIdentifier(two)])
        XCTAssertEqual(seen[0].model, ObjectIdentifier(first.model), "the running job finished on the old model")
        XCTAssertEqual(seen[1].model, ObjectIdentifier(second.model), "the next job used the new model")
        for s in seen {
            XCTAssertFalse(s.wipedWhenSeen)
            XCTAssertGreaterThan(s.peak, 0.1, "the hook saw the audio")
            XCTAssertTrue(Fixtures.normalise(s.text).contains(jfkPhrase), s.text)
        }
        let live = try results.wait(timeout: 10, what: "two live results") { $0.count == 2 ? $0 : nil }
        XCTAssertEqual(live[0].transcript.start, 1, accuracy: 1e-9)
        XCTAssertEqual(live[0].audioSeconds, Double(samples.count) / 16000, accuracy: 1e-6)
        XCTAssertTrue(one.isWiped && two.isWiped, "utterances are wiped after the hook")
        XCTAssertEqual(one.withUnsafeSamples { $0.contains { $0 != 0 } }, false)
    }

    /// Requests beyond the queue depth are refused as busy instead of waiting without bound.
    func testQueueDepthIsEnforced() async throws {
        let samples = try speech()
        let workers = TranscriptionWorkers(store: try tinyStore(), count: 1, threads: 2, queueDepth: 1,
                                           logger: .init(label: "test"), onLiveResult: { _ in })
        workers.submit(live: Utterance(samples: samples))
        _ = try Waiter<Int>.poll(timeout: 30, what: "the worker to be busy") { workers.load.running == 1 ? 1 : nil }
        let queued = Task { try await workers.transcribe(samples: Array(samples.prefix(32000)), language: "en", client: "a") }
        _ = try Waiter<Int>.poll(timeout: 30, what: "one queued request") { workers.load.waiting == 1 ? 1 : nil }
        do {
            _ = try await workers.transcribe(samples: samples, language: nil, client: "a")
            XCTFail("a request beyond the queue depth must be refused")
        } catch let error as TranscriptionQueueError {
            XCTAssertEqual(error, .busy(queueDepth: 1))
        }
        let text = try await queued.value.text
        XCTAssertTrue(Fixtures.normalise(text).contains("fellow"), text)
        XCTAssertEqual(workers.statistics.refusedRequests, 1)
        workers.shutdown()
        do {
            _ = try await workers.transcribe(samples: samples, language: nil, client: "a")
            XCTFail("no requests after shutdown")
        } catch let error as TranscriptionQueueError {
            XCTAssertEqual(error, .shuttingDown)
        }
    }

    /// One queue, one policy, one counter for live utterances (issue 18 item 6): with the worker busy and the
    /// queue full, each new utterance pushes out the oldest waiting one, which is wiped and counted; the counter
    /// is what `status` reports.
    func testLiveUtterancesShareTheBoundedQueueAndDropsAreCounted() throws {
        let samples = try speech()
        let workers = TranscriptionWorkers(store: try tinyStore(), count: 1, threads: 2, queueDepth: 2,
                                           logger: .init(label: "test"), onLiveResult: { _ in })
        defer { workers.shutdown() }
        workers.submit(live: Utterance(samples: samples))
        _ = try Waiter<Int>.poll(timeout: 30, what: "the worker to be busy") { workers.load.running == 1 ? 1 : nil }
        let waiting = (0..<5).map { _ in Utterance(samples: Array(samples.prefix(8000))) }
        for utterance in waiting { workers.submit(live: utterance) }
        let queue = workers.statistics
        XCTAssertEqual(queue.waiting, 2)
        XCTAssertEqual(queue.depth, 2)
        XCTAssertEqual(queue.droppedUtterances, 3)
        XCTAssertEqual(waiting.prefix(3).map(\.isWiped), [true, true, true], "the oldest were dropped and wiped")
        XCTAssertEqual(waiting.suffix(2).map(\.isWiped), [false, false])
    }

    /// Fair queueing: with one worker busy on a live utterance, client a queues four requests and then client b
    /// one; b's is served second of them, not last. Another live utterance goes before all but one request: live
    /// utterances come first, but not twice in a row while requests wait. The order is recorded on the worker's
    /// thread as each job ends (the live result, and the request's debug log line, both before the next job
    /// starts), not where the requests' tasks resume, which a busy machine may delay past the next job.
    func testClientsTakeTurns() async throws {
        let samples = try speech()
        let short = Array(samples.prefix(8000))
        let order = Waiter<String>()
        var logger = Logger(label: "test") { _ in RequestOrderLog(order: order) }
        logger.logLevel = .debug
        let workers = TranscriptionWorkers(store: try tinyStore(), count: 1, threads: 2, queueDepth: 8,
                                           logger: logger, onLiveResult: { _ in order.append("live") })
        defer { workers.shutdown() }
        // 33 s: the worker stays on it for seconds while the five requests are queued one by one.
        workers.submit(live: Utterance(samples: samples + samples + samples))
        _ = try Waiter<Int>.poll(timeout: 30, what: "the worker to be busy") { workers.load.running == 1 ? 1 : nil }
        var tasks: [Task<Void, Error>] = []
        for (index, client) in ["a", "a", "a", "a", "b"].enumerated() {
            tasks.append(Task { _ = try await workers.transcribe(samples: short, language: "en", client: client) })
            _ = try Waiter<Int>.poll(timeout: 30, what: "request \(index) queued") { workers.load.waiting == index + 1 ? 1 : nil }
        }
        workers.submit(live: Utterance(samples: short))
        for task in tasks { try await task.value }
        XCTAssertEqual(order.all, ["live", "a", "live", "b", "a", "a", "a"])
    }

    /// A request whose task is cancelled leaves the queue at once (and reports `CancellationError`); one that is
    /// running stops at its next window or decoding step.
    func testCancelledRequestsLeaveTheQueueAndStopRunning() async throws {
        let samples = try speech()
        var long: [Float] = []
        for _ in 0..<8 { long += samples }   // 88 s: three windows
        let workers = TranscriptionWorkers(store: try tinyStore(), count: 1, threads: 2, queueDepth: 4,
                                           logger: .init(label: "test"), onLiveResult: { _ in })
        defer { workers.shutdown() }
        let running = Task { try await workers.transcribe(samples: long, language: "en", client: "a") }
        _ = try Waiter<Int>.poll(timeout: 30, what: "the request running") { workers.load.running == 1 ? 1 : nil }
        let waiting = Task { try await workers.transcribe(samples: long, language: "en", client: "b") }
        _ = try Waiter<Int>.poll(timeout: 30, what: "the request waiting") { workers.load.waiting == 1 ? 1 : nil }
        waiting.cancel()
        do {
            _ = try await waiting.value
            XCTFail("a cancelled request has no transcript")
        } catch is CancellationError {}
        XCTAssertEqual(workers.load.waiting, 0)
        running.cancel()
        do {
            _ = try await running.value
            XCTFail("a cancelled request has no transcript")
        } catch is CancellationError {}
        XCTAssertEqual(workers.statistics.cancelledRequests, 2)
        _ = try Waiter<Int>.poll(timeout: 30, what: "the worker to be free") { workers.load.running == 0 ? 1 : nil }
    }
}

extension Waiter {
    /// Polls `condition` until it yields a value (for state that has no event of its own), with a deadline.
    static func poll<R>(timeout: Double, what: String, _ condition: () -> R?) throws -> R {
        let deadline = Date().addingTimeInterval(patient(timeout))
        while Date() < deadline {
            if let r = condition() { return r }
            usleep(2000)
        }
        if let r = condition() { return r }
        throw HarnessError("timed out after \(patient(timeout)) s waiting for \(what)")
    }
}

/// Partial passes: the lowest priority, never delaying or following a final job.
final class PartialPassTests: XCTestCase {
    /// One worker on tiny.en whose live transcripts, partial and final, go to `events`.
    private func oneWorker(publishingTo events: Waiter<LiveTranscript>) throws -> TranscriptionWorkers {
        TranscriptionWorkers(store: try tinyStore(), count: 1, threads: 2, queueDepth: 4, logger: .init(label: "test"),
                             onLiveResult: { events.append($0.transcript) }, onLivePartial: { events.append($0) })
    }

    /// On an idle worker a partial pass runs and its transcript, marked partial, reaches `onLivePartial`, before
    /// the utterance's final transcript.
    func testPartialOnAnIdleWorkerIsPublishedBeforeTheFinal() throws {
        let samples = try speech()
        let events = Waiter<LiveTranscript>()
        let workers = try oneWorker(publishingTo: events)
        defer { workers.shutdown() }
        let partial = Utterance(samples: Array(samples.prefix(3 * 16000)), streamPosition: 16000, endReason: .inProgress)
        workers.submit(partial: partial)
        let first = try events.wait(timeout: 60, what: "the partial transcript") { $0.first }
        XCTAssertTrue(first.partial)
        XCTAssertEqual(first.start, 1, accuracy: 1e-9)
        XCTAssertEqual(first.end, 4, accuracy: 1e-9)
        XCTAssertTrue(Fixtures.normalise(first.text).hasPrefix("and so"), first.text)
        XCTAssertTrue(partial.isWiped, "a partial's copy of the audio is wiped after its pass")
        workers.submit(live: Utterance(samples: samples, streamPosition: 16000))
        let all = try events.wait(timeout: 60, what: "the final transcript") { $0.count == 2 ? $0 : nil }
        XCTAssertFalse(all[1].partial)
        XCTAssertTrue(Fixtures.normalise(all[1].text).contains(jfkPhrase), all[1].text)
    }

    /// With the worker busy, partials wait (a newer one replacing the older) and never count in the queue; the
    /// utterance's final job drops the waiting one, so no partial follows (or precedes, here) the final.
    func testWaitingPartialsAreReplacedAndDroppedByTheFinal() throws {
        let samples = try speech()
        let events = Waiter<LiveTranscript>()
        let workers = try oneWorker(publishingTo: events)
        defer { workers.shutdown() }
        let busy = Task { try await workers.transcribe(samples: samples, language: "en", client: "a") }
        _ = try Waiter<Int>.poll(timeout: 30, what: "the worker to be busy") { workers.load.running == 1 ? 1 : nil }
        let partials = (1...3).map { Utterance(samples: Array(samples.prefix($0 * 16000)), endReason: .inProgress) }
        for partial in partials { workers.submit(partial: partial) }
        XCTAssertEqual(workers.load.waiting, 0, "partials are not in the queue's count")
        XCTAssertEqual(partials.prefix(2).map(\.isWiped), [true, true], "a newer partial replaced the older ones")
        workers.submit(live: Utterance(samples: samples))
        XCTAssertTrue(partials[2].isWiped, "the final job dropped the waiting partial")
        let all = try events.wait(timeout: 120, what: "the final transcript") { $0.isEmpty ? nil : $0 }
        XCTAssertEqual(all.map(\.partial), [false])
        _ = busy
    }

    /// A running partial stops at its next step when a final job finds no idle worker; the final job then runs
    /// and the stopped partial is never published.
    func testRunningPartialGivesWayToARequest() async throws {
        let samples = try speech()
        var long: [Float] = []
        for _ in 0..<8 { long += samples }   // 88 s: three windows
        let partials = Waiter<LiveTranscript>()
        let workers = TranscriptionWorkers(store: try tinyStore(), count: 1, threads: 2, queueDepth: 4,
                                           logger: .init(label: "test"), onLiveResult: { _ in },
                                           onLivePartial: { partials.append($0) })
        defer { workers.shutdown() }
        let partial = Utterance(samples: long, endReason: .inProgress)
        workers.submit(partial: partial)
        _ = try Waiter<Int>.poll(timeout: 30, what: "the partial running") { workers.load.running == 1 ? 1 : nil }
        let text = try await workers.transcribe(samples: samples, language: "en", client: "a").text
        XCTAssertTrue(Fixtures.normalise(text).contains(jfkPhrase), text)
        XCTAssertTrue(partial.isWiped)
        XCTAssertEqual(partials.all.count, 0, "the stopped partial is not published")
        // A request's partial pass on the idle worker answers with the audio so far.
        let soFar = await workers.transcribePartial(samples: Array(samples.prefix(3 * 16000)), language: "en", source: "c")
        XCTAssertTrue(Fixtures.normalise(soFar?.text ?? "").hasPrefix("and so"), soFar?.text ?? "nil")
    }
}

extension TranscriptionWorkersTests {
    /// Workers that go idle hand the served model's layer pages back (the page cache keeps them): a daemon at rest,
    /// and the statistics pass or build that runs after a transcription, do not hold them. The next job reads them
    /// again.
    func testIdleWorkersHoldNoPageOfTheServedModel() async throws {
        let scratch = try ScratchDirectory()
        let quantized = try FileBackedModel(directory: try scratch.makeDirectory("layers"))
        let served = quantized.model
        let bits = Dictionary(uniqueKeysWithValues: served.weights.linearLayers.map { ($0.name, 4) })
        let store = ModelStore()
        store.swap(to: ProvidedModel(model: served, layerBits: bits, weightBytes: served.weights.byteSize, budgetMet: true,
                                     plan: .uniform(bits: 4), statisticsSamples: 0),
                   target: ModelTarget(source: "tiny.en", budget: Budget(bytes: nil, origin: .configuration)),
                   reason: .start, check: nil)
        let workers = TranscriptionWorkers(store: store, count: 1, threads: 2, queueDepth: 2, logger: .init(label: "test"),
                                           onLiveResult: { _ in })
        defer { workers.shutdown() }
        for _ in 0..<2 {
            let text = try await workers.transcribe(samples: try speech(), language: "en", client: "test").text
            XCTAssertTrue(Fixtures.normalise(text).contains(jfkPhrase), text)
            _ = try Waiter<Int>.poll(timeout: 30, what: "the idle workers to hand the model's pages back") {
                quantized.residentKiB() == 0 ? 1 : nil
            }
        }
    }
}

/// Appends the client of each "request transcribed" line to `order`: the worker logs it on its own thread as the
/// request ends, before it takes the next job.
private struct RequestOrderLog: LogHandler {
    let order: Waiter<String>
    var logLevel: Logger.Level = .debug
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
             function: String, line: UInt) {
        if message.description == "request transcribed", let client = metadata?["client"] { order.append("\(client)") }
    }
}
