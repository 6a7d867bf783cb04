import Capture
import Audio
import DaemonCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Quantization
import WhisperEngine
import XCTest

/// The daemon's provider: float when it fits, else the highest uniform width that fits, else a refusal that
/// names the smallest reachable size.
final class BudgetModelProviderTests: XCTestCase {
    private let mib = 1024 * 1024

    /// The choice alone, on made-up sizes: the boundaries are inclusive and 7 bits is never chosen.
    func testPlanTakesTheHighestWidthThatFits() throws {
        let footprint = ModelFootprint(floatBytes: 100, uniformBytes: [8: 40, 6: 31, 5: 27, 4: 23, 3: 18, 2: 14])
        func plan(_ budget: Int?) throws -> PrecisionPlan {
            try BudgetModelProvider.plan(model: "m", budget: budget, footprint: footprint)
        }
        XCTAssertEqual(try plan(nil), .float)
        XCTAssertEqual(try plan(100), .float)
        XCTAssertEqual(try plan(99), .uniform(bits: 8))
        XCTAssertEqual(try plan(40), .uniform(bits: 8))
        XCTAssertEqual(try plan(39), .uniform(bits: 6))
        XCTAssertEqual(try plan(27), .uniform(bits: 5))
        XCTAssertEqual(try plan(26), .uniform(bits: 4))
        XCTAssertEqual(try plan(18), .uniform(bits: 3))
        XCTAssertEqual(try plan(14), .uniform(bits: 2))
        XCTAssertThrowsError(try plan(13)) { error in
            XCTAssertEqual(error as? ModelProviderError,
                           .impossibleBudget(model: "m", budget: 13, smallest: 14, lowestBits: 2))
            XCTAssertTrue("\(error)".contains("smallest reachable size of m, with every layer at 2 bits, is 14 B"), "\(error)")
        }
    }

    /// With a lowest width (a forget whose model failed its check at the budget): the highest width at or above
    /// it that fits, else the lowest width at or above it, over the budget; above 8 bits, float.
    func testPlanWithALowestWidthGoesOverTheBudgetOnlyWhenItMust() throws {
        let footprint = ModelFootprint(floatBytes: 100, uniformBytes: [8: 40, 6: 31, 5: 27, 4: 23, 3: 18, 2: 14])
        func plan(_ budget: Int?, _ lowest: Int) throws -> PrecisionPlan {
            try BudgetModelProvider.plan(model: "m", budget: budget, footprint: footprint, lowestBits: lowest)
        }
        XCTAssertEqual(try plan(26, 3), .uniform(bits: 4), "4 bits fit")
        XCTAssertEqual(try plan(15, 3), .uniform(bits: 3), "over the budget")
        XCTAssertEqual(try plan(1, 3), .uniform(bits: 3), "no impossible budget: the forget must serve")
        XCTAssertEqual(try plan(15, 7), .uniform(bits: 8))
        XCTAssertEqual(try plan(15, 9), .float)
        XCTAssertEqual(try plan(nil, 3), .float)
    }

