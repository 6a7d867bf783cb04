@testable import DaemonCore
import Foundation
import Logging
import XCTest

final class AutoBudgetTests: XCTestCase {
    private let mib = 1 << 20

    private func folder() throws -> String {
        let path = NSTemporaryDirectory() + "autobudget-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    private func write(_ text: String, _ path: String) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
    }

    // MARK: readings

    func testReadsCgroupV2LimitsMemAvailableAndPressure() throws {
        let dir = try folder()
        try write("max\n", dir + "/memory.max")
        try write("536870912\n", dir + "/memory.high")
        try write("some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=1.00 avg60=0 avg300=0 total=1\n",
                  dir + "/memory.pressure")
        try write("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    1048576 kB\n", dir + "/meminfo")
        let reading = MemoryFiles(cgroupDirectory: dir, meminfo: dir + "/meminfo", systemPressure: dir + "/none").read()
        XCTAssertEqual(reading, MemoryReading(cgroupLimit: 536_870_912, memAvailable: 1 << 30, pressureSomeAvg10: 12.5))
    }

    func testTheSmallerOfHighAndMaxLimits() throws {
        let dir = try folder()
        try write("300000000\n", dir + "/memory.max")
        try write("400000000\n", dir + "/memory.high")
        XCTAssertEqual(MemoryFiles(cgroupDirectory: dir, meminfo: dir + "/x", systemPressure: dir + "/x").read().cgroupLimit,
                       300_000_000)
    }

    func testUnlimitedAndMissingFilesReadAsNone() throws {
        let dir = try folder()
        try write("9223372036854771712\n", dir + "/memory.limit_in_bytes")   // cgroup v1's "unlimited"
        try write("garbage\n", dir + "/meminfo")
        try write("some avg10=nan avg60=0\n", dir + "/pressure")
        let reading = MemoryFiles(cgroupDirectory: dir, meminfo: dir + "/meminfo", systemPressure: dir + "/pressure").read()
        XCTAssertEqual(reading, MemoryReading(cgroupLimit: nil, memAvailable: nil, pressureSomeAvg10: nil))
    }

    func testSystemPressureWhenTheCgroupHasNone() throws {
        let dir = try folder()
        try write("some avg10=0.40 avg60=0.10 avg300=0.00 total=9\n", dir + "/pressure")
        XCTAssertEqual(MemoryFiles(cgroupDirectory: dir, meminfo: dir + "/x", systemPressure: dir + "/pressure")
            .read().pressureSomeAvg10, 0.4)
    }

    func testFindsTheProcessCgroupV2FolderThenV1() throws {
        let root = try folder()
        try FileManager.default.createDirectory(atPath: root + "/system.slice/myqasrd.service", withIntermediateDirectories: true)
        try write("max\n", root + "/system.slice/myqasrd.service/memory.max")
        try write("0::/system.slice/myqasrd.service\n", root + "/cgroup")
        XCTAssertEqual(MemoryFiles.ofThisProcess(procCgroup: root + "/cgroup", root: root).cgroupDirectory,
                       root + "/system.slice/myqasrd.service")

        try FileManager.default.createDirectory(atPath: root + "/memory/user/x", withIntermediateDirectories: true)
        try write("1073741824\n", root + "/memory/user/x/memory.limit_in_bytes")
        try write("4:memory:/user/x\n0::/\n", root + "/cgroup")
        XCTAssertEqual(MemoryFiles.ofThisProcess(procCgroup: root + "/cgroup", root: root).cgroupDirectory,
                       root + "/memory/user/x")
        try write("4:cpu:/\n", root + "/cgroup")
        XCTAssertNil(MemoryFiles.ofThisProcess(procCgroup: root + "/cgroup", root: root).cgroupDirectory)
    }

    // MARK: the policy

    private let policy = AutoBudgetPolicy(reserve: 256 << 20)

    private func reading(limit: Int? = nil, available: Int?, pressure: Double? = 0) -> MemoryReading {
        MemoryReading(cgroupLimit: limit, memAvailable: available, pressureSomeAvg10: pressure)
    }

