import Audio
import Capture
@testable import DaemonCore
import Foundation
import Logging
@testable import Quantization
import WhisperEngine
import XCTest

/// The statistics passes run one at a time; the newest utterance that arrives during a pass waits for the next.
final class PersonalStatisticsTests: XCTestCase {
    /// Utterances 0.2 and 0.3 arrive while the pass over 0.1 is held: 0.3 replaces 0.2 and is gathered next, so
    /// under load the passes fall behind without losing the newest speech. (Before, both were dropped, and a
    /// candidate in shadow on a busy machine could wait for its second measured utterance forever:
    /// DaemonEndToEndTests.testStatisticsBehindAQuantizedModelTriggerRequantization hung in a fresh-clone run
    /// beside a busy loop.)
    func testTheNewestUtteranceDuringAPassIsGatheredNext() throws {
        let model = try SmallModels.make(seed: 3)
        let personal = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        final class Seen: @unchecked Sendable {  // @unchecked: guarded by `lock`
            let lock = NSLock()
            var firstSamples: [Float] = []
        }
        let seen = Seen()
        personal.duringPass { samples, _, _, _ in
            seen.lock.withLock { seen.firstSamples.append(samples[0]) }
            if samples[0] == 0.1 {   // hold the first pass until the other two have arrived
                held.signal()
                release.wait()
            }
        }
        let transcript = Transcript(segments: [], language: "en", text: "")
        func offer(_ value: Float) {
            personal.observe(utterance: Utterance(samples: [Float](repeating: value, count: 16_000)),
                             transcript: transcript, model: model)
        }
        offer(0.1)
        XCTAssertEqual(held.wait(timeout: .now() + patient(600)), .success, "the first pass ran")
        offer(0.2)
        offer(0.3)
        release.signal()
        personal.waitForPass()
        XCTAssertEqual(seen.lock.withLock { seen.firstSamples }, [0.1, 0.3])
        XCTAssertEqual(personal.statistics(for: ModelIdentity.of(model))?.sampleCount, 2)
    }

    /// `forget` during a pass wipes the utterance waiting for the next one: nothing of it is gathered.
    func testForgetDropsTheWaitingUtterance() throws {
        let model = try SmallModels.make(seed: 4)
        let personal = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let passes = ManagedAtomicCounter()
        personal.duringPass { samples, _, _, _ in
            passes.increment()
            if samples[0] == 0.1 {
                held.signal()
                release.wait()
            }
        }
        let transcript = Transcript(segments: [], language: "en", text: "")
        personal.observe(utterance: Utterance(samples: [Float](repeating: 0.1, count: 16_000)), transcript: transcript, model: model)
        XCTAssertEqual(held.wait(timeout: .now() + patient(600)), .success, "the first pass ran")
        personal.observe(utterance: Utterance(samples: [Float](repeating: 0.2, count: 16_000)), transcript: transcript, model: model)
        let forgotten = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            personal.forget()
            forgotten.signal()
        }
        // forget() takes the waiting utterance before it waits for the pass; give it that moment by polling.
        let deadline = Date().addingTimeInterval(patient(60))
        while personal.hasWaitingUtterance, Date() < deadline { usleep(1000) }
        XCTAssertFalse(personal.hasWaitingUtterance, "forget wiped the waiting utterance")
        release.signal()
        XCTAssertEqual(forgotten.wait(timeout: .now() + patient(600)), .success)
        XCTAssertEqual(passes.value, 1, "only the pass that was running ran")
        XCTAssertNil(personal.statistics(for: ModelIdentity.of(model)))
    }
}

