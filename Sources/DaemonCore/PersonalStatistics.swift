import Capture
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Quantization
import WhisperEngine

/// The daemon's personalisation statistics: activation statistics of the full-precision model on the user's
/// own live utterances (per-layer aggregates only, `ActivationStatistics`), kept in the state directory. It only
/// gathers: each time the statistics grow it publishes the sample count (`whenSamplesGrow`), and the
/// `ModelService` decides whether to quantize again; `BudgetModelProvider` reads them when it builds.
///
/// Each live utterance is offered by the transcription worker before its audio is wiped. Its samples are
/// copied into a private buffer and run through the full-precision model again on a background queue with the
/// statistics observing every layer; the copy is wiped as soon as the pass ends, and the transcript is
/// published without waiting for it. The full-precision model is the one in service when that is the float
/// model; while a quantized model serves, it is the source model with its float16 weights left in the file's
/// mapping (`WhisperModel.loadMapped`: page cache, not a float32 copy the budget would have to hold), and the
/// decoder's layers are also observed behind the served model's encoder when it has 4 bits or more
/// (`StatisticsPass.run(served:)`). At most
/// one pass runs at a time; the newest utterance that arrives meanwhile waits for the next pass (an older one
/// waiting is wiped and not gathered: statistics need a sample, not every sample).
///
/// The statistics file (`statistics.myqs`, mode 0600) is rewritten atomically after each pass; a file that cannot
/// be read at start is set aside as `statistics.myqs.corrupt` and gathering starts afresh. Temporary files an
/// interrupted write left (`statistics.myqs.tmp`, and Foundation's `.dat.nosync*` from older versions) are
/// removed at start and at `forget`. Thread-safe.
public final class PersonalStatistics: UtteranceObserver, @unchecked Sendable {  // @unchecked: state guarded by `lock`
    /// File name of the statistics in the state directory.
    public static let fileName = "statistics.myqs"

    private let directory: String?
    private let path: String?
    private let logger: Logger
    private let queue = DispatchQueue(label: "myqasrd.statistics", qos: .utility)
    private let lock = NSLock()
    private let passDone = DispatchGroup()
    // Guarded by `lock`.
    /// The statistics while no file holds them: in memory only (no directory), from a pass until its write ends,
    /// or after a write failed.
    private var statistics: ActivationStatistics?
    /// What the statistics file holds when it holds the statistics: they are read from it when a pass or a build
    /// needs them, and not kept between passes (11.5 MiB for tiny.en that an idle daemon would hold).
    private var saved: (identity: String, samples: Int)?
    private var passRunning = false
    /// The newest utterance that arrived while a pass ran (a copy, with the model that served it): the next pass
    /// takes it. At most one waits; a newer one replaces (and wipes) it.
    private var pending: (copy: SampleCopy, served: WhisperModel)?
    /// One more at every `forget`: a pass that began before it is not merged.
    private var epoch = 0
    private var sourceModel: String?
    private var mapped: (name: String, model: WhisperModel?, identity: String?)?
    private var onSamplesGrew: (@Sendable (Int) -> Void)?
    private var alsoDuringPass: (@Sendable (_ samples: [Float], _ fullPrecision: WhisperModel, _ served: WhisperModel,
                                            _ cancellation: Cancellation) throws -> Void)?

    /// Statistics kept in `directory` (nil: in memory only), loading what an earlier run left there.
    public init(directory: String?, logger: Logger) {
        self.logger = logger
        self.directory = directory
        path = directory.map { ($0 as NSString).appendingPathComponent(Self.fileName) }
        removeLeftovers()
        guard let path, FileManager.default.fileExists(atPath: path) else { return }
        chmod(path, 0o600)  // a file an older version wrote with the umask's mode
        do {
            let loaded = try StatisticsFile.load(path: path)
            saved = (loaded.modelIdentity, loaded.sampleCount)
            logger.info("personal statistics loaded", metadata: ["samples": "\(loaded.sampleCount)"])
        } catch {
            let aside = path + ".corrupt"
            _ = try? FileManager.default.removeItem(atPath: aside)
            _ = try? FileManager.default.moveItem(atPath: path, toPath: aside)
            logger.error("personal statistics unreadable, set aside; gathering starts afresh: \(error)")
        }
    }

    /// Utterances gathered so far.
    public var statisticsSamples: Int { locked { statistics?.sampleCount ?? saved?.samples ?? 0 } }

