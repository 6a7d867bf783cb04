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
/// **Giving way.** Background work also gives way to transcriptions (`transcription(_:)`, which the workers run
/// each job in), piece by piece: a statistics pass's gathering, its drift measurement, a build's self-check and
/// each chunk of a build's rows run as `stoppable` pieces. A piece starts only while no transcription runs, and one
/// that starts meanwhile sets the piece's flag and waits until the piece has stopped (at its next encoder step,
/// decoded token or block of rows) and handed its free heap back: the transcription then has the memory and the
/// cores to itself, instead of its own beside the piece's. A stopped gathering is tried again after the
/// transcriptions, as a stoppable piece again, out of turn in between: under a steady stream of transcriptions the
/// passes wait (holding only the newest utterance) and a build still gets its turn. The other pieces run again
/// after the transcriptions to their end (`givingWayOnce`): each gives way once, so that a build (a budget command)
/// still advances under a steady stream of transcriptions, and a transcription that starts during such a second
/// run goes on beside it. What cannot stop part-way (a pass's merge) starts only while no transcription runs
/// (`waitForTranscriptions`). Pieces do not nest: one that waited for transcriptions inside another would wait for
/// one that waits for it.
enum BackgroundWork {
    private static let turn = DispatchSemaphore(value: 1)
    private static let state = NSCondition()
    // Guarded by `state`.
    private static var transcriptions = 0
    /// The flag of the stoppable piece running, if any.
    private static var stoppablePiece: Cancellation?
    private static var waiting = 0

    /// Runs `body` once no other background work runs.
    static func inTurn<T>(_ body: () throws -> T) rethrows -> T {
        turn.wait()
        defer { turn.signal() }
        return try body()
    }

    /// Returns once no transcription runs: for work that cannot stop part-way (a transcription that starts after
    /// runs beside it).
    @Sendable static func waitForTranscriptions() {
        state.lock()
        waitForTranscriptionsLocked()
        state.unlock()
    }

    private static func waitForTranscriptionsLocked() {
        waiting += 1
        while transcriptions > 0 { state.wait() }
        waiting -= 1
    }

    /// Runs `piece` once no transcription runs, with the flag the next transcription to start sets; that
    /// transcription waits until `piece` has returned or thrown (it should stop at its next step, throwing
    /// `DecodingError.cancelled`), and the free heap it left is handed back first.
    static func stoppable<T>(_ piece: (Cancellation) throws -> T) rethrows -> T {
        let flag = Cancellation()
        state.lock()
        waitForTranscriptionsLocked()
        stoppablePiece = flag
        state.unlock()
        defer {
            // The flag is set only by a transcription, which waits for this.
            if flag.isCancelled { WhisperModel.releaseFreedMemory(codePages: false) }
            state.lock()
            stoppablePiece = nil
            state.broadcast()
            state.unlock()
        }
        return try piece(flag)
    }

    /// `piece` as a `stoppable` piece, and when a transcription stopped it (it threw `DecodingError.cancelled`),
    /// once more after the transcriptions, from its start, with a flag nobody sets: it gives way once.
    @Sendable static func givingWayOnce<T>(_ piece: (Cancellation) throws -> T) throws -> T {
        do {
            return try stoppable(piece)
        } catch DecodingError.cancelled {
            waitForTranscriptions()
            return try piece(Cancellation())
        }
    }

    /// Runs a transcription: a stoppable piece of background work running stops first, and none starts until no
    /// transcription runs.
    static func transcription<T>(_ body: () throws -> T) rethrows -> T {
        state.lock()
        transcriptions += 1
        if let piece = stoppablePiece {
            piece.cancel()
            while stoppablePiece === piece { state.wait() }
        }
        state.unlock()
        defer {
            state.lock()
            transcriptions -= 1
            if transcriptions == 0 { state.broadcast() }
            state.unlock()
        }
        return try body()
    }

    /// Work that waits for transcriptions to end (for tests).
    static var waitingForTranscriptions: Int {
        state.lock()
        defer { state.unlock() }
        return waiting
    }

    /// Whether a stoppable piece runs (for tests).
    static var stoppableRuns: Bool {
        state.lock()
        defer { state.unlock() }
        return stoppablePiece != nil
    }
}
