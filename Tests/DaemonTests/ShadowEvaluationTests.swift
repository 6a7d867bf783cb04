import Audio
@testable import DaemonCore
import Foundation
import Logging
import Quantization
import TestSupport
import WhisperEngine
import XCTest

/// Issue 20 item 3 with real tiny.en models and real measurements: a candidate that passes the self-check but is
/// worse for the user than the model in service is never promoted; a better one is.
final class ShadowEvaluationTests: XCTestCase {
    func testADamagedCandidateIsNeverPromotedAndABetterOneIs() async throws {
        let float = try WhisperModel.load(try Fixtures.tinyModel())
        func uniform(_ bits: Int) throws -> WhisperModel {
            let result = try Quantizer.quantize(model: float, statistics: nil,
                                                options: QuantizationOptions(target: .uniform(bits: bits), calibrate: false))
            return float.withWeights(result.weights)
        }
        let served = try uniform(4), damaged = try uniform(3), better = try uniform(5)
        // The damaged candidate passes the self-check (its probe drift is within the bound): only the comparison on
        // the user's own speech can keep it out.
        let check = ModelCheck(threads: 2)
        XCTAssertTrue(try check.check(damaged, against: try check.reference(fullPrecision: float)).passed)

        let mib = 1 << 20
        let models = [served, damaged, better]
        final class Builds: @unchecked Sendable {  // @unchecked: guarded by `lock`
            let lock = NSLock()
            var count = 0
            func next() -> Int { lock.withLock { defer { count += 1 }; return min(count, 2) } }
        }
        let builds = Builds()
        let pipeline = ModelPipeline(
            build: { _, _, _ in
                let round = builds.next()   // the start, then each statistics round
                let model = models[round]
                let plan: PrecisionPlan = round == 0 ? .uniform(bits: 4) : .personalised(budget: 30 * mib, samples: round)
                return Candidate(provided: ProvidedModel(model: model, layerBits: [:], weightBytes: model.weights.byteSize,
                                                         budgetMet: true, plan: plan, statisticsSamples: round),
                                 fullPrecision: nil)
            },
            check: { _ in nil })
        let service = ModelService(source: "tiny.en", budget: Budget(bytes: 30 * mib, origin: .configuration),
                                   requantizeAfter: 1, shadowUtterances: 2, pipeline: pipeline,
                                   logger: Logger(label: "test"))
        try await service.start()
        let run = Task { await service.run() }
        defer { run.cancel() }
        let clips = try ["jfk.wav", "librivox-0870.wav"].map { try loadAudio(path: try Fixtures.sample($0)) }

        /// One statistics round, then the two clips measured as the statistics pass measures live utterances.
        func round(samples: Int) async throws -> (served: Double, candidate: Double) {
            await service.statisticsGrew(to: samples)
            try await eventually("a candidate in shadow") { service.store.shadow != nil }
            let shadow = try XCTUnwrap(service.store.shadow)
            let generation = try XCTUnwrap(service.store.current?.generation)
            var sums = (served: NextTokenDivergence(), candidate: NextTokenDivergence())
            for clip in clips {
                let drift = try OwnSpeechDrift.measure(samples: clip, fullPrecision: float,
                                                       served: service.store.current!.provided.model,
                                                       candidate: shadow.provided.model)
                sums.served.merge(drift.served)
                sums.candidate.merge(drift.candidate!)
                await service.measured(generation: generation, served: drift.served, candidate: (shadow.id, drift.candidate!))
            }
            XCTAssertNil(service.store.shadow, "decided after two utterances")
            return (sums.served.meanKL, sums.candidate.meanKL)
        }

        let first = try await round(samples: 1)
        print(String(format: "uniform 4 serving, uniform 3 candidate: drift %.4f vs %.4f nats", first.served, first.candidate))
        XCTAssertGreaterThan(first.candidate, first.served)
        XCTAssertTrue(service.store.current?.provided.model === served, "the damaged candidate was promoted")
        XCTAssertEqual(service.store.ownDrift?.utterances, 2)

        let second = try await round(samples: 2)
        print(String(format: "uniform 4 serving, uniform 5 candidate: drift %.4f vs %.4f nats", second.served, second.candidate))
        XCTAssertLessThan(second.candidate, second.served)
        XCTAssertTrue(service.store.current?.provided.model === better, "the better candidate was not promoted")
        XCTAssertEqual(service.store.current?.reason, .statistics)
        await service.shutdown()
    }
}
