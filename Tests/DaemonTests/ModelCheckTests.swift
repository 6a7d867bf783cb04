import Audio
@testable import DaemonCore
import Foundation
import Quantization
import WhisperEngine
import XCTest

/// The self-check's probe and bound on tiny.en (the figures in `ModelCheck`'s comment): it passes uniform 4 and
/// 3 bits and myQASR's widths down to 16 MiB, which all still transcribe jfk.wav, and refuses myQASR at 15 MiB and
/// uniform 2 bits, which do not (2 bits decode nothing at all).
final class ModelCheckTests: XCTestCase {
    func testProbeSeparatesWorkingFromBrokenBuilds() throws {
        let float = try WhisperModel.load(try Fixtures.tinyModel())
        let check = ModelCheck(threads: 2)
        let reference = try check.reference(fullPrecision: float)
        XCTAssertEqual(reference.tokens.count - reference.promptLength, ModelCheck.positions,
                       "the full-precision model decodes text from the probe")
        // Personal statistics as the daemon gathers them, from two clips.
        let statistics = ActivationStatistics(modelIdentity: ModelIdentity.of(float))
        let observed = try SpeechRecognizer(model: float, threads: 2, observer: statistics)
        for clip in ["jfk.wav", "librivox-0870.wav"] {
            _ = try observed.transcribe(samples: try loadAudio(path: try Fixtures.sample(clip)))
            statistics.finishSample()
        }
        var rows: [String] = []
        func report(_ name: String, _ target: QuantizationOptions.Target, _ stats: ActivationStatistics?) throws -> CheckReport {
            let result = try Quantizer.quantize(model: float, statistics: stats,
                                                options: QuantizationOptions(target: target, groupSize: 32, calibrate: false))
            let report = try check.check(float.withWeights(result.weights), against: reference)
            rows.append("\(name) (\(result.weights.byteSize) B): \(report)")
            return report
        }
        let mib = 1 << 20
        let passing = [try report("uniform 4", .uniform(bits: 4), nil), try report("uniform 3", .uniform(bits: 3), nil),
                       try report("myQASR 16 MiB", .budget(16 * mib), statistics)]
        let twoBits = try report("uniform 2", .uniform(bits: 2), nil)
        let mostlyTwo = try report("myQASR 15 MiB", .budget(15 * mib), statistics)
        print(rows.joined(separator: "\n"))
        for report in passing { XCTAssertTrue(report.passed, "\(report)") }
        XCTAssertFalse(mostlyTwo.passed, "\(mostlyTwo)")
        XCTAssertFalse(twoBits.passed, "\(twoBits)")
        XCTAssertEqual(twoBits.producedTokens, 0)
        XCTAssertTrue(twoBits.failure?.contains("decodes nothing") == true, "\(twoBits)")
    }

    /// A candidate whose layers are a file's (as the daemon builds them, `LayerFile`) holds none of them resident
    /// once checked, nor after each measurement in shadow: until it serves, it waits in the page cache, not beside
    /// the model in service. Nor once it leaves service, whoever still holds it.
    func testACandidateWaitsWithNoLayerResident() throws {
        let float = try Fixtures.model("tiny.en")
        let scratch = try ScratchDirectory()
        let quantized = try FileBackedModel(directory: try scratch.makeDirectory("layers"))
        let candidate = quantized.model
        func residentKiB() -> Int { quantized.residentKiB() }

        let check = ModelCheck(threads: 2)
        let reference = try check.reference(fullPrecision: float)
        XCTAssertTrue(try check.check(candidate, against: reference).passed)
        XCTAssertEqual(residentKiB(), 0, "after the check")
        // A check that a transcription stops (the daemon's give way, `BackgroundWork`) says so, rather than failing
        // the candidate, and leaves none of it resident either.
        let stopped = Cancellation()
        stopped.cancel()
        XCTAssertThrowsError(try check.check(candidate, against: reference, cancellation: stopped)) {
            XCTAssertEqual($0 as? DecodingError, .cancelled)
        }
        XCTAssertThrowsError(try check.check(Candidate(provided: ProvidedModel(
            model: candidate, layerBits: [:], weightBytes: candidate.weights.byteSize, budgetMet: true, plan: .uniform(bits: 4),
            statisticsSamples: 0), fullPrecision: float), cancellation: stopped))
        XCTAssertEqual(residentKiB(), 0, "after a check stopped")
        let drift = try OwnSpeechDrift.measure(samples: try loadAudio(path: try Fixtures.sample("jfk.wav")),
                                               fullPrecision: float, served: float, candidate: candidate)
        XCTAssertGreaterThan(try XCTUnwrap(drift.candidate).positions, 0, "the candidate was read")
        XCTAssertEqual(residentKiB(), 0, "after a measurement in shadow")

        let store = ModelStore(), target = ModelTarget(source: "tiny.en", budget: Budget(bytes: nil, origin: .configuration))
        func serve(_ model: WhisperModel) {
            let bits = Dictionary(uniqueKeysWithValues: model.weights.linearLayers.map { ($0.name, 4) })
            store.swap(to: ProvidedModel(model: model, layerBits: bits, weightBytes: model.weights.byteSize, budgetMet: true,
                                         plan: .uniform(bits: 4), statisticsSamples: 0),
                       target: target, reason: .start, check: nil)
        }
        serve(candidate)
        _ = try SpeechRecognizer(model: candidate, threads: 2).transcribe(samples: try loadAudio(path: try Fixtures.sample("jfk.wav")))
        XCTAssertGreaterThan(residentKiB(), 0, "serving reads its layers")
        serve(float)
        XCTAssertEqual(residentKiB(), 0, "after it left service")
    }
}