    /// A copy of the statistics if they were gathered on the model with `modelIdentity` (`ModelIdentity.of`): read
    /// from their file when it holds them.
    public func statistics(for modelIdentity: String) -> ActivationStatistics? {
        let (copy, onFile) = locked { () -> (ActivationStatistics?, Bool) in
            if let statistics {
                let wanted = statistics.modelIdentity == modelIdentity && statistics.sampleCount > 0
                return (wanted ? statistics.copy() : nil, false)
            }
            return (nil, saved.map { $0.identity == modelIdentity && $0.samples > 0 } ?? false)
        }
        return onFile ? readSaved() : copy
    }

    /// The statistics file's contents (nil when it is gone, e.g. forgotten meanwhile, or unreadable), their second
    /// moments left in the file's mapping until each is used: a build reads one layer's at a time, and a merge
    /// replaces one layer's at a time. The file is only ever replaced (`StatisticsFile.write`), never changed in place.
    private func readSaved() -> ActivationStatistics? {
        guard let path else { return nil }
        do {
            return try StatisticsFile.load(path: path, mappingMoments: true)
        } catch {
            if FileManager.default.fileExists(atPath: path) { logger.error("personal statistics unreadable: \(error)") }
            return nil
        }
    }

    /// Names the configured model (`tiny.en`, `base`, a directory or a `.myq` file): what is mapped for the
    /// passes while a quantized form of it serves.
    public func setSourceModel(_ nameOrPath: String) {
        locked { sourceModel = nameOrPath }
    }

    /// Sets what is told the sample count each time a pass has been merged.
    public func whenSamplesGrow(_ body: @escaping @Sendable (Int) -> Void) {
        locked { onSamplesGrew = body }
    }

    /// Sets what else runs in each pass while it holds the utterance's copy (the daemon measures the served model's
    /// drift on it, `OwnSpeechDrift`): given the samples, the full-precision model, the served model and the flag a
    /// transcription sets as it starts (`BackgroundWork`). It gives way as a build's pieces do (`BackgroundWork.givingWay`:
    /// when it stops for a transcription, throwing `DecodingError.cancelled`, it runs again after it, and after a few
    /// stops alone, with a flag nobody sets; the pass holds its turn meanwhile).
    /// It must keep nothing of the samples.
    public func duringPass(_ body: @escaping @Sendable (_ samples: [Float], _ fullPrecision: WhisperModel,
                                                        _ served: WhisperModel, _ cancellation: Cancellation) throws -> Void) {
        locked { alsoDuringPass = body }
    }

    /// Starts a statistics pass over `utterance`, or, while one runs, keeps a copy of it for the next (replacing
    /// and wiping an older one waiting): under load the passes fall behind the utterances, and the newest one is
    /// gathered (and measured, for a candidate in shadow) instead of none. At most two copies exist at once.
    public func observe(utterance: Utterance, transcript: Transcript, model: WhisperModel) {
        let copy = SampleCopy(utterance.withUnsafeSamples { Array($0) })
        let startEpoch = locked { () -> Int? in
            guard !passRunning else {
                pending?.copy.wipe()
                pending = (copy, model)
                return nil
            }
            passRunning = true
            return epoch
        }
        guard let startEpoch else { return }
        passDone.enter()
        run(copy, served: model, epoch: startEpoch)
    }

    /// One pass on the statistics queue, then the utterance waiting, if any; `passDone` is left when none waits.
    private func run(_ copy: SampleCopy, served: WhisperModel, epoch startEpoch: Int) {
        queue.async { [self] in
            let end = BackgroundWork.inTurn {
                defer { WhisperModel.releaseFreedMemory() }   // the pass's activations and caches
                return pass(samples: copy.values, served: served, epoch: startEpoch)
            }
            // A pass that gave way to a transcription runs again once the transcriptions are done (and gives way
            // again), unless a newer utterance waits (gathered instead, as under load) or the statistics were
            // forgotten meanwhile. Under a steady stream of transcriptions the passes wait, holding only the newest
            // utterance, rather than run beside them; the turn is free between two tries, so a build still runs.
            if end == .gaveWay, locked({ pending == nil && epoch == startEpoch }) {
                return run(copy, served: served, epoch: startEpoch)
            }
            copy.wipe()
            let next = locked { () -> (SampleCopy, WhisperModel, Int)? in
                guard let waiting = pending else {
                    passRunning = false
                    return nil
                }
                pending = nil
                return (waiting.copy, waiting.served, epoch)
            }
            if let (copy, served, epoch) = next {
                run(copy, served: served, epoch: epoch)
            } else {
                passDone.leave()
            }
        }
    }

    /// Waits until the running pass (if any) and the utterance waiting for the next have finished.
    public func waitForPass() { passDone.wait() }

