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
/// decoded token or block of rows) and handed its free heap and code pages back: the transcription then has the
/// memory and the cores to itself, instead of its own beside the piece's. A stopped gathering is tried again after
/// the transcriptions, as a stoppable piece again, out of turn in between: under a steady stream of transcriptions the
/// passes wait (holding only the newest utterance) and a build still gets its turn. The other pieces are tried
/// again up to `stopsBeforeAlone` times (`givingWay`), then run `alone`: to their end, with the transcriptions that
/// start meanwhile waiting for them, so that a build (a budget command) still finishes under a steady stream of
/// transcriptions, at the cost of one piece's time to a transcription now and then (a personal build of tiny.en
/// spends 6-9 s of one core on about 70 chunks of rows). A pass's merge, which cannot stop part-way, runs alone too
/// (0.10-0.19 s here, its file written and synced). A transcription waits at most `longestWait` for a piece,
/// then starts beside it: pieces run on the idle-priority build thread get no core while other processes keep
/// them busy (`SCHED_IDLE`), and an unprivileged daemon cannot lift that thread's priority while it waits for it
/// (leaving `SCHED_IDLE` takes `CAP_SYS_NICE` or an `RLIMIT_NICE` above the default), so without a limit a voice
/// command could wait as long as someone else's load lasts. Pieces do not nest: one inside another would wait for
/// a transcription that waits for the outer one.
enum BackgroundWork {
    private static let turn = DispatchSemaphore(value: 1)
    private static let state = NSCondition()
    // Guarded by `state`.
    private static var transcriptions = 0
    /// The flag of the piece running (stoppable, or alone), if any.
    private static var runningPiece: Cancellation?
    private static var waiting = 0
    private static var waitingForAPiece = 0
    /// The longest a transcription waits for a piece to stop or end, in seconds (tests that hold a piece lengthen
    /// it): a quarter of a second, longer than a piece that runs alone takes here with a core of its own, short
    /// beside the transcription of a command.
    private static var longestWaitSeconds = 0.25

    /// Runs `body` once no other background work runs.
    static func inTurn<T>(_ body: () throws -> T) rethrows -> T {
        turn.wait()
        defer { turn.signal() }
        return try body()
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
        runningPiece = flag
        state.unlock()
        defer {
            // The flag is set only by a transcription, which waits for this: the piece's free heap and the pages of
            // the code it ran go back first (the transcription maps its own code again, from the page cache).
            if flag.isCancelled { WhisperModel.releaseFreedMemory() }
            state.lock()
            runningPiece = nil
            state.broadcast()
            state.unlock()
        }
        return try piece(flag)
    }

    /// Times a piece run with `givingWay` stops for transcriptions before it runs `alone`.
    static let stopsBeforeAlone = 3

    /// `piece` as a `stoppable` piece, tried again from its start each time a transcription stops it (it throws
    /// `DecodingError.cancelled`), up to `stopsBeforeAlone` times; then `alone`, with a flag nobody sets.
    @Sendable static func givingWay<T>(_ piece: (Cancellation) throws -> T) throws -> T {
        for _ in 0..<stopsBeforeAlone {
            do {
                return try stoppable(piece)
            } catch DecodingError.cancelled {
                continue
            }
        }
        return try alone { try piece(Cancellation()) }
    }

    /// Runs `body` once no transcription runs; transcriptions that start meanwhile wait until it has returned.
    static func alone<T>(_ body: () throws -> T) rethrows -> T {
        try stoppable { _ in try body() }
    }

    /// Runs a transcription: a piece of background work running stops first (or ends, when it runs alone; at most
    /// `longestWait`), and none starts until no transcription runs.
    static func transcription<T>(_ body: () throws -> T) rethrows -> T {
        state.lock()
        transcriptions += 1
        if let piece = runningPiece {
            piece.cancel()
            waitingForAPiece += 1
            let deadline = Date(timeIntervalSinceNow: longestWaitSeconds)
            while runningPiece === piece, state.wait(until: deadline) {}
            waitingForAPiece -= 1
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
    static var waitingForTranscriptions: Int { locked { waiting } }

    /// The longest a transcription waits for a piece (`longestWaitSeconds`; tests set it).
    static var longestWait: Double {
        get { locked { longestWaitSeconds } }
        set { locked { longestWaitSeconds = newValue } }
    }

    /// Transcriptions waiting for a piece to stop or end (for tests).
    static var transcriptionsWaitingForAPiece: Int { locked { waitingForAPiece } }

    /// Whether a piece runs, stoppable or alone (for tests).
    static var pieceRuns: Bool { locked { runningPiece != nil } }

    private static func locked<T>(_ body: () -> T) -> T {
        state.lock()
        defer { state.unlock() }
        return body()
    }
}
