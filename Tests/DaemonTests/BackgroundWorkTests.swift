import Audio
import Capture
@testable import DaemonCore
import Foundation
import Logging
import WhisperEngine
import XCTest

/// Background work beside the transcriptions: a statistics pass gives way to them.
final class BackgroundWorkTests: XCTestCase {
    private var longestWait = 0.0

    // The pieces these tests hold are waited for as long as they are held (the daemon's limit is for pieces a busy
    // machine starves); `testATranscriptionWaitsForAPieceAtMostItsLongestWait` sets its own.
    override func setUp() {
        longestWait = BackgroundWork.longestWait
        BackgroundWork.longestWait = 3600
    }

    override func tearDown() {
        BackgroundWork.longestWait = longestWait
    }

    /// A piece that does not stop (its thread gets no core) holds a transcription up no longer than the limit.
    func testATranscriptionWaitsForAPieceAtMostItsLongestWait() throws {
        BackgroundWork.longestWait = 0.05
        let inside = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let events = Waiter<String>()
        DispatchQueue.global().async {
            BackgroundWork.inTurn {
                BackgroundWork.stoppable { _ in
                    inside.signal()
                    release.wait()
                    events.append("piece ended")
                }
            }
        }
        XCTAssertEqual(inside.wait(timeout: .now() + patient(60)), .success)
        BackgroundWork.transcription { events.append("transcription") }
        release.signal()
        XCTAssertEqual(try events.wait(timeout: 60, what: "the piece") { $0.count == 2 ? $0 : nil },
                       ["transcription", "piece ended"])
    }
    /// A stoppable piece does not start while a transcription runs, and its flag is set as soon as one starts while
    /// it runs.
    func testWorkThatGivesWayWaitsForTranscriptionsAndIsStoppedByOne() throws {
        let started = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            BackgroundWork.transcription {
                started.signal()
                release.wait()
            }
        }
        XCTAssertEqual(started.wait(timeout: .now() + patient(60)), .success)
        let ran = Waiter<Bool>()
        DispatchQueue.global().async { BackgroundWork.inTurn { BackgroundWork.stoppable { ran.append($0.isCancelled) } } }
        _ = try Waiter<Int>.poll(timeout: 60, what: "the work waiting") {
            BackgroundWork.waitingForTranscriptions == 1 ? true : nil
        }
        XCTAssertEqual(ran.all, [], "it waits while the transcription runs")
        release.signal()
        XCTAssertEqual(try ran.wait(timeout: 60, what: "the work") { $0.first }, false, "then runs, not cancelled")

        let inside = DispatchSemaphore(value: 0)
        let stopped = Waiter<Bool>()
        DispatchQueue.global().async {
            BackgroundWork.inTurn {
                BackgroundWork.stoppable { cancellation in
                    inside.signal()
                    stopped.append((try? Waiter<Int>.poll(timeout: 60, what: "the cancellation") {
                        cancellation.isCancelled ? true : nil
                    }) ?? false)
                }
            }
        }
        XCTAssertEqual(inside.wait(timeout: .now() + patient(60)), .success)
        BackgroundWork.transcription {}
        XCTAssertEqual(try stopped.wait(timeout: 60, what: "the work to see it") { $0.first }, true)
    }

    /// A transcription that stops a piece starts only once the piece has stopped (its memory is then free); a piece
    /// runs again after each stop, and after `stopsBeforeAlone` stops it runs alone: to its end, with a flag nobody
    /// sets, and a transcription that starts meanwhile waits for it.
    func testATranscriptionStartsOnceThePieceItStopsHasStopped() throws {
        let events = Waiter<String>()
        let runs = Waiter<Bool>()   // each run's flag as it starts
        let inside = DispatchSemaphore(value: 0), sawFlag = DispatchSemaphore(value: 0)
        let finishStopping = DispatchSemaphore(value: 0), endAlone = DispatchSemaphore(value: 0)
        let stops = BackgroundWork.stopsBeforeAlone
        DispatchQueue.global().async {
            BackgroundWork.inTurn {
                _ = try? BackgroundWork.givingWay { cancellation in
                    runs.append(cancellation.isCancelled)
                    inside.signal()
                    if runs.all.count <= stops {
                        while !cancellation.isCancelled { usleep(1000) }
                        if runs.all.count == 1 {
                            // Stopping takes a while: the transcription must wait for it.
                            sawFlag.signal()
                            finishStopping.wait()
                        }
                        events.append("stopped")
                        throw DecodingError.cancelled
                    }
                    endAlone.wait()
                    events.append("alone ended")
                }
            }
        }
        XCTAssertEqual(inside.wait(timeout: .now() + patient(60)), .success)
        DispatchQueue.global().async { BackgroundWork.transcription { events.append("transcription") } }
        XCTAssertEqual(sawFlag.wait(timeout: .now() + patient(60)), .success, "the transcription set the flag")
        XCTAssertEqual(events.all, [], "the transcription waits for the piece to stop")
        finishStopping.signal()
        XCTAssertEqual(try events.wait(timeout: 60, what: "the transcription") { $0.count == 2 ? $0 : nil },
                       ["stopped", "transcription"])
        for _ in 1..<stops {
            XCTAssertEqual(inside.wait(timeout: .now() + patient(60)), .success, "tried again")
            BackgroundWork.transcription { events.append("transcription") }
        }
        XCTAssertEqual(inside.wait(timeout: .now() + patient(60)), .success, "then alone")
        XCTAssertEqual(runs.all, [Bool](repeating: false, count: stops + 1), "each run with a flag not set yet")
        XCTAssertTrue(BackgroundWork.pieceRuns)
        DispatchQueue.global().async { BackgroundWork.transcription { events.append("after it") } }
        _ = try Waiter<Int>.poll(timeout: 60, what: "the transcription waiting") {
            BackgroundWork.transcriptionsWaitingForAPiece == 1 ? true : nil
        }
        endAlone.signal()
        XCTAssertEqual(try events.wait(timeout: 60, what: "the last transcription") { $0.count == 2 * stops + 2 ? $0 : nil },
                       Array(repeating: ["stopped", "transcription"], count: stops).flatMap { $0 } + ["alone ended", "after it"])
    }

    /// A statistics pass that a transcription interrupts stops, waits for the transcription, and runs again, giving
    /// way again to the next: the utterance is gathered once, after the transcriptions.
    func testAPassGivesWayToATranscriptionAndIsGatheredAfterIt() throws {
        let model = try Fixtures.model("tiny.en")
        let personal = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        let jfk = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        personal.observe(utterance: Utterance(samples: jfk + jfk), transcript: Transcript(segments: [], language: "en", text: ""),
                         model: model)
        // The pass makes a silent window (an encoder pass over 30 s) and gathers over the utterance's 22 s window (about
        // a second on one core here); a transcription starts in it, and another in the pass's second try.
        for attempt in 1...2 {
            _ = try Waiter<Int>.poll(timeout: 60, what: "the pass running") {
                BackgroundWork.pieceRuns ? true : nil
            }
            try BackgroundWork.transcription {
                let waiting = try Waiter<Int>.poll(timeout: 60, what: "the pass to give way or end") {
                    BackgroundWork.waitingForTranscriptions == 1 ? true : personal.statisticsSamples == 1 ? false : nil
                }
                XCTAssertTrue(waiting, "the pass stopped and waits for the transcription (try \(attempt))")
                XCTAssertEqual(personal.statisticsSamples, 0)
            }
        }
        personal.waitForPass()
        XCTAssertEqual(personal.statisticsSamples, 1, "gathered after the transcriptions")
    }
}