    /// Whether the statistics are held in memory (for tests): only while no file holds them.
    var holdsStatisticsInMemory: Bool { locked { statistics != nil } }

    /// Whether an utterance waits for the next pass (for tests).
    var hasWaitingUtterance: Bool { locked { pending != nil } }

    /// Forgets the statistics (a pass still running is not merged) and deletes their file, one set aside as
    /// corrupt and any temporary file.
    public func forget() {
        locked {
            epoch += 1
            statistics = nil
            saved = nil
            pending?.copy.wipe()
            pending = nil
        }
        waitForPass()
        guard let path else { return }
        for file in [path, path + ".corrupt"] { _ = try? FileManager.default.removeItem(atPath: file) }
        removeLeftovers()
    }

    /// Removes the temporary files of an interrupted write: `statistics.myqs.tmp` (the statistics writer's fixed
    /// name) and Foundation's `.dat.nosync*` (what atomic writes of earlier versions left).
    private func removeLeftovers() {
        guard let directory, let path else { return }
        var leftovers = [StatisticsFile.temporaryPath(for: path)]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(".dat.nosync") {
            leftovers.append((directory as NSString).appendingPathComponent(name))
        }
        for file in leftovers where FileManager.default.fileExists(atPath: file) {
            do {
                try FileManager.default.removeItem(atPath: file)
                logger.notice("removed a temporary statistics file an interrupted write left", metadata: ["file": "\(file)"])
            } catch {
                logger.error("cannot remove a temporary statistics file: \(error)", metadata: ["file": "\(file)"])
            }
        }
    }

    /// The full-precision model behind `served` and its identity: `served` itself when it is float, else
    /// the source model (`setSourceModel`) mapped (loaded once; nil when there is none, e.g. a `.myq` file).
    private func fullPrecision(behind served: WhisperModel) -> (model: WhisperModel, identity: String, quantized: Bool)? {
        if served.weights.linearLayers.allSatisfy({ $0.weight is FloatMatrix }) {
            return (served, ModelIdentity.of(served), false)
        }
        let (source, known) = locked { (sourceModel, mapped) }
        guard let source else { return nil }
        if let known, known.name == source {
            guard let model = known.model, let identity = known.identity else { return nil }
            return (model, identity, true)
        }
        do {
            let model = try WhisperModel.loadMapped(source, sharingWith: served)
            let identity = ModelIdentity.of(model)
            locked { mapped = (source, model, identity) }
            return (model, identity, true)
        } catch {
            locked { mapped = (source, nil, nil) }
            logger.notice("no full-precision model to map for \(source); statistics are not gathered: \(error)")
            return nil
        }
    }

    /// One utterance's pass: its statistics gathered and merged, then what else runs on it (`duringPass`), which
    /// starts once the pass's sums and the merged statistics have left memory.
    private func pass(samples: [Float], served: WhisperModel, epoch startEpoch: Int) -> PassEnd {
        // The pass reads the full-precision model, and of the quantized one that served at most its encoder (for
        // the decoder's statistics): the served model's layer pages (about 20 MiB for tiny.en at 24 MiB), and the code
        // and free heap the transcription left, leave the resident set while it runs, and before the first pass maps
        // the full-precision model. The page cache keeps them: the next transcription maps them again with minor
        // faults (under 1 ms for 25 MB here), and one running meanwhile just reads them. A float model's matrices are
        // memory of its own and stay.
        served.weights.releaseResidentPages()
        WhisperModel.releaseFreedMemory()
        guard let (model, identity, quantized) = fullPrecision(behind: served) else { return .dropped }
        let end = gather(samples: samples, model: model, identity: identity, served: quantized ? served : nil,
                         epoch: startEpoch)
        // The decoder's part of the pass read the served model's encoder: those pages go back as well.
        if quantized { served.weights.releaseResidentPages() }
        guard end == .merged else { return end }
        WhisperModel.releaseFreedMemory()
        if let also = locked({ alsoDuringPass }) {
            // It starts while no transcription runs, and gives way as a build's pieces do (`BackgroundWork.givingWay`).
            do {
                try BackgroundWork.givingWay { try also(samples, model, served, $0) }
            } catch {
                logger.error("what runs beside the pass failed: \(error)")
            }
            // The drift measurement read the served model again: its pages go back too, until a transcription.
            if quantized { served.weights.releaseResidentPages() }
        }
        return end
    }

    /// How a pass ended: merged, stopped for a transcription (`BackgroundWork`; it runs again), or dropped (it
    /// failed, there was no full-precision model, or the statistics were forgotten meanwhile).
    private enum PassEnd { case merged, gaveWay, dropped }