extension PersonalStatisticsTests {
    /// With a state directory the statistics live in their file between passes: none of them stays in memory, a
    /// build reads them from the file, the next pass merges into what the file holds, and a restart finds them.
    /// Without a directory they stay in memory.
    func testBetweenPassesTheStatisticsAreOnlyInTheirFile() throws {
        let model = try SmallModels.make(seed: 5)
        let identity = ModelIdentity.of(model)
        let scratch = try ScratchDirectory()
        let directory = try scratch.makeDirectory("state")
        let transcript = Transcript(segments: [], language: "en", text: "")
        func gather(_ personal: PersonalStatistics, _ value: Float) {
            personal.observe(utterance: Utterance(samples: [Float](repeating: value, count: 16_000)),
                             transcript: transcript, model: model)
            personal.waitForPass()
        }
        let personal = PersonalStatistics(directory: directory, logger: Logger(label: "test"))
        gather(personal, 0.1)
        XCTAssertFalse(personal.holdsStatisticsInMemory)
        XCTAssertEqual(personal.statisticsSamples, 1)
        XCTAssertEqual(personal.statistics(for: identity)?.sampleCount, 1)
        gather(personal, 0.2)
        XCTAssertFalse(personal.holdsStatisticsInMemory)
        XCTAssertEqual(personal.statisticsSamples, 2)
        XCTAssertEqual(personal.statistics(for: identity)?.sampleCount, 2)
        XCTAssertNil(personal.statistics(for: "another model"))
        // What a build reads leaves the second moments in the file's mapping until each layer's is used.
        let read = try XCTUnwrap(personal.statistics(for: identity)?.secondMoments)
        XCTAssertFalse(read.layerNames.isEmpty)
        XCTAssertEqual(read.mappedLayers, read.layerNames)

        let restarted = PersonalStatistics(directory: directory, logger: Logger(label: "test"))
        XCTAssertFalse(restarted.holdsStatisticsInMemory)
        XCTAssertEqual(restarted.statisticsSamples, 2)
        XCTAssertEqual(restarted.statistics(for: identity)?.sampleCount, 2)
        restarted.forget()
        XCTAssertEqual(restarted.statisticsSamples, 0)
        XCTAssertNil(restarted.statistics(for: identity))

        let inMemory = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        gather(inMemory, 0.1)
        XCTAssertTrue(inMemory.holdsStatisticsInMemory)
        XCTAssertEqual(inMemory.statistics(for: identity)?.sampleCount, 1)
    }
}

/// A counter shared with a pass's hook.
private final class ManagedAtomicCounter: @unchecked Sendable {  // @unchecked: guarded by `lock`
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}

extension PersonalStatisticsTests {
    /// A pass behind a quantized model runs the full-precision model mapped, and of the served model (4 bits here)
    /// only its encoder, for the decoder's statistics (`StatisticsPass.run(served:)`): the served model's layer pages
    /// leave the resident set as the pass begins and after it (the page cache keeps them), so a pass does not hold
    /// them beside its own windows and sums. The drift measurement reads them again afterwards.
    func testAPassHoldsNoPageOfTheServedModel() throws {
        let path = try Fixtures.tinyModel()
        let float = try Fixtures.model("tiny.en")
        let scratch = try ScratchDirectory()
        let quantized = try FileBackedModel(directory: try scratch.makeDirectory("layers"))
        let served = quantized.model

        let personal = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        personal.setSourceModel(path)
        let duringPass = Waiter<Int>()
        personal.duringPass { _, fullPrecision, model, _ in
            XCTAssertFalse(fullPrecision === model, "the pass ran the mapped full-precision model")
            duringPass.append(quantized.residentKiB())
        }
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        let transcript = try SpeechRecognizer(model: served, threads: 2).transcribe(samples: samples)
        XCTAssertGreaterThan(quantized.residentKiB(), 0, "serving reads its layers")
        personal.observe(utterance: Utterance(samples: samples), transcript: transcript, model: served)
        personal.waitForPass()
        XCTAssertEqual(duringPass.all, [0], "none of the served model's pages once the pass had run")
        let identity = ModelIdentity.of(float)
        let gathered = try XCTUnwrap(personal.statistics(for: identity))
        XCTAssertEqual(gathered.sampleCount, 1)
        // What it gathered: the decoder's statistics also behind the served encoder (`myqasr stats --served` does the same).
        let mapped = try WhisperModel.loadMapped(path)
        let expected = try StatisticsPass.run(model: mapped, identity: identity, samples: samples, served: served)
        XCTAssertEqual(StatisticsFile.digest(gathered), StatisticsFile.digest(expected.statistics))
        let plain = try StatisticsPass.run(model: mapped, identity: identity, samples: samples)
        XCTAssertNotEqual(StatisticsFile.digest(gathered), StatisticsFile.digest(plain.statistics))
    }
}