    func testRoomIsTheSmallerOfCgroupAndSystemLessTheReserveInWholeMiB() {
        // cgroup: 512 MiB - 256 = 256 MiB; system: 1 GiB + 30 MiB served - 256 = 798 MiB.
        XCTAssertEqual(policy.room(reading(limit: 512 * mib, available: 1024 * mib), servedWeightBytes: 30 * mib), 256 * mib)
        XCTAssertEqual(policy.room(reading(available: 300 * mib + 12345), servedWeightBytes: 24 * mib), 68 * mib)
        XCTAssertEqual(policy.room(reading(available: 10 * mib), servedWeightBytes: 0), 0)
        XCTAssertNil(policy.room(reading(available: nil), servedWeightBytes: 0))
    }

    func testFirstReadingSetsTheBudget() {
        let (state, change) = policy.decide(reading(available: 400 * mib), servedWeightBytes: 0, state: .init(), now: 0)
        XCTAssertEqual(change?.budget, 144 * mib)
        XCTAssertEqual(change?.reason, .initial)
        XCTAssertEqual(state.budget, 144 * mib)
    }

    func testStepsDownAtOnceWhenTheServedModelNoLongerFits() {
        let state = AutoBudgetPolicy.State(budget: 200 * mib)
        // Served 150 MiB; room = 350 + 150 - 256 = 244 MiB: fits, no change (a small move is ignored).
        XCTAssertNil(policy.decide(reading(available: 350 * mib), servedWeightBytes: 150 * mib, state: state, now: 0).change)
        // Room 100 + 150 - 256 = -6 -> 0... use 300: 300 + 150 - 256 = 194 MiB < 200 budget but served 150 fits: no change.
        XCTAssertNil(policy.decide(reading(available: 300 * mib), servedWeightBytes: 150 * mib, state: state, now: 0).change)
        // 200 + 150 - 256 = 94 MiB < served 150: down at once.
        let (next, change) = policy.decide(reading(available: 200 * mib), servedWeightBytes: 150 * mib, state: state, now: 0)
        XCTAssertEqual(change?.budget, 94 * mib)
        XCTAssertEqual(change?.reason, .shrank)
        XCTAssertEqual(next.budget, 94 * mib)
    }

    func testPressureStepsDownBelowTheServedModelAndHoldsTheBudget() {
        var state = AutoBudgetPolicy.State(budget: 200 * mib)
        // Plenty of room, but pressure: at most 0.75 of the 144 MiB served = 108 MiB.
        var result = policy.decide(reading(available: 4096 * mib, pressure: 25), servedWeightBytes: 144 * mib,
                                   state: state, now: 100)
        XCTAssertEqual(result.change?.budget, 108 * mib)
        XCTAssertEqual(result.change?.reason, .pressure)
        state = result.state
        // Pressure gone, room large, but within the hold: no rise, even after riseDelay.
        for t in stride(from: 110.0, through: 390, by: 10) {
            result = policy.decide(reading(available: 4096 * mib), servedWeightBytes: 100 * mib, state: state, now: t)
            XCTAssertNil(result.change, "rose at \(t) s, within the hold after pressure")
            state = result.state
        }
        // After the hold the room must still stay high for riseDelay.
        result = policy.decide(reading(available: 4096 * mib), servedWeightBytes: 100 * mib, state: state, now: 401)
        XCTAssertNil(result.change)
        state = result.state
        result = policy.decide(reading(available: 4096 * mib), servedWeightBytes: 100 * mib, state: state, now: 461)
        XCTAssertEqual(result.change?.reason, .grew)
        XCTAssertEqual(result.change?.budget, (4096 + 100 - 256) * mib)
    }

    func testRisesOnlyAfterTheRoomStaysLargeForTheDelay() {
        var state = AutoBudgetPolicy.State(budget: 100 * mib)
        let large = reading(available: 400 * mib)   // room 400 + 24 - 256 = 168 MiB >= 1.25 * 100
        let small = reading(available: 350 * mib)   // room 118 MiB < 125: not enough to rise
        var result = policy.decide(large, servedWeightBytes: 24 * mib, state: state, now: 0)
        XCTAssertNil(result.change)
        state = result.state
        result = policy.decide(large, servedWeightBytes: 24 * mib, state: state, now: 30)
        XCTAssertNil(result.change)
        state = result.state
        // A dip resets the wait.
        result = policy.decide(small, servedWeightBytes: 24 * mib, state: state, now: 40)
        XCTAssertNil(result.change)
        state = result.state
        result = policy.decide(large, servedWeightBytes: 24 * mib, state: state, now: 70)
        XCTAssertNil(result.change, "rose 30 s after a dip")
        state = result.state
        result = policy.decide(large, servedWeightBytes: 24 * mib, state: state, now: 130)
        XCTAssertEqual(result.change?.budget, 168 * mib)
        XCTAssertEqual(result.change?.reason, .grew)
    }

