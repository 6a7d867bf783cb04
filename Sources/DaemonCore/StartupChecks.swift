import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Quantization

extension DaemonConfiguration {
    /// Start-up's own model check, without serving: the model service is started exactly as `Daemon.start()`
    /// starts it (the model loads; the budget's model is built, with the personal statistics the state directory
    /// holds, and passes its self-check) and then stopped. `myqasrd --check-config` runs this, so a file it calls
    /// valid also starts, and one that start-up refuses it refuses with the same message and exit status. It
    /// only reads the state directory (start-up may set an unreadable statistics file aside; here it is ignored,
    /// as start-up then ignores it too).
    /// - Throws: `DaemonError.budget` (a configuration error: exit 78) or `DaemonError.model` (exit 1), as start-up.
    public func checkModelAndBudget(environment: [String: String] = ProcessInfo.processInfo.environment) async throws {
        let path = (resolvedStateDirectory(environment: environment) as NSString)
            .appendingPathComponent(PersonalStatistics.fileName)
        // As `PersonalStatistics` hands them out: a copy for each build (which drops their moments as it goes), used
        // only for the model they came from.
        let saved = try? StatisticsFile.load(path: path)
        let statistics: (@Sendable (String) -> ActivationStatistics?)? = saved.map { saved in
            { identity in saved.modelIdentity == identity && saved.sampleCount > 0 ? saved.copy() : nil }
        }
        let quiet = Logger(label: "myqasrd.check", factory: { _ in SwiftLogNoOpLogHandler() })
        // With `memory_budget = "auto"`, free memory is read now, as start-up reads it.
        let follower = BudgetFollower(policy: AutoBudgetPolicy(reserve: memoryReserve), interval: memoryPollInterval,
                                      files: .ofThisProcess(), logger: quiet)
        let service = ModelService(
            source: model, budget: Daemon.budget(self, follower: follower), requantizeAfter: requantizeAfter,
            shadowUtterances: shadowUtterances, pipeline: Daemon.defaultPipeline(personalStatistics: statistics),
            logger: quiet)
        do {
            _ = try await service.start()
        } catch {
            throw Daemon.startFailure(error, model: model)
        }
        await service.shutdown()
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