extension PersonalStatisticsTests {
    /// The second run of a pass behind a 4-bit served model reads the served encoder's layers and gives their pages
    /// back as it goes: when the decoder starts (its first cross-attention keys and values, computed from the
    /// encoder's output), at most one layer's worth of the served model is resident, where the whole encoder was
    /// (4204 KiB before the layers gave their pages back).
    func testTheServedEncoderLeavesTheResidentSetBeforeTheDecoderRuns() throws {
        let scratch = try ScratchDirectory()
        let quantized = try FileBackedModel(directory: try scratch.makeDirectory("layers"))
        let served = quantized.model
        let mapped = try WhisperModel.loadMapped(try Fixtures.tinyModel())
        let seen = Waiter<Int>()
        let probed = "decoder/layer_0/attention/linear_1"
        let layer = try XCTUnwrap(mapped.weights.linearLayers.first { $0.name == probed })
        let model = mapped.withWeights(mapped.weights.replacing([
            probed: ProbedMatrix(base: layer.weight) { seen.append(quantized.residentKiB()) },
        ]))
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        _ = try SpeechRecognizer(model: served, threads: 2).transcribe(samples: samples)
        XCTAssertGreaterThan(quantized.residentKiB(), 0, "serving reads its layers")
        served.weights.releaseResidentPages()
        XCTAssertEqual(quantized.residentKiB(), 0)

        _ = try StatisticsPass.run(model: model, identity: ModelIdentity.of(mapped), samples: samples, served: served)
        // Each run computes the probed layer's keys and values for its silent window (made first), then for its window.
        XCTAssertEqual(seen.all.count, 4, "one window and one silent window, two runs")
        XCTAssertEqual(Array(seen.all.prefix(2)), [0, 0], "the first run does not read the served model")
        // One encoder layer, and a little more for the pages the kernel maps around a fault; the whole encoder is
        // several times that, so a second run that kept it would fail here.
        let encoder = served.weights.linearLayers.filter { !WhisperWeights.isDecoderLayer($0.name) }.map(\.weight.byteSize)
        let bound = encoder.max()! / 1024 + 256
        XCTAssertGreaterThan(encoder.reduce(0, +) / 1024, 4 * bound)
        for resident in seen.all.suffix(2) {
            XCTAssertLessThanOrEqual(resident, bound, "the served encoder's pages were still resident when the decoder ran")
        }
    }

    /// What runs during a pass (the drift measurement) and stops for a transcription (`DecodingError.cancelled`)
    /// runs again once the transcription is done; the drift measurement stops when its flag is set.
    func testWhatStopsForATranscriptionDuringAPassRunsAgain() throws {
        let model = try SmallModels.make(seed: 6)
        let personal = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        let calls = Waiter<Bool>()
        personal.duringPass { _, _, _, cancellation in
            calls.append(cancellation.isCancelled)
            if calls.all.count == 1 { throw DecodingError.cancelled }
        }
        personal.observe(utterance: Utterance(samples: [Float](repeating: 0.1, count: 16_000)),
                         transcript: Transcript(segments: [], language: "en", text: ""), model: model)
        personal.waitForPass()
        XCTAssertEqual(calls.all, [false, false], "run again, with a new flag")
        XCTAssertEqual(personal.statisticsSamples, 1)

        let stopped = Cancellation()
        stopped.cancel()
        XCTAssertThrowsError(try OwnSpeechDrift.measure(samples: [Float](repeating: 0.1, count: 16_000), fullPrecision: model,
                                                        served: model, candidate: model, cancellation: stopped)) {
            XCTAssertEqual($0 as? DecodingError, .cancelled)
        }
    }
}

/// A weight matrix that calls `onUse` before each product.
private struct ProbedMatrix: WeightMatrix {
    let base: any WeightMatrix
    let onUse: @Sendable () -> Void

    var outFeatures: Int { base.outFeatures }
    var inFeatures: Int { base.inFeatures }
    var byteSize: Int { base.byteSize }

    func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
        onUse()
        base.multiply(x, rows: m, threads: threads, into: y)
    }

    func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>) { base.copyRow(index, into: out) }
}
