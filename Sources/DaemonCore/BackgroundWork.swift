import Foundation

/// The daemon's two kinds of background work take turns: a model build with its self-check (`ModelService`) and a
/// statistics pass with its drift measurement (`PersonalStatistics`). Each holds tens of MB while it runs (a
/// build: the candidate beside the model in service, the check's windows; a pass: its block sums, the statistics
/// read from their file, the drift measurement's windows), and together with a live transcription beside them they
/// made the live loop's peak (docs/daemon.md, "Memory"). Taking turns, the peak is the larger of the two rather
/// than their sum; on a 2-core machine they also stop competing with the transcriptions for the second core. A
/// pass waits at most one build (about 10 s of one core for tiny.en), and the utterance it waits with is kept as
/// `PersonalStatistics` keeps any (the newest one). Neither kind waits for anything else while it holds its turn.
enum BackgroundWork {
    private static let turn = DispatchSemaphore(value: 1)

    /// Runs `body` once no other background work runs.
    static func inTurn<T>(_ body: () throws -> T) rethrows -> T {
        turn.wait()
        defer { turn.signal() }
        return try body()
    }
}