    func testNoReadingKeepsTheBudgetInForce() {
        let state = AutoBudgetPolicy.State(budget: 100 * mib)
        XCTAssertNil(policy.decide(reading(available: nil), servedWeightBytes: 24 * mib, state: state, now: 0).change)
    }
}

/// `memory_budget = "auto"` wired: the configuration keys, and `BudgetFollower` moving the model service's budget
/// from made-up memory files (each reading is one `step`, so nothing here waits on a timer).
final class BudgetFollowerTests: XCTestCase {
    private let mib = 1 << 20

    func testConfigurationAcceptsAutoWithAReserveAndPollInterval() throws {
        let c = try DaemonConfiguration.parse("""
            [model]
            memory_budget = "auto"
            memory_reserve = "128MiB"
            memory_poll_interval = 0.5
            """, source: "test")
        XCTAssertTrue(c.memoryBudgetAuto)
        XCTAssertNil(c.memoryBudget)
        XCTAssertEqual(c.memoryReserve, 128 * mib)
        XCTAssertEqual(c.memoryPollInterval, 0.5)
        XCTAssertNoThrow(try c.validate(source: "test"))
        XCTAssertFalse(try DaemonConfiguration.parse("[model]\nmemory_budget = \"24MiB\"", source: "t").memoryBudgetAuto)
        XCTAssertThrowsError(try DaemonConfiguration.parse("[model]\nmemory_budget = \"automatic\"", source: "t"))
        XCTAssertThrowsError(try DaemonConfiguration.parse("[model]\nmemory_poll_interval = 0", source: "t"))

        var overridden = DaemonConfiguration()
        try ConfigurationOverrides(memoryBudget: "auto").apply(to: &overridden)
        XCTAssertTrue(overridden.memoryBudgetAuto)
        try ConfigurationOverrides(memoryBudget: "24M").apply(to: &overridden)
        XCTAssertFalse(overridden.memoryBudgetAuto)
        XCTAssertEqual(overridden.memoryBudget, 24 * mib)
    }

    /// A folder standing for the daemon's cgroup and /proc/meminfo.
    private struct FakeMemory {
        let dir: String
        var files: MemoryFiles { MemoryFiles(cgroupDirectory: dir, meminfo: dir + "/meminfo", systemPressure: dir + "/psi") }

        init() throws {
            dir = NSTemporaryDirectory() + "follower-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }

        func set(limit: Int, available: Int, pressure: Double = 0) throws {
            try "\(limit)\n".write(toFile: dir + "/memory.max", atomically: true, encoding: .utf8)
            try "MemAvailable: \(available / 1024) kB\n".write(toFile: dir + "/meminfo", atomically: true, encoding: .utf8)
            try "some avg10=\(pressure) avg60=0.00 avg300=0.00 total=0\n"
                .write(toFile: dir + "/memory.pressure", atomically: true, encoding: .utf8)
        }
    }

    private func start(_ memory: FakeMemory, _ scripted: ScriptedPipeline, reserve: Int)
        async throws -> (ModelService, BudgetFollower, Task<Void, Never>)
    {
        let follower = BudgetFollower(policy: AutoBudgetPolicy(reserve: reserve), interval: 3600, files: memory.files,
                                      logger: Logger(label: "test"))
        // Models whose weights take their whole budget, as the real provider's do (float: 100 MiB).
        let inner = scripted.pipeline
        let pipeline = ModelPipeline(
            build: { target, serving, lowestBits in
                var candidate = try inner.build(target, serving, lowestBits)
                candidate.provided.weightBytes = target.budget.bytes ?? scripted.floatBytes
                return candidate
            },
            check: inner.check)
        let service = ModelService(source: "m", budget: Budget(bytes: follower.initialBudget(), origin: .auto),
                                   requantizeAfter: 0, pipeline: pipeline, logger: Logger(label: "test"))
        try await service.start()
        return (service, follower, Task { await service.run() })
    }

