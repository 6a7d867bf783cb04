import Capture
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Quantization
import WhisperEngine

/// The daemon's personalisation statistics: activation statistics of the full-precision model on the user's
/// own live utterances (per-layer aggregates only, `ActivationStatistics`), kept in the state directory and
/// handed to `BudgetModelProvider`, which allocates the widths of the next quantization from them.
///
/// Each live utterance is offered by the transcription worker before its audio is wiped. When the model in
/// service is the float one, the samples are copied into a private buffer and run through that model again on
/// a background queue with the statistics observing every layer; the copy is wiped as soon as the pass ends,
/// and the transcript is published without waiting for it. At most one pass runs at a time: an utterance that
/// arrives meanwhile is not gathered (statistics need a sample, not every sample). While a quantized model is
/// served the float weights are not in memory (that is what the budget is for), so gathering pauses until the
/// float model is served again.
///
/// The statistics file (`statistics.myqs`) is rewritten atomically after each pass; a file that cannot be read
/// at start is set aside as `statistics.myqs.corrupt` and gathering starts afresh. Thread-safe.
public final class PersonalStatistics: UtteranceObserver, @unchecked Sendable {
    /// File name of the statistics in the state directory.
    public static let fileName = "statistics.myqs"

    private let path: String?
    private let logger: Logger
    private let queue = DispatchQueue(label: "myqasrd.statistics", qos: .utility)
    private let lock = NSLock()
    private let passDone = DispatchGroup()
    // Guarded by `lock`.
    private var statistics: ActivationStatistics?
    private var passRunning = false

    /// Statistics kept in `directory` (nil: in memory only), loading what an earlier run left there.
    public init(directory: String?, logger: Logger) {
        self.logger = logger
        path = directory.map { ($0 as NSString).appendingPathComponent(Self.fileName) }
        guard let path, FileManager.default.fileExists(atPath: path) else { return }
        do {
            statistics = try StatisticsFile.load(path: path)
            logger.info("personal statistics loaded", metadata: ["samples": "\(statistics?.sampleCount ?? 0)"])
        } catch {
            let aside = path + ".corrupt"
            _ = try? FileManager.default.removeItem(atPath: aside)
            _ = try? FileManager.default.moveItem(atPath: path, toPath: aside)
            logger.error("personal statistics unreadable, set aside; gathering starts afresh: \(error)")
        }
    }

    /// Utterances gathered so far.
    public var statisticsSamples: Int { locked { statistics?.sampleCount ?? 0 } }

    /// A copy of the statistics if they were gathered on the model with `modelIdentity` (`ModelIdentity.of`).
    public func statistics(for modelIdentity: String) -> ActivationStatistics? {
        locked { () -> ActivationStatistics? in
            guard let statistics, statistics.modelIdentity == modelIdentity, statistics.sampleCount > 0 else { return nil }
            let copy = ActivationStatistics(modelIdentity: modelIdentity)
            try? copy.merge(statistics)
            return copy
        }
    }

    /// Starts a statistics pass over `utterance` when the float model is in service and no pass is running.
    public func observe(utterance: Utterance, transcript: Transcript, model: WhisperModel) {
        guard model.weights.linearLayers.allSatisfy({ $0.weight is FloatMatrix }) else { return }
        guard locked({ () -> Bool in
            if passRunning { return false }
            passRunning = true
            return true
        }) else { return }
        let copy = SampleCopy(utterance.withUnsafeSamples { Array($0) })
        passDone.enter()
        queue.async { [self] in
            defer {
                copy.wipe()
                locked { passRunning = false }
                passDone.leave()
            }
            gather(samples: copy.values, model: model)
        }
    }

    /// Waits until the running pass (if any) has finished.
    public func waitForPass() { passDone.wait() }

    /// Forgets the statistics and deletes their file (and one set aside as corrupt).
    public func forget() {
        waitForPass()
        locked { statistics = nil }
        guard let path else { return }
        for file in [path, path + ".corrupt"] { _ = try? FileManager.default.removeItem(atPath: file) }
    }

    private func gather(samples: [Float], model: WhisperModel) {
        let started = DispatchTime.now()
        let identity = ModelIdentity.of(model)
        let pass = ActivationStatistics(modelIdentity: identity)
        do {
            let recognizer = try SpeechRecognizer(model: model, threads: 1, observer: pass)
            _ = try recognizer.transcribe(samples: samples)
            pass.finishSample()
            if let error = pass.observationError { throw error }
        } catch {
            logger.error("statistics pass failed: \(error)")
            return
        }
        let merged = locked { () -> ActivationStatistics in
            // Statistics of another model (the configured one changed) are replaced, not mixed.
            if let kept = statistics, kept.modelIdentity == identity, (try? kept.merge(pass)) != nil { return kept }
            statistics = pass
            return pass
        }
        if let path {
            do {
                try StatisticsFile.write(merged, to: path)
            } catch {
                logger.error("personal statistics not saved: \(error)")
            }
        }
        logger.info("statistics pass", metadata: [
            "samples": "\(merged.sampleCount)", "took_s": "\(String(format: "%.2f", TranscriptionWorkers.seconds(since: started)))",
        ])
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}

/// The one copy of an utterance's samples a statistics pass holds; `wipe` zeroes it in place (the pass has
/// returned by then, so the array is not shared and is not copied on write).
private final class SampleCopy: @unchecked Sendable {
    var values: [Float]

    init(_ values: [Float]) { self.values = values }

    func wipe() {
        values.withUnsafeMutableBytes { raw in
            if let base = raw.baseAddress { explicit_bzero(base, raw.count) }
        }
    }
}
