import Foundation
import XCTest
@testable import Capture

/// The detector and segmenter on synthesised audio, without ALSA.
final class SegmenterTests: XCTestCase {
    private let rate = Double(CaptureFormat.sampleRate)

    private func signal(seconds: Double, bursts: [(start: Double, length: Double)]) -> [Float] {
        Signal.bursts(seconds: seconds, bursts: bursts)
    }

    /// Feeds `samples` in chunks of `chunk` and returns every utterance, including `finish()`'s.
    private func segment(_ samples: [Float], chunk: Int = 1000,
                         configuration: SegmenterConfiguration = SegmenterConfiguration()) throws -> [Utterance] {
        let segmenter = try UtteranceSegmenter(configuration: configuration)
        var result: [Utterance] = []
        var position = 0
        while position < samples.count {
            let end = min(samples.count, position + chunk)
            result += segmenter.process(Array(samples[position..<end]), at: Int64(position))
            position = end
        }
        if let last = segmenter.finish() { result.append(last) }
        return result
    }

    func testTwoBurstsGiveTwoUtterancesWithPreRollAndHangover() throws {
        let samples = signal(seconds: 6, bursts: [(1.0, 1.0), (3.5, 0.8)])
        let utterances = try segment(samples, chunk: 777)
        XCTAssertEqual(utterances.count, 2, "\(utterances)")
        guard utterances.count == 2 else { return }
        // Start = burst start - 0.3 s pre-roll (frame-aligned to 30 ms);
        // length = pre-roll + burst + 0.6 s hang-over.
        XCTAssertEqual(utterances[0].startTime, 0.7, accuracy: 0.04)
        XCTAssertEqual(utterances[0].duration, 1.9, accuracy: 0.07)
        XCTAssertEqual(utterances[1].startTime, 3.2, accuracy: 0.04)
        XCTAssertEqual(utterances[1].duration, 1.7, accuracy: 0.07)
        XCTAssertEqual(utterances.map(\.endReason), [.silence, .silence])
        // The utterance carries the very samples of the stream.
        let first = utterances[0]
        let start = Int(first.streamPosition)
        assertSameSamples(first.samples, Array(samples[start..<(start + first.sampleCount)]), "utterance audio")
    }

    /// The partial schedule (the capture thread's pace for partial transcripts) with the segmenter: a copy of the
    /// utterance being spoken after each second of its speech, the same samples as the stream, starting where the
    /// final utterance starts; none while idle, none with the interval 0.
    func testPartialCopiesFollowEachSecondOfSpeech() throws {
        let samples = signal(seconds: 8, bursts: [(1.0, 3.5)])
        for interval in [1.0, 0.0] {
            let segmenter = try UtteranceSegmenter()
            var schedule = CapturePipeline.PartialSchedule(interval: interval)
            var copies: [Utterance] = []
            var finals: [Utterance] = []
            var speechAtCopy: [Double] = []
            var position = 0
            while position < samples.count {
                let end = min(samples.count, position + 800)
                finals += segmenter.process(Array(samples[position..<end]), at: Int64(position))
                if schedule.due(utterance: segmenter.confirmedUtteranceStart, speech: segmenter.confirmedSpeechDuration),
                   let copy = segmenter.snapshot() {
                    copies.append(copy)
                    speechAtCopy.append(segmenter.confirmedSpeechDuration)
                }
                if segmenter.confirmedUtteranceStart == nil { XCTAssertNil(segmenter.snapshot()) }
                position = end
            }
            XCTAssertEqual(finals.count, 1)
            guard interval > 0 else {
                XCTAssertEqual(copies.count, 0)
                continue
            }
            // 3.5 s of speech and 0.6 s of hang-over: copies after 1, 2, 3 and 4 s.
            XCTAssertEqual(copies.count, 4, "\(speechAtCopy)")
            for (copy, speech) in zip(copies, speechAtCopy) {
                XCTAssertEqual(copy.endReason, .inProgress)
                XCTAssertEqual(copy.streamPosition, finals[0].streamPosition)
                XCTAssertLessThan(copy.sampleCount, finals[0].sampleCount)
                XCTAssertEqual(speech, Double(copies.firstIndex { $0 === copy }! + 1), accuracy: 0.06)
                let start = Int(copy.streamPosition)
                assertSameSamples(copy.samples, Array(samples[start..<(start + copy.sampleCount)]), "copy audio")
            }
        }
    }

