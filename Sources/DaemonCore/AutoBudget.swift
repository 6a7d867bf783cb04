import Foundation
import Logging
import Units

/// `memory_budget = "auto"`: the weights' budget follows the memory the daemon may use.
///
/// Every reading (the daemon takes one every few seconds) gives:
/// - the limits of the daemon's own cgroup: `memory.high` and `memory.max` (cgroup v2, systemd's `MemoryHigh=` and
///   `MemoryMax=`; "max" means none), or `memory.limit_in_bytes` under cgroup v1;
/// - `MemAvailable` from `/proc/meminfo`;
/// - memory pressure: PSI's `some avg10` (percent of the last 10 s in which some task waited for memory), from the
///   cgroup's `memory.pressure`, else `/proc/pressure/memory`.
///
/// The room for the weights is the smaller of `cgroup limit − reserve` and `MemAvailable + weights in service −
/// reserve` (the weights in service count as available: they are what a new model replaces), rounded down to a MiB.
/// `reserve` is what is left for everything else: the daemon's own working set inside its cgroup (audio buffers,
/// the encoder's scratch) and other programs outside it.
///
/// Hysteresis, so that the budget does not flap and the model is not quantized again for every small move:
/// - **down at once** when the model in service no longer fits the room, or under pressure (`some avg10` at or above
///   `pressureThreshold`): then to at most `pressureStep` of the weights in service, so the next model is smaller
///   even when the room looks large; after pressure the budget does not rise for `holdAfterPressure`;
/// - **up** only when the room has stayed at least `riseFactor` times the budget in force for `riseDelay`.
///
/// Pure: readings and time come in, a decision goes out (tests drive it with made-up readings and clocks).
public struct AutoBudgetPolicy: Sendable, Equatable {
    /// Memory left for everything but the weights, in bytes.
    public var reserve: Int
    /// PSI `some avg10` (percent) at which the budget steps down at once.
    public var pressureThreshold: Double = 10
    /// Under pressure the next budget is at most this fraction of the weights in service.
    public var pressureStep: Double = 0.75
    /// Seconds after pressure during which the budget does not rise.
    public var holdAfterPressure: Double = 300
    /// The room must reach this multiple of the budget in force before the budget rises...
    public var riseFactor: Double = 1.25
    /// ...and stay there this many seconds.
    public var riseDelay: Double = 60

    /// A policy leaving `reserve` bytes free.
    public init(reserve: Int) {
        self.reserve = reserve
    }

    /// What the policy remembers between readings.
    public struct State: Sendable, Equatable {
        /// The budget in force (nil before the first decision).
        public var budget: Int?
        /// Since when the room has been high enough to rise (nil: it is not).
        public var risingSince: Double?
        /// When pressure last forced a step down.
        public var lastPressure: Double?

        /// The state before any reading.
        public init(budget: Int? = nil, risingSince: Double? = nil, lastPressure: Double? = nil) {
            self.budget = budget
            self.risingSince = risingSince
            self.lastPressure = lastPressure
        }
    }

    /// Why the budget is what it is (shown by `status`).
    public enum Reason: String, Sendable, Equatable {
        /// The first reading.
        case initial
        /// The model in service no longer fits the room.
        case shrank
        /// Memory pressure.
        case pressure
        /// The room stayed larger for `riseDelay`.
        case grew
    }

    /// The room for the weights in `reading`, in bytes (nil when nothing limits it), before hysteresis.
    public func room(_ reading: MemoryReading, servedWeightBytes: Int) -> Int? {
        var room: Int?
        if let limit = reading.cgroupLimit { room = limit - reserve }
        if let available = reading.memAvailable {
            let system = available + servedWeightBytes - reserve
            room = room.map { min($0, system) } ?? system
        }
        return room.map { max(0, $0) / (1 << 20) * (1 << 20) }
    }

    /// The next state and, when the budget changes, the new budget and why.
    public func decide(_ reading: MemoryReading, servedWeightBytes: Int, state: State, now: Double)
        -> (state: State, change: (budget: Int?, reason: Reason)?)
    {
        var next = state
        let room = self.room(reading, servedWeightBytes: servedWeightBytes)
        guard let current = state.budget else {
            next.budget = room
            next.risingSince = nil
            return (next, room.map { ($0, .initial) })
        }
        guard let room else { return (next, nil) }   // nothing to read any more: keep the budget in force

        if let pressure = reading.pressureSomeAvg10, pressure >= pressureThreshold {
            let stepped = Int(Double(servedWeightBytes) * pressureStep) / (1 << 20) * (1 << 20)
            let target = min(room, stepped, current)
            next.lastPressure = now
            next.risingSince = nil
            guard target < current else { return (next, nil) }
            next.budget = target
            return (next, (target, .pressure))
        }
        if servedWeightBytes > room {
            next.budget = room
            next.risingSince = nil
            return (next, (room, .shrank))
        }
        if room >= Int(Double(current) * riseFactor) {
            if let last = state.lastPressure, now - last < holdAfterPressure { return (next, nil) }
            let since = state.risingSince ?? now
            next.risingSince = since
            guard now - since >= riseDelay else { return (next, nil) }
            next.budget = room
            next.risingSince = nil
            return (next, (room, .grew))
        }
        next.risingSince = nil
        return (next, nil)
    }
}

