import Foundation
import WhisperEngine

/// The daemon's background work beside its transcriptions.
///
/// **Turns.** Its two kinds take turns: a model build with its self-check (`ModelService`) and a statistics pass
/// with its drift measurement (`PersonalStatistics`). Each holds tens of MB while it runs (a build: the candidate
/// beside the model in service, the check's windows; a pass: its 30 s window and sums, the statistics read from
/// their file, the drift measurement's windows), and together with a live transcription beside them they made the
/// live loop's peak (docs/daemon.md, "Memory"). Taking turns, the peak is the larger of the two rather than their
/// sum; on a 2-core machine they also stop competing with the transcriptions for the second core. A pass waits at
/// most one build (about 10 s of one core for tiny.en), and the utterance it waits with is kept as
/// `PersonalStatistics` keeps any (the newest one).
///
/// **Giving way.** A statistics pass's gathering also gives way to transcriptions (`transcription(_:)`, which the
/// workers run each job in): it starts only while none runs, and one that starts meanwhile sets its cancellation,
/// so the pass stops at its next encoder step or decoded token and is run again once the transcriptions are done,
/// to its end: each piece of work gives way once, so that it still advances under a steady stream of
/// transcriptions. Its drift measurement and a build's self-check give way the same way; the pass's merge, which
/// cannot stop part-way, starts only while none runs (`mayGoOn`). A transcription then has the memory and the cores
/// to itself, instead of its own beside a pass's (the pass's 30 s window, its sums and the full-precision model's
/// pages). A build gives way chunk by chunk (`QuantizationOptions.giveWay`): before each chunk of a layer's rows
/// (at most 4 MiB of them) it waits while transcriptions run, and a chunk a transcription interrupts is done again
/// (to its end), so a build loses at most one chunk's work per transcription and still finishes while the user
/// keeps talking; what it has made so far stays in memory meanwhile.
enum BackgroundWork {
    private static let turn = DispatchSemaphore(value: 1)
    private static let state = NSCondition()
    // Guarded by `state`.
    private static var transcriptions = 0
    private static var givingWay: Cancellation?
    private static var waiting = 0

    /// Runs `body` once no other background work runs.
    static func inTurn<T>(_ body: () throws -> T) rethrows -> T {
        turn.wait()
        defer {
            state.lock()
            givingWay = nil
            state.unlock()
            turn.signal()
        }
        return try body()
    }

    /// `inTurn` for work that gives way to transcriptions: `body` starts once none runs (`mayGoOn`), and its
    /// cancellation is set as soon as one starts (the work should then stop at its next step).
    static func inTurnGivingWay<T>(_ body: (Cancellation) throws -> T) rethrows -> T {
        try inTurn { try body(mayGoOn()) }
    }

    /// For the background work in turn (`inTurn`) at a point where it may stop: returns once no transcription runs,
    /// with the flag that the next one to start sets. A build calls it before each chunk of rows
    /// (`QuantizationOptions.giveWay`).
    @Sendable static func mayGoOn() -> Cancellation {
        let cancellation = Cancellation()
        state.lock()
        defer { state.unlock() }
        waiting += 1
        while transcriptions > 0 { state.wait() }
        waiting -= 1
        givingWay = cancellation
        return cancellation
    }

    /// Runs a transcription: background work that gives way stops at its next step, and none starts until no
    /// transcription runs.
    static func transcription<T>(_ body: () throws -> T) rethrows -> T {
        state.lock()
        transcriptions += 1
        givingWay?.cancel()
        state.unlock()
        defer {
            state.lock()
            transcriptions -= 1
            if transcriptions == 0 { state.broadcast() }
            state.unlock()
        }
        return try body()
    }

    /// Work that gives way and waits for transcriptions to end (for tests).
    static var waitingForTranscriptions: Int {
        state.lock()
        defer { state.unlock() }
        return waiting
    }

    /// Whether work that gives way runs (for tests).
    static var givingWayRuns: Bool {
        state.lock()
        defer { state.unlock() }
        return givingWay != nil
    }
}
