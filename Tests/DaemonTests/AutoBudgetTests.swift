@testable import DaemonCore
import Foundation
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