/// One reading of the memory the daemon may use (see `AutoBudgetPolicy`).
public struct MemoryReading: Sendable, Equatable {
    /// The smaller of the cgroup's `memory.high` and `memory.max` (nil: neither is set).
    public var cgroupLimit: Int?
    /// `MemAvailable` in bytes (nil: not readable).
    public var memAvailable: Int?
    /// PSI `some avg10` in percent (nil: not readable).
    public var pressureSomeAvg10: Double?

    /// A reading with the given figures.
    public init(cgroupLimit: Int?, memAvailable: Int?, pressureSomeAvg10: Double?) {
        self.cgroupLimit = cgroupLimit
        self.memAvailable = memAvailable
        self.pressureSomeAvg10 = pressureSomeAvg10
    }
}

/// Where the readings come from. The defaults are the running process's own cgroup and the kernel's files; tests
/// point them into a folder of their own.
public struct MemoryFiles: Sendable, Equatable {
    /// The folder of the daemon's cgroup (nil: none found).
    public var cgroupDirectory: String?
    /// `/proc/meminfo`.
    public var meminfo: String
    /// System-wide PSI, used when the cgroup has no `memory.pressure`.
    public var systemPressure: String

    /// Explicit paths.
    public init(cgroupDirectory: String?, meminfo: String = "/proc/meminfo",
                systemPressure: String = "/proc/pressure/memory") {
        self.cgroupDirectory = cgroupDirectory
        self.meminfo = meminfo
        self.systemPressure = systemPressure
    }

    /// The running process's files: its cgroup v2 folder (the `0::` line of `/proc/self/cgroup` under
    /// `/sys/fs/cgroup`), else its cgroup v1 memory controller folder.
    public static func ofThisProcess(procCgroup: String = "/proc/self/cgroup", root: String = "/sys/fs/cgroup")
        -> MemoryFiles
    {
        var directory: String?
        if let text = try? String(contentsOfFile: procCgroup, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3 else { continue }
                if parts[0] == "0" && parts[1].isEmpty {
                    let candidate = root + String(parts[2])
                    if FileManager.default.fileExists(atPath: candidate + "/memory.max") { directory = candidate; break }
                }
                if parts[1].split(separator: ",").contains("memory") {
                    let candidate = root + "/memory" + String(parts[2])
                    if FileManager.default.fileExists(atPath: candidate + "/memory.limit_in_bytes") { directory = candidate }
                }
            }
        }
        return MemoryFiles(cgroupDirectory: directory)
    }

    /// Reads the files now; a file that is missing or unreadable leaves its figure nil.
    public func read() -> MemoryReading {
        var limit: Int?
        if let directory = cgroupDirectory {
            for name in ["memory.max", "memory.high", "memory.limit_in_bytes"] {
                guard let value = Self.limitValue(directory + "/" + name) else { continue }
                limit = limit.map { min($0, value) } ?? value
            }
        }
        var pressure = cgroupDirectory.flatMap { Self.someAvg10(file: $0 + "/memory.pressure") }
        if pressure == nil { pressure = Self.someAvg10(file: systemPressure) }
        return MemoryReading(cgroupLimit: limit, memAvailable: Self.memAvailable(file: meminfo),
                             pressureSomeAvg10: pressure)
    }

    /// A cgroup limit file: a byte count; "max" (v2) or a value near Int64.max (v1's "unlimited") is none.
    static func limitValue(_ path: String) -> Int? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard value != "max", let bytes = Int(value), bytes > 0, bytes < 1 << 60 else { return nil }
        return bytes
    }

    /// `MemAvailable:  123456 kB` -> bytes.
    static func memAvailable(file: String) -> Int? {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kib = Int(fields[1]), kib >= 0, kib < 1 << 50 else { return nil }
            return kib * 1024
        }
        return nil
    }

    /// `some avg10=1.23 avg60=… avg300=… total=…` -> 1.23.
    static func someAvg10(file: String) -> Double? {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("some ") {
            for field in line.split(separator: " ") where field.hasPrefix("avg10=") {
                guard let value = Double(field.dropFirst(6)), value.isFinite, value >= 0 else { return nil }
                return value
            }
        }
        return nil
    }
}