    func testTheBudgetFollowsTheCgroupLimitDownAtOnceAndIsShownAsAuto() async throws {
        let memory = try FakeMemory()
        defer { try? FileManager.default.removeItem(atPath: memory.dir) }
        let scripted = ScriptedPipeline()
        try memory.set(limit: 90 * mib, available: 8 << 30)
        let (service, follower, task) = try await start(memory, scripted, reserve: 40 * mib)
        defer { task.cancel() }
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 50 * mib, origin: .auto))

        // The limit drops (a smaller MemoryMax= after a reload of the unit): the next reading steps down.
        try memory.set(limit: 70 * mib, available: 8 << 30)
        await follower.step(service: service)
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 30 * mib, origin: .auto))

        // Free memory runs low outside the cgroup: MemAvailable + the served weights - reserve.
        let served = service.store.current!.provided.weightBytes
        try memory.set(limit: 70 * mib, available: 60 * mib - served)
        await follower.step(service: service)
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 20 * mib, origin: .auto))
        await service.shutdown()
    }

    func testPressureStepsDownEvenWhenTheRoomLooksLarge() async throws {
        let memory = try FakeMemory()
        defer { try? FileManager.default.removeItem(atPath: memory.dir) }
        let scripted = ScriptedPipeline()
        try memory.set(limit: 90 * mib, available: 8 << 30)
        let (service, follower, task) = try await start(memory, scripted, reserve: 40 * mib)
        defer { task.cancel() }
        let served = service.store.current!.provided.weightBytes
        try memory.set(limit: 90 * mib, available: 8 << 30, pressure: 35)
        await follower.step(service: service)
        let budget = try XCTUnwrap(service.store.current?.target.budget.bytes)
        XCTAssertLessThanOrEqual(budget, Int(Double(served) * 0.75))
        XCTAssertEqual(service.store.current?.target.budget.origin, .auto)
        await service.shutdown()
    }

    func testABudgetCommandWinsOverFreeMemoryUntilAReload() async throws {
        let memory = try FakeMemory()
        defer { try? FileManager.default.removeItem(atPath: memory.dir) }
        let scripted = ScriptedPipeline()
        try memory.set(limit: 90 * mib, available: 8 << 30)
        let (service, follower, task) = try await start(memory, scripted, reserve: 40 * mib)
        defer { task.cancel() }
        try await service.setBudget(Budget(bytes: 45 * mib, origin: .command))
        try memory.set(limit: 60 * mib, available: 8 << 30)
        await follower.step(service: service)
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 45 * mib, origin: .command))

        // A reload with "auto" hands the budget back to free memory.
        try await service.reload(source: "m", budget: Budget(bytes: follower.initialBudget(), origin: .auto))
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 20 * mib, origin: .auto))
        await service.shutdown()
    }

    func testARefusedBudgetIsNotAskedForAgain() async throws {
        let memory = try FakeMemory()
        defer { try? FileManager.default.removeItem(atPath: memory.dir) }
        let scripted = ScriptedPipeline()
        scripted.locked { scripted.refused = [30 * mib] }
        try memory.set(limit: 90 * mib, available: 8 << 30)
        let (service, follower, task) = try await start(memory, scripted, reserve: 40 * mib)
        defer { task.cancel() }
        try memory.set(limit: 70 * mib, available: 8 << 30)
        await follower.step(service: service)
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 50 * mib, origin: .auto))
        let builds = scripted.locked { scripted.builds.count }
        await follower.step(service: service)
        await follower.step(service: service)
        XCTAssertEqual(scripted.locked { scripted.builds.count }, builds, "a refused budget is built again")
        // More room later: a larger budget than the refused one is followed again.
        try memory.set(limit: 80 * mib, available: 8 << 30)
        await follower.step(service: service)
        XCTAssertEqual(service.store.current?.target.budget, Budget(bytes: 40 * mib, origin: .auto))
        await service.shutdown()
    }
}