    /// Gathers `samples`' statistics on the full-precision `model` (the decoder's also behind the encoder of
    /// `served`, the quantized model in service, if any: `StatisticsPass.run(served:)`) and merges them into the kept ones,
    /// unless a transcription starts first: it stops the gathering (`BackgroundWork.stoppable`), and the pass
    /// gives way.
    private func gather(samples: [Float], model: WhisperModel, identity: String, served: WhisperModel?,
                        epoch startEpoch: Int) -> PassEnd {
        let started = DispatchTime.now()
        let pass: ActivationStatistics
        do {
            pass = try BackgroundWork.stoppable { cancellation in
                try StatisticsPass.run(model: model, identity: identity, samples: samples, served: served,
                                       cancellation: cancellation).statistics
            }
        } catch DecodingError.cancelled {
            logger.debug("gathering gave way to a transcription; the pass runs again after it", metadata: [
                "after_s": "\(String(format: "%.2f", TranscriptionWorkers.seconds(since: started)))",
            ])
            return .gaveWay
        } catch {
            logger.error("statistics pass failed: \(error)")
            return .dropped
        }
        // The network's scratch (its windows, caches and row buffers) is free now: its pages go back before the
        // merge allocates, so that the pass's peak is the larger of the two phases rather than the heap both left.
        // The merge cannot stop part-way: it runs alone (`BackgroundWork.alone`), once no transcription runs (it
        // holds only the pass's sums meanwhile), and a transcription that starts during it waits for its end.
        WhisperModel.releaseFreedMemory()
        let mergeStarted = DispatchTime.now()
        guard let (merged, notify) = BackgroundWork.alone({ merge(pass, identity: identity, epoch: startEpoch) }) else {
            logger.info("statistics pass dropped: the statistics were forgotten while it ran")
            return .dropped
        }
        let passModel = served.map {
            StatisticsPass.standsIn($0) ? "mapped float16, decoder also behind the served encoder" : "mapped float16"
        } ?? "served float"
        logger.info("statistics pass", metadata: [
            "samples": "\(merged.sampleCount)",
            "model": "\(passModel)",
            "took_s": "\(String(format: "%.2f", TranscriptionWorkers.seconds(since: started)))",
            "merge_s": "\(String(format: "%.3f", TranscriptionWorkers.seconds(since: mergeStarted)))",
        ])
        notify?(merged.sampleCount)
        return .merged
    }

    /// Merges a pass's statistics into the kept ones and writes them to their file; nil when the statistics were
    /// forgotten since the pass began (`epoch`).
    private func merge(_ pass: ActivationStatistics, identity: String, epoch startEpoch: Int)
        -> (ActivationStatistics, (@Sendable (Int) -> Void)?)?
    {
        // The statistics so far: in memory, or read from their file (passes run one at a time, so no other pass
        // writes it meanwhile; a `forget` meanwhile changes the epoch, and this pass is dropped).
        let onFile = locked { statistics == nil && saved != nil }
        let read = onFile ? readSaved() : nil
        let result = locked { () -> (ActivationStatistics, (@Sendable (Int) -> Void)?)? in
            guard epoch == startEpoch else { return nil }   // forgotten meanwhile
            let kept = statistics ?? read
            // Statistics of another model (the configured one changed) are replaced, not mixed.
            let mergedIntoKept = kept.map { $0.modelIdentity == identity && (try? $0.merge(pass)) != nil } ?? false
            statistics = mergedIntoKept ? kept : pass
            saved = nil
            return (statistics!, onSamplesGrew)
        }
        guard let result else { return nil }
        let merged = result.0
        if let path {
            do {
                try StatisticsFile.write(merged, to: path)
                chmod(path, 0o600)
                // The file holds them now: they leave memory until the next pass or build reads them.
                locked {
                    guard epoch == startEpoch, statistics === merged else { return }
                    statistics = nil
                    saved = (merged.modelIdentity, merged.sampleCount)
                }
            } catch {
                logger.error("personal statistics not saved: \(error)")
            }
        }
        return result
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}

/// The copy of an utterance's samples a statistics pass holds (or waits with); `wipe` zeroes it in place (the
/// pass has returned, or never started, by then, so the array is not shared and is not copied on write).
private final class SampleCopy: @unchecked Sendable {  // @unchecked: read by one pass, then wiped after it ends
    var values: [Float]

    init(_ values: [Float]) { self.values = values }

    func wipe() {
        values.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { explicit_bzero(base, raw.count) }
        }
    }
}
