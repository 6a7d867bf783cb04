import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Quantization
import WhisperEngine

extension DaemonConfiguration {
    /// What start-up checks before it serves, beyond the file itself: the model loads, and the memory budget can
    /// be met by it. The budget is judged exactly as the daemon's provider judges it at start-up: for a model
    /// directory or name, `BudgetModelProvider.plan` on the model's `ModelFootprint`; for a quantized model file (told by content, `ModelSource`), its size
    /// against the budget. `myqasrd --check-config` runs this, so a file it calls valid also starts.
    /// - Throws: `DaemonError.budget` (a configuration error: exit 78) or `DaemonError.model` (exit 1), as start-up.
    public func checkModelAndBudget() throws {
        do {
            if try ModelLocator().source(for: model).isQuantized {
                let loaded = try QuantizedModelFile.loadModel(path: model)
                if let budget = memoryBudget, loaded.weights.byteSize > budget {
                    throw ModelProviderError.fileAboveBudget(model: loaded.name, bytes: loaded.weights.byteSize, budget: budget)
                }
            } else {
                let loaded = try WhisperModel.load(model)
                let footprint = try ModelFootprint(
                    floatWeights: loaded.weights, widths: BudgetModelProvider.uniformWidths,
                    groupSize: QuantizedMatrix.defaultGroupSize)
                _ = try BudgetModelProvider.plan(model: loaded.name, budget: memoryBudget, footprint: footprint)
            }
        } catch let error as ModelProviderError {
            throw DaemonError.budget(reason: "\(error)")
        } catch {
            throw DaemonError.model(name: model, reason: "\(error)")
        }
    }
}

/// Keeps the process's memory (audio and transcripts included) out of core dumps.
public enum CoreDumps {
    /// Makes the process not dumpable (`PR_SET_DUMPABLE` 0: the kernel writes no core file, and only root may
    /// attach a debugger or read its memory through /proc) and sets its core size limit to 0 (a core handler such
    /// as systemd-coredump, which the kernel runs even for processes that are not dumpable when
    /// `fs.suid_dumpable` is 2, then stores nothing). Returns what holds afterwards.
    @discardableResult
    public static func disable() -> (dumpable: Bool, coreLimit: UInt64) {
        _ = myqasr_set_dumpable(0)
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
        return current
    }

    /// Whether the process is dumpable now, and its core size limit.
    public static var current: (dumpable: Bool, coreLimit: UInt64) {
        var limit = rlimit()
        _ = getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
        return (myqasr_get_dumpable() != 0, UInt64(limit.rlim_cur))
    }
}
