import Audio
import Capture
@testable import DaemonCore
import Foundation
import Logging
import WhisperEngine
import XCTest

/// Background work beside the transcriptions: a statistics pass gives way to them.
final class BackgroundWorkTests: XCTestCase {
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
    /// stopped once runs again after the transcriptions, to its end, and a transcription that starts meanwhile goes on
    /// beside it.
    func testATranscriptionStartsOnceThePieceItStopsHasStopped() throws {
        let events = Waiter<String>()
        let inside = DispatchSemaphore(value: 0), sawFlag = DispatchSemaphore(value: 0)
        let finishStopping = DispatchSemaphore(value: 0)
        let secondRun = DispatchSemaphore(value: 0), endSecondRun = DispatchSemaphore(value: 0)
        let runs = Waiter<Bool>()
        DispatchQueue.global().async {
            BackgroundWork.inTurn {
                _ = try? BackgroundWork.givingWayOnce { cancellation in
                    runs.append(cancellation.isCancelled)
                    if runs.all.count == 1 {
                        inside.signal()
                        // Stopping takes a while: the transcription must wait for it.
                        while !cancellation.isCancelled { usleep(1000) }
                        sawFlag.signal()
                        finishStopping.wait()
                        events.append("piece stopped")
                        throw DecodingError.cancelled
                    }
                    secondRun.signal()
                    endSecondRun.wait()
                    events.append("second run ended")
                }
            }
        }
        XCTAssertEqual(inside.wait(timeout: .now() + patient(60)), .success)
        DispatchQueue.global().async { BackgroundWork.transcription { events.append("transcription") } }
        XCTAssertEqual(sawFlag.wait(timeout: .now() + patient(60)), .success, "the transcription set the flag")
        XCTAssertEqual(events.all, [], "the transcription waits for the piece to stop")
        finishStopping.signal()
        XCTAssertEqual(try events.wait(timeout: 60, what: "the transcription") { $0.count == 2 ? $0 : nil },
                       ["piece stopped", "transcription"])
        XCTAssertEqual(secondRun.wait(timeout: .now() + patient(60)), .success)
        XCTAssertEqual(runs.all, [false, false], "the second run has a flag nobody sets")
        XCTAssertFalse(BackgroundWork.stoppableRuns, "the second run is not stoppable")
        BackgroundWork.transcription { events.append("beside the second run") }
        endSecondRun.signal()
        XCTAssertEqual(try events.wait(timeout: 60, what: "the second run") { $0.count == 4 ? $0 : nil },
                       ["piece stopped", "transcription", "beside the second run", "second run ended"])
    }

    /// A statistics pass that a transcription interrupts stops, waits for the transcription, and runs again, giving
    /// way again to the next: the utterance is gathered once, after the transcriptions.
    func testAPassGivesWayToATranscriptionAndIsGatheredAfterIt() throws {
        let model = try Fixtures.model("tiny.en")
        let personal = PersonalStatistics(directory: nil, logger: Logger(label: "test"))
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        personal.observe(utterance: Utterance(samples: samples), transcript: Transcript(segments: [], language: "en", text: ""),
                         model: model)
        // The pass gathers over a whole 30 s window (about a second on one core here); a transcription starts in it,
        // and another in the pass's second try.
        for attempt in 1...2 {
            _ = try Waiter<Int>.poll(timeout: 60, what: "the pass running") {
                BackgroundWork.stoppableRuns ? true : nil
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