    /// A layer directory that cannot take the file keeps the layers in memory and says why, whether the file cannot
    /// be made (no such directory), would be memory anyway (tmpfs), or cannot be written to its end (here a file
    /// size limit; a full disk alike): the model is then built again in memory, the same model.
    func testLayersStayInMemoryWhereTheFileCannotTakeThem() throws {
        let path = try Fixtures.tinyModel()
        func provide(_ directory: String) throws -> ProvidedModel {
            try BudgetModelProvider(layerDirectory: directory)
                .provide(ModelRequest(name: path, budgetBytes: 24 * mib, reloadFromDisk: true))
        }
        func mapped(_ provided: ProvidedModel) -> Bool {
            provided.model.weights.linearLayers.contains { ($0.weight as? QuantizedMatrix)?.packed.isMemoryMapped == true }
        }
        let absent = NSTemporaryDirectory() + "myqasr-absent-\(UUID().uuidString)"
        let inMemory = try provide(absent)
        XCTAssertTrue(inMemory.layerStorage.hasPrefix("memory (cannot make a file for the model's layers in \(absent)"),
                      inMemory.layerStorage)
        XCTAssertFalse(mapped(inMemory))

        let directory = NSTemporaryDirectory() + "myqasr-layers-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Files of this process may not grow past 1 MiB for the build (writes past it fail with EFBIG; SIGXFSZ, which
        // would end the process, is ignored meanwhile).
        var saved = rlimit(), limited = rlimit(rlim_cur: 1 << 20, rlim_max: 0)
        getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &saved)
        limited.rlim_max = saved.rlim_max
        let previous = signal(SIGXFSZ, SIG_IGN)
        guard setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limited) == 0 else {
            return XCTFail("cannot lower RLIMIT_FSIZE: errno \(errno)")
        }
        let rebuilt: ProvidedModel
        do {
            defer {
                setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &saved)
                signal(SIGXFSZ, previous)
            }
            rebuilt = try provide(directory)
        }
        XCTAssertTrue(rebuilt.layerStorage.hasPrefix("memory (cannot write the model's layers to a file in \(directory)"),
                      rebuilt.layerStorage)
        XCTAssertFalse(mapped(rebuilt))
        for (a, b) in zip(inMemory.model.weights.linearLayers, rebuilt.model.weights.linearLayers) {
            let qa = try XCTUnwrap(a.weight as? QuantizedMatrix), qb = try XCTUnwrap(b.weight as? QuantizedMatrix)
            XCTAssertEqual(qa.packed.withUnsafeBytes { Array($0) }, qb.packed.withUnsafeBytes { Array($0) }, a.name)
        }
        let written = try provide(directory)
        XCTAssertEqual(written.layerStorage, "an unnamed file in \(directory)")
        XCTAssertTrue(mapped(written))
    }

    /// tiny.en: no budget serves float; 24 MiB serves every layer at 4 bits within the budget and still
    /// recognises JFK; a budget at exactly the 5-bit size gets 5 bits; a change that keeps the width reuses the
    /// model; a budget below the 2-bit size is refused with that size.
    func testTinyModelAtBudgets() async throws {
        let path = try Fixtures.tinyModel()
        let provider = BudgetModelProvider()
        // The model in service comes with each request: the provider keeps none, and reuses it when the plan stays.
        func provide(_ budget: Int?, reload: Bool = false, serving: ProvidedModel? = nil) throws -> ProvidedModel {
            try provider.provide(ModelRequest(name: path, budgetBytes: budget, reloadFromDisk: reload, serving: serving,
                                              servingName: path))
        }

        let float = try provide(nil)
        XCTAssertTrue(float.budgetMet)
        XCTAssertEqual(float.layerBits.count, 47)
        XCTAssertEqual(Set(float.layerBits.values), [32])
        XCTAssertEqual(float.weightBytes, float.model.weights.byteSize)
        let footprint = try ModelFootprint(floatWeights: float.model.weights, widths: BudgetModelProvider.uniformWidths,
                                           groupSize: 32)
        XCTAssertEqual(footprint.floatBytes, float.weightBytes)
        XCTAssertTrue(try provide(float.weightBytes, serving: float).model === float.model, "float fits: the same model, no copy")
        XCTAssertEqual(float.plan, .float)

        let started = Date()
        let four = try provide(24 * mib, serving: float)
        let took = Date().timeIntervalSince(started)
        XCTAssertTrue(four.budgetMet)
        XCTAssertEqual(four.layerBits.count, 47)
        XCTAssertEqual(Set(four.layerBits.values), [4])
        XCTAssertEqual(four.weightBytes, four.model.weights.byteSize, "scales included: the resident bytes")
        XCTAssertEqual(four.weightBytes, footprint.uniformBytes[4])
        XCTAssertLessThanOrEqual(four.weightBytes, 24 * mib)
        XCTAssertGreaterThan(footprint.uniformBytes[5]!, 24 * mib, "5 bits would not have fitted")
        let sizes = footprint.uniformBytes.sorted { $0.key > $1.key }.map { "\($0.key) bits \($0.value) B" }
        print("tiny.en float \(float.weightBytes) B, \(sizes.joined(separator: ", ")); 4-bit quantized in \(String(format: "%.2f", took)) s")

        XCTAssertTrue(try provide(23 * mib, serving: four).model === four.model, "the same width: no requantization")
        XCTAssertFalse(try provide(23 * mib, reload: true, serving: four).model === four.model, "a reload builds again")

        let five = try provide(footprint.uniformBytes[5]!)
        XCTAssertEqual(Set(five.layerBits.values), [5])
        XCTAssertEqual(five.weightBytes, footprint.uniformBytes[5])
        XCTAssertEqual(Set(try provide(footprint.uniformBytes[5]! - 1).layerBits.values), [4])

        let smallest = footprint.uniformBytes[2]!
        XCTAssertEqual(Set(try provide(smallest).layerBits.values), [2])
        for reload in [false, true] {
            XCTAssertThrowsError(try provide(smallest - 1, reload: reload)) { error in
                XCTAssertEqual(error as? ModelProviderError,
                               .impossibleBudget(model: "tiny.en", budget: smallest - 1, smallest: smallest, lowestBits: 2))
                XCTAssertTrue("\(error)".contains("\(smallest) bytes"), "\(error)")
            }
        }

        // The 4-bit model transcribes.
        let store = ModelStore()
        store.swap(to: four, target: ModelTarget(source: path, budget: Budget(bytes: 24 * mib, origin: .command)),
                   reason: .budget, check: nil)
        let workers = TranscriptionWorkers(store: store, count: 1, threads: 2, queueDepth: 2, logger: .init(label: "test"),
                                           onLiveResult: { _ in })
        defer { workers.shutdown() }
        let pcm = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let samples = pcm.withUnsafeBytes { raw in raw.bindMemory(to: Int16.self).map { Float($0) / 32768 } }
        let text = try await workers.transcribe(samples: samples, language: "en", client: "test").text
        XCTAssertTrue(Fixtures.normalise(text).contains(jfkPhrase), text)
    }

    /// The personalisation loop in process: a live utterance served by the float model is run again with the
    /// statistics observing (aggregates written to the state directory, the audio copy wiped); a budget then gets
    /// myQASR's widths from them (4 and 5 bits under 24 MiB, more of the budget used than uniform 4-bit) and the
    /// model still recognises JFK; behind the quantized model the statistics keep growing and ask for a
    /// publish that they grew; the file (0600) survives a restart; a corrupt file is set aside; `forget` deletes both.
    func testPersonalStatisticsChooseTheWidths() throws {
        let path = try Fixtures.tinyModel()
        let directory = NSTemporaryDirectory() + "myqasr-personal-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let statisticsFile = directory + "/" + PersonalStatistics.fileName
        let personal = PersonalStatistics(directory: directory, logger: .init(label: "test"))
        personal.setSourceModel(path)
        let published = Waiter<Int>()
        personal.whenSamplesGrow { published.append($0) }
        let provider = BudgetModelProvider(personalStatistics: { personal.statistics(for: $0) })
        func provide(_ budget: Int?) throws -> ProvidedModel {
            try provider.provide(ModelRequest(name: path, budgetBytes: budget, reloadFromDisk: false))
        }
        let target = ModelTarget(source: path, budget: Budget(bytes: nil, origin: .configuration))

        let float = try provide(nil)
        let store = ModelStore()
        store.swap(to: float, target: target, reason: .start, check: nil)
        let workers = TranscriptionWorkers(store: store, count: 1, threads: 2, queueDepth: 2, logger: .init(label: "test"),
                                           observer: personal, onLiveResult: { _ in })
        defer { workers.shutdown() }
        let pcm = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let samples = pcm.withUnsafeBytes { raw in raw.bindMemory(to: Int16.self).map { Float($0) / 32768 } }
        XCTAssertEqual(personal.statisticsSamples, 0)
        workers.submit(live: Utterance(samples: samples))
        _ = try Waiter<Int>.poll(timeout: 120, what: "one statistics sample") {
            personal.statisticsSamples == 1 ? 1 : nil
        }
        personal.waitForPass()
        XCTAssertTrue(FileManager.default.fileExists(atPath: statisticsFile))
        var info = stat()
        XCTAssertEqual(stat(statisticsFile, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600, "personal: the file is the daemon user's alone")
        XCTAssertEqual(published.all, [1])
        let identity = ModelIdentity.of(float.model)
        XCTAssertEqual(try StatisticsFile.load(path: statisticsFile).sampleCount, 1)
        XCTAssertNil(personal.statistics(for: "another model"))

        let personalised = try provide(24 * mib)
        XCTAssertEqual(personalised.layerStorage, "memory")
        // The daemon's provider writes the layers to an unnamed file in the state directory: the same model, mapped,
        // and no new name in the directory.
        let listing = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        let mapped = try BudgetModelProvider(personalStatistics: { personal.statistics(for: $0) }, layerDirectory: directory)
            .provide(ModelRequest(name: path, budgetBytes: 24 * mib, reloadFromDisk: false))
        XCTAssertEqual(mapped.layerStorage, "an unnamed file in \(directory)")
        XCTAssertEqual(mapped.layerBits, personalised.layerBits)
        for (a, b) in zip(personalised.model.weights.linearLayers, mapped.model.weights.linearLayers) {
            let qa = try XCTUnwrap(a.weight as? QuantizedMatrix), qb = try XCTUnwrap(b.weight as? QuantizedMatrix)
            XCTAssertTrue(qb.packed.isMemoryMapped, a.name)
            XCTAssertEqual(qa.packed.withUnsafeBytes { Array($0) }, qb.packed.withUnsafeBytes { Array($0) }, a.name)
            XCTAssertEqual(qa.scales.withUnsafeBytes { Array($0) }, qb.scales.withUnsafeBytes { Array($0) }, a.name)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory).sorted(), listing)
        XCTAssertEqual(Set(personalised.layerBits.values), [4, 5])
        XCTAssertEqual(personalised.plan, .personalised(budget: 24 * mib, samples: 1))
        XCTAssertEqual(personalised.statisticsSamples, 1)
        XCTAssertLessThanOrEqual(personalised.weightBytes, 24 * mib)
        XCTAssertEqual(personalised.weightBytes, personalised.model.weights.byteSize)
        let uniform4 = try BudgetModelProvider().provide(ModelRequest(name: path, budgetBytes: 24 * mib, reloadFromDisk: false))
        XCTAssertGreaterThan(personalised.weightBytes, uniform4.weightBytes)
        // The sweep lowers the layers with the largest median |output| first (the default order).
        let sensitivities = try XCTUnwrap(personal.statistics(for: identity)).sensitivities
        let five = personalised.layerBits.filter { $0.value == 5 }.keys, four = personalised.layerBits.filter { $0.value == 4 }.keys
        XCTAssertLessThanOrEqual(five.map { sensitivities[$0]! }.max()!, four.map { sensitivities[$0]! }.min()!)
        // Its codes come from compensated rounding on the live second moments: exactly the codes of
        // `Quantizer.personalise` (what `myqasr quantize --budget --stats` makes), and not those of nearest rounding
        // at the same widths.
        let kept = try XCTUnwrap(personal.statistics(for: identity))
        XCTAssertEqual(kept.secondMoments?.blockSize, StatisticsPass.momentBlockSize)
        let expected = try Quantizer.personalise(model: float.model, statistics: kept, budget: 24 * mib)
        XCTAssertEqual(expected.metadata.rounding, .compensated)
        var nearestOptions = Quantizer.personalOptions(budget: 24 * mib, statistics: kept)
        nearestOptions.rounding = .nearest
        nearestOptions.groupSize = expected.metadata.groupSize   // the same widths
        let nearest = try Quantizer.quantize(model: float.model, statistics: kept, options: nearestOptions)
        var differsFromNearest = 0
        for ((served, personal), rounded) in zip(zip(personalised.model.weights.linearLayers, expected.weights.linearLayers),
                                                 nearest.weights.linearLayers) {
            let s = try XCTUnwrap(served.weight as? QuantizedMatrix), p = try XCTUnwrap(personal.weight as? QuantizedMatrix)
            let r = try XCTUnwrap(rounded.weight as? QuantizedMatrix)
            XCTAssertEqual(s.bits, r.bits, served.name)
            XCTAssertEqual(s.codes(), p.codes(), "\(served.name): the served codes are compensated rounding's")
            if s.codes() != r.codes() { differsFromNearest += 1 }
        }
        XCTAssertEqual(differsFromNearest, personalised.model.weights.linearLayers.count,
                       "every layer's codes differ from nearest rounding's")
        let recogniser = try SpeechRecognizer(model: personalised.model, threads: 2)
        let text = try recogniser.transcribe(samples: samples).text
        XCTAssertTrue(Fixtures.normalise(text).contains(jfkPhrase), text)

        // Behind the quantized model the passes go on through the mapped float16 source (same identity, so
        // the same statistics grow, and each growth is published); more statistics make another model.
        XCTAssertEqual(store.swap(to: personalised, target: target, reason: .budget, check: nil).generation, 2)
        for expected in [2, 3] {
            workers.submit(live: Utterance(samples: samples))
            _ = try Waiter<Int>.poll(timeout: 120, what: "\(expected) statistics samples") {
                personal.statisticsSamples == expected ? expected : nil
            }
            personal.waitForPass()
        }
        XCTAssertEqual(published.all, [1, 2, 3], "every growth published")
        let again = try provide(24 * mib)
        XCTAssertFalse(again.model === personalised.model, "more statistics: quantized again")
        XCTAssertLessThanOrEqual(again.weightBytes, 24 * mib)

        // A restart finds the statistics; `forget` deletes them and their file.
        XCTAssertEqual(PersonalStatistics(directory: directory, logger: .init(label: "test")).statisticsSamples, 3)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: statisticsFile))
        // The kept statistics carry the bounded second moments, file and restart included.
        XCTAssertEqual(try StatisticsFile.load(path: statisticsFile).secondMoments?.blockSize, StatisticsPass.momentBlockSize)
        let reloaded = PersonalStatistics(directory: directory, logger: .init(label: "test"))
        XCTAssertEqual(reloaded.statistics(for: identity)?.secondMoments?.layerNames.count, 44)
        // A write killed mid-way leaves `statistics.myqs.tmp`: `forget` deletes it with the rest.
        try Data("partial".utf8).write(to: URL(fileURLWithPath: StatisticsFile.temporaryPath(for: statisticsFile)))
        personal.forget()
        XCTAssertFalse(FileManager.default.fileExists(atPath: StatisticsFile.temporaryPath(for: statisticsFile)))
        XCTAssertEqual(personal.statisticsSamples, 0)
        XCTAssertNil(personal.statistics(for: identity))
        XCTAssertFalse(FileManager.default.fileExists(atPath: statisticsFile))

        // A corrupt file is set aside rather than trusted, and gathering starts afresh.
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: statisticsFile))
        let reopened = PersonalStatistics(directory: directory, logger: .init(label: "test"))
        XCTAssertEqual(reopened.statisticsSamples, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: statisticsFile + ".corrupt"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: statisticsFile))
        reopened.forget()
        XCTAssertFalse(FileManager.default.fileExists(atPath: statisticsFile + ".corrupt"), "forget deletes it too")
    }

    /// A personalised quantized model file (as `myqasr quantize` writes) is served as stored: its widths, its
    /// bytes, the same model while the budget allows it, and a refusal naming both sizes when the budget is below
    /// it. It is told by content: named `me.q`, not `.myq`, it is still the quantized model.
    func testQuantizedModelFileIsServedAsStored() throws {
        let source = try WhisperModel.load(try Fixtures.tinyModel())
        let result = try Quantizer.quantize(model: source, statistics: nil,
                                            options: QuantizationOptions(target: .uniform(bits: 4)))
        let directory = NSTemporaryDirectory() + "myqasr-provider-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/me.q"
        try QuantizedModelFile.write(weights: result.weights, metadata: result.metadata, to: file)

        let provider = BudgetModelProvider()
        func provide(_ budget: Int?, reload: Bool = false, serving: ProvidedModel? = nil) throws -> ProvidedModel {
            try provider.provide(ModelRequest(name: file, budgetBytes: budget, reloadFromDisk: reload, serving: serving,
                                              servingName: file))
        }
        let served = try provide(nil)
        XCTAssertEqual(served.model.name, "me.q")
        XCTAssertEqual(Set(served.layerBits.values), [4])
        XCTAssertEqual(served.layerBits.count, 47)
        XCTAssertEqual(served.weightBytes, result.weights.byteSize)
        XCTAssertTrue(served.budgetMet)
        XCTAssertEqual(served.plan, .file)
        XCTAssertTrue(try provide(24 * mib, serving: served).model === served.model, "loaded once")
        XCTAssertFalse(try provide(24 * mib, reload: true, serving: served).model === served.model, "a reload reads the file again")
        let candidate = try provider.candidate(for: ModelRequest(name: file, budgetBytes: nil, reloadFromDisk: true))
        XCTAssertEqual(candidate.fullPrecision?.name, "tiny.en", "checked against its source")
        XCTAssertThrowsError(try provide(20 * mib)) { error in
            XCTAssertEqual(error as? ModelProviderError,
                           .fileAboveBudget(model: "me.q", bytes: served.weightBytes, budget: 20 * mib))
            XCTAssertTrue("\(error)".contains("\(served.weightBytes) bytes"), "\(error)")
        }
        let jfk = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        let text = try SpeechRecognizer(model: served.model).transcribe(samples: jfk).text.lowercased()
        let words = text.split { !$0.isLetter }.joined(separator: " ")
        XCTAssertTrue(words.contains("ask not what your country can do for you"), text)
    }
}