    func testClicksShorterThanMinimumSpeechAreIgnored() throws {
        let samples = signal(seconds: 3, bursts: [(1.0, 0.06), (2.0, 0.05)])
        XCTAssertEqual(try segment(samples).count, 0)
        // With no minimum, the same clicks become utterances.
        var configuration = SegmenterConfiguration()
        configuration.minimumSpeechDuration = 0
        XCTAssertEqual(try segment(samples, configuration: configuration).count, 2)
    }

    func testLongSpeechIsCutAtTheMaximumLength() throws {
        let samples = signal(seconds: 5, bursts: [(0.5, 3.5)])
        var configuration = SegmenterConfiguration()
        configuration.maximumUtteranceDuration = 1.2
        let utterances = try segment(samples, configuration: configuration)
        XCTAssertGreaterThanOrEqual(utterances.count, 3)
        XCTAssertEqual(utterances.first?.endReason, .maximumLength)
        XCTAssertEqual(utterances.last?.endReason, .silence)
        for utterance in utterances {
            XCTAssertLessThanOrEqual(utterance.duration, 1.2 + 1e-9)
        }
        // Consecutive pieces are contiguous: no audio lost at the cuts.
        for (previous, next) in zip(utterances, utterances.dropFirst()) where previous.endReason == .maximumLength {
            XCTAssertEqual(previous.streamPosition + Int64(previous.sampleCount), next.streamPosition)
        }
        // Everything from burst start minus pre-roll to burst end plus hang-over is covered.
        let total = utterances.reduce(0.0) { $0 + $1.duration }
        XCTAssertEqual(total, 0.3 + 3.5 + 0.6, accuracy: 0.07)
    }

    func testSpeechAtEndOfStreamIsReturnedByFinish() throws {
        let samples = signal(seconds: 2, bursts: [(1.0, 1.0)])
        let utterances = try segment(samples)
        XCTAssertEqual(utterances.count, 1)
        XCTAssertEqual(utterances.first?.endReason, .endOfStream)
        XCTAssertEqual(utterances.first?.startTime ?? 0, 0.7, accuracy: 0.04)
    }

    func testGapInStreamPositionsEndsSpeech() throws {
        let samples = signal(seconds: 2, bursts: [(0.5, 1.5)])
        let segmenter = try UtteranceSegmenter()
        XCTAssertTrue(segmenter.process(Array(samples[0..<16_000]), at: 0).isEmpty)
        XCTAssertTrue(segmenter.isInUtterance)
        let afterGap = segmenter.process(Array(samples[16_000...]), at: 40_000)
        XCTAssertEqual(afterGap.count, 1)
        XCTAssertEqual(afterGap.first?.endReason, .gap)
        XCTAssertEqual(afterGap.first.map { $0.streamPosition + Int64($0.sampleCount) }, 16_000)
    }

    func testQuietNoiseAloneNeverTriggers() throws {
        // Noise only, with a slow 20 dB swell: the floor follows, nothing is speech.
        var samples = Signal.noise(amplitude: 0.002, count: Int(8 * rate))
        for index in samples.indices {
            samples[index] *= Float(1 + 9 * Double(index) / Double(samples.count))
        }
        XCTAssertEqual(try segment(samples).count, 0)
    }

    func testUtteranceWipeZeroesSamples() {
        let utterance = Utterance(samples: [0.5, -0.25, 0.125], streamPosition: 16_000)
        XCTAssertEqual(utterance.startTime, 1.0)
        XCTAssertEqual(utterance.sampleCount, 3)
        XCTAssertFalse(utterance.isWiped)
        utterance.wipe()
        XCTAssertTrue(utterance.isWiped)
        XCTAssertEqual(utterance.samples, [0, 0, 0])
        utterance.withUnsafeSamples { XCTAssertTrue($0.allSatisfy { $0 == 0 }) }
        XCTAssertFalse(utterance.description.contains("0.5"))
    }

    func testDetectorLevelAndThresholdValidation() throws {
        let tone = Signal.tone(frequency: 1000, amplitude: 1, seconds: 0.03)
        let level = tone.withUnsafeBufferPointer { VoiceActivityDetector.level(of: $0) }
        XCTAssertEqual(level, -3.01, accuracy: 0.05, "full-scale sine is -3 dBFS")
        let silence = [Float](repeating: 0, count: 480)
        XCTAssertEqual(silence.withUnsafeBufferPointer { VoiceActivityDetector.level(of: $0) }, -120)
        XCTAssertThrowsError(try VoiceActivityDetector(configuration: VoiceActivityConfiguration(startThreshold: 3, stopThreshold: 6)))
        XCTAssertThrowsError(try UtteranceSegmenter(configuration: SegmenterConfiguration(maximumUtteranceDuration: 0.5)))
    }
}
