@testable import DaemonCore
import Foundation
import Logging
import Serving
import WhisperEngine
import XCTest

/// Budget changes, statistics arrivals, forgets, reloads and transcriptions from several clients, interleaved for
/// a bounded time; then the invariants. In process with small random-weight models (a few seconds of building in
/// all), so the interleavings are many; `DaemonStressTests` runs the real daemon and model.
final class StressTests: XCTestCase {
    private final class Record: @unchecked Sendable {  // @unchecked: guarded by `lock`
        let lock = NSLock()
        var sent = 0
        var answered = 0
        var failures: [String] = []
        var commands = 0
        /// The budget command or reload whose model went into service last (highest generation).
        var lastApplied: (generation: Int, budget: Int?)?
        var models: [WeakModel] = []
        var replies: [String] = []

        func locked<T>(_ body: () -> T) -> T {
            lock.lock()
            defer { lock.unlock() }
            return body()
        }

        func applied(_ entry: ModelStore.Entry) {
            locked {
                if lastApplied.map({ entry.generation > $0.generation }) ?? true {
                    lastApplied = (entry.generation, entry.target.budget.bytes)
                }
            }
        }
    }

    private struct WeakModel { weak var model: WhisperModel? }

    func testInterleavedCommandsKeepTheInvariants() async throws {
        let mib = 1 << 20
        let seconds = Double(ProcessInfo.processInfo.environment["MYQASR_STRESS_SECONDS"] ?? "") ?? 15
        let scripted = ScriptedPipeline()
        scripted.locked { _ = scripted.refused.insert(15 * mib) }
        let service = ModelService(
            source: "m", budget: Budget(bytes: 30 * mib, origin: .configuration), requantizeAfter: 2,
            pipeline: scripted.pipeline, logger: Logger(label: "stress"),
            forgetStatistics: { scripted.locked { scripted.statistics = 0 } })
        let record = Record()
        service.store.onSwap { entry in record.locked { record.models.append(WeakModel(model: entry.provided.model)) } }
        try await service.start()
        let run = Task { await service.run() }
        let workers = TranscriptionWorkers(store: service.store, count: 2, threads: 1, queueDepth: 6,
                                           logger: Logger(label: "stress"), onLiveResult: { _ in })
        let deadline = Date().addingTimeInterval(seconds)
        // The bounded time, but at least 12 model commands: a busy machine (or TSan) must not shrink the run to
        // a few interleavings.
        let minimumCommands = 12
        let going = { @Sendable in Date() < deadline || record.locked { record.commands < minimumCommands } }
        let budgets: [Int?] = [nil, 15 * mib, 20 * mib, 24 * mib, 30 * mib, 50 * mib, 200 * mib]

        try await withThrowingTaskGroup(of: Void.self) { group in
            // Four clients; the fourth gives up on some of its requests (its task is cancelled).
            for client in 0..<4 {
                group.addTask {
                    var generator = SeededGenerator(seed: UInt64(100 + client))
                    while going() {
                        record.locked { record.sent += 1 }
                        let samples = [Float](repeating: 0, count: 4000 + Int.random(in: 0..<8000, using: &generator))
                        let request = Task {
                            try await workers.transcribe(samples: samples, language: nil, client: "client \(client)")
                        }
                        if client == 3 && Bool.random(using: &generator) { request.cancel() }
                        do {
                            _ = try await request.value
                        } catch is CancellationError {
                        } catch TranscriptionQueueError.busy {
                        } catch {
                            record.locked { record.failures.append("client \(client): \(error)") }
                        }
                        record.locked { record.answered += 1 }
                    }
                }
            }
            // Statistics arriving.
            group.addTask {
                while going() {
                    let count = scripted.locked { () -> Int in
                        scripted.statistics += 1
                        return scripted.statistics
                    }
                    await service.statisticsGrew(to: count)
                    try await Task.sleep(nanoseconds: 20_000_000)
                }
            }
            // Two controllers: budgets (some refused by the check), forgets, reloads.
            for controller in 0..<2 {
                group.addTask {
                    var generator = SeededGenerator(seed: UInt64(7 + controller))
                    while going() {
                        let roll = Int.random(in: 0..<10, using: &generator)
                        let budget = budgets.randomElement(using: &generator)!
                        do {
                            let entry: ModelStore.Entry
                            switch roll {
                            case 0: entry = try await service.forget()
                            case 1: entry = try await service.reload(source: "m", budget: Budget(bytes: budget, origin: .configuration))
                            default: entry = try await service.setBudget(Budget(bytes: budget, origin: .command))
                            }
                            if roll != 0 { record.applied(entry) }
                            record.locked { record.replies.append("controller \(controller): \(roll) \(budget.map(String.init) ?? "none") -> served generation \(entry.generation) at \(entry.target.budget)") }
                        } catch let error as ModelServiceError
                                    where roll != 0 && (error.code == "superseded" || error.code == "check_failed") {
                            record.locked { record.replies.append("controller \(controller): \(roll) \(budget.map(String.init) ?? "none") -> \(error.code)") }
                        } catch {
                            record.locked { record.failures.append("controller \(controller): \(error)") }
                        }
                        record.locked { record.commands += 1 }
                    }
                }
            }
            try await group.waitForAll()
        }

        // Quiet: one last forget, then the invariants.
        let final = try await service.forget()
        let served = try XCTUnwrap(service.store.current)
        XCTAssertEqual(served.generation, final.generation)
        XCTAssertEqual(record.failures, [], "no request or command failed other than busy, cancelled, superseded or refused")
        XCTAssertEqual(record.sent, record.answered, "every request answered")
        // The start's 30 MiB when no command applied; an applied `none` (nil) must stay nil, not become 30 MiB.
        let expected: Int? = record.lastApplied.map { $0.budget } ?? 30 * mib
        XCTAssertEqual(served.target.budget.bytes, expected,
                       "the served model is the one the last budget command (or reload) asked for; the last replies:\n"
                       + record.replies.suffix(30).joined(separator: "\n"))
        let desired = await service.desiredTarget
        XCTAssertEqual(desired, served.target, "nothing left to build")
        XCTAssertEqual(served.provided.statisticsSamples, 0, "no personal model after forget")
        if case .personalised = served.provided.plan { XCTFail("no personal model after forget") }
        // Memory, by the code's own accounting: the served weights are what the model holds, within the budget.
        XCTAssertEqual(served.provided.weightBytes, served.provided.model.weights.byteSize)
        XCTAssertTrue(served.provided.budgetMet)
        if let budget = served.target.budget.bytes { XCTAssertLessThanOrEqual(served.provided.weightBytes, budget) }
        // Once idle, no model but the served one is held (workers, service and provider let go of the rest).
        _ = try Waiter<Int>.poll(timeout: 30, what: "every model but the served one released") {
            record.locked { Set(record.models.compactMap { $0.model.map(ObjectIdentifier.init) }).count } == 1 ? 1 : nil
        }
        let queue = try Waiter<QueueStatistics>.poll(timeout: 30, what: "the queue to be empty and the workers idle") {
            let queue = workers.statistics
            return queue.waiting == 0 && queue.running == 0 ? queue : nil
        }
        print("stress: \(seconds) s, \(record.sent) requests (\(queue.refusedRequests) busy, \(queue.cancelledRequests) cancelled), "
              + "\(record.commands) commands, \(scripted.locked { scripted.builds.count }) builds, generation \(served.generation)")
        workers.shutdown()
        await service.shutdown()
        await run.value
    }
}