/// Feeds `memory_budget = "auto"` into the model service: one reading of the memory files every `interval`, the
/// policy's decision, and a changed budget handed to `ModelService.followMemory` (which serves it as a `budget`
/// command would, unless the user's own `budget` command is in force). A budget the service refuses (no model
/// fits, or the one that fits fails its self-check) is not asked for again, nor any smaller one, until a reload.
///
/// A task that sleeps between readings; the reading itself is a few small file reads.
public final class BudgetFollower: @unchecked Sendable {  // @unchecked: mutable state guarded by `lock`
    private let files: MemoryFiles
    private let logger: Logger
    private let lock = NSLock()
    private var policy: AutoBudgetPolicy
    private var interval: Double
    private var state = AutoBudgetPolicy.State()
    private var refusedAtOrBelow: Int?
    private var task: Task<Void, Never>?
    private let clock: @Sendable () -> Double

    /// A follower reading `files` every `interval` seconds with `policy`.
    public init(policy: AutoBudgetPolicy, interval: Double, files: MemoryFiles, logger: Logger,
                clock: @escaping @Sendable () -> Double = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }) {
        self.policy = policy
        self.interval = interval
        self.files = files
        self.logger = logger
        self.clock = clock
    }

    /// The first budget (nil: nothing limits it), from a reading now with `servedWeightBytes` in service; the policy
    /// starts from it. Also what a reload with `memory_budget = "auto"` calls, with the reloaded settings.
    public func initialBudget(policy: AutoBudgetPolicy? = nil, interval: Double? = nil, servedWeightBytes: Int = 0) -> Int? {
        let reading = files.read()
        return locked {
            if let policy { self.policy = policy }
            if let interval { self.interval = interval }
            refusedAtOrBelow = nil
            let (next, _) = self.policy.decide(reading, servedWeightBytes: servedWeightBytes,
                                               state: AutoBudgetPolicy.State(), now: clock())
            state = next
            logger.info("memory budget follows free memory", metadata: Self.metadata(reading, budget: next.budget,
                                                                                        reserve: self.policy.reserve))
            return next.budget
        }
    }

    /// Reads every `interval` until `stop()`, handing changes to `service`.
    public func start(service: ModelService) {
        locked {
            task?.cancel()
            task = Task { [weak self] in
                while !Task.isCancelled, let self {
                    let seconds = self.locked { self.interval }
                    try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
                    if Task.isCancelled { break }
                    await self.step(service: service)
                }
            }
        }
    }

    /// Stops reading.
    public func stop() {
        locked {
            task?.cancel()
            task = nil
        }
    }

    /// One reading and, when the budget moves, one request to the service.
    func step(service: ModelService) async {
        let served = service.store.current?.provided.weightBytes ?? 0
        let reading = files.read()
        let change: (budget: Int?, reason: AutoBudgetPolicy.Reason)? = locked {
            let (next, change) = policy.decide(reading, servedWeightBytes: served, state: state, now: clock())
            guard let change else {
                state = next
                return nil
            }
            if let floor = refusedAtOrBelow, let bytes = change.budget, bytes <= floor {
                state.risingSince = next.risingSince
                state.lastPressure = next.lastPressure
                return nil
            }
            state = next
            return change
        }
        guard let change else { return }
        var metadata = Self.metadata(reading, budget: change.budget, reserve: locked { policy.reserve })
        metadata["why"] = "\(change.reason.rawValue)"
        logger.info("free memory moved the memory budget", metadata: metadata)
        do {
            try await service.followMemory(change.budget)
        } catch {
            // Not asked again at this size or below; the policy carries on from the budget still in force.
            let inForce = service.store.current?.target.budget.bytes
            locked {
                if let bytes = change.budget { refusedAtOrBelow = max(refusedAtOrBelow ?? bytes, bytes) }
                state.budget = inForce ?? state.budget
            }
            logger.warning("the memory budget from free memory was refused; the model in service stays: \(error)")
        }
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    private static func metadata(_ reading: MemoryReading, budget: Int?, reserve: Int) -> Logger.Metadata {
        [
            "budget": "\(budget.map(ByteSize.format) ?? "unlimited")",
            "cgroup_limit": "\(reading.cgroupLimit.map(ByteSize.format) ?? "none")",
            "mem_available": "\(reading.memAvailable.map(ByteSize.format) ?? "unknown")",
            "pressure_avg10": "\(reading.pressureSomeAvg10.map { String(format: "%.2f", $0) } ?? "unknown")",
            "reserve": "\(ByteSize.format(reserve))",
        ]
    }
}
