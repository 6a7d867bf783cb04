import Foundation
import XCTest
@testable import Capture

/// The whole chain on real ALSA: file plugin -> capture thread -> ring buffer -> detector.
final class CapturePipelineTests: XCTestCase {
    func testFIFOCaptureIsBitExact() throws {
        // The FIFO path used by the pipeline test must itself be lossless.
        let directory = try TemporaryDirectory()
        let count = 50_000
        let pattern: [Int16] = (0..<count).map { Int16(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let feeder = try FIFOFeeder(path: directory.path("mic.fifo"), data: Signal.bytes(pattern))
        feeder.start()
        let reached = expectation(description: "all samples")
        let collector = SampleCollector(target: count, reached: reached)
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "testmic", configurationText: filePCMConfiguration(name: "testmic", infile: feeder.path)),
            eventHandler: { event in
                if case let .opened(_, period, _) = event { feeder.begin(chunkBytes: period * 2) }
            },
            sink: collector.append)
        try capture.start()
        wait(for: [reached], timeout: 30)
        feeder.finish()
        capture.stop()
        assertSameSamples(Array(collector.collected.prefix(count)), pattern, "FIFO capture")
    }

    func testTwoToneBurstsBecomeTwoUtterances() throws {
        let directory = try TemporaryDirectory()
        // silence 1 s, tone 1 s, silence 1.5 s, tone 0.8 s, silence 1.7 s
        let audio = Signal.bursts(seconds: 6, bursts: [(1.0, 1.0), (3.5, 0.8)])
        let feeder = try FIFOFeeder(path: directory.path("mic.fifo"), data: Signal.bytes(Signal.int16(audio)))
        feeder.start()

        let two = expectation(description: "two utterances")
        let collected = LockedBox<[Utterance]>([])
        // Utterances are handed straight to the receiver, on the detector thread (no queue in between).
        let pipeline = try CapturePipeline(
            configuration: CapturePipelineConfiguration(
                capture: AlsaCaptureConfiguration(
                    device: "testmic", configurationText: filePCMConfiguration(name: "testmic", infile: feeder.path)),
                segmenter: SegmenterConfiguration(minimumSpeechDuration: 0.15, hangover: 0.6, preRoll: 0.3,
                                                  maximumUtteranceDuration: 30),
                ringBufferSeconds: 30),
            onEvent: { event in
                if case let .opened(_, period, _) = event { feeder.begin(chunkBytes: period * 2) }
            },
            onUtterance: { utterance in
                collected.mutate { $0.append(utterance) }
                if collected.value.count == 2 { two.fulfill() }
            })
        try pipeline.start()
        XCTAssertThrowsError(try pipeline.start())
        wait(for: [two], timeout: 30)
        // The FIFO is still open, so the capture thread waits for more audio: no repeats.
        let statistics = pipeline.statistics
        feeder.finish()
        pipeline.stop()

        let utterances = collected.value
        XCTAssertEqual(utterances.count, 2, "\(utterances)")
        guard utterances.count == 2 else { return }
        XCTAssertEqual(utterances[0].startTime, 0.7, accuracy: 0.04)
        XCTAssertEqual(utterances[0].duration, 1.9, accuracy: 0.07)
        XCTAssertEqual(utterances[1].startTime, 3.2, accuracy: 0.04)
        XCTAssertEqual(utterances[1].duration, 1.7, accuracy: 0.07)
        XCTAssertEqual(utterances.map(\.endReason), [.silence, .silence])

        // The audio inside is the captured audio (to 16-bit precision).
        let first = utterances[0]
        let start = Int(first.streamPosition)
        let expected = Signal.int16(Array(audio[start..<(start + first.sampleCount)])).map { Float($0) / 32768 }
        assertSameSamples(first.samples, expected, "utterance audio")

        XCTAssertEqual(statistics.utterances, 2)
        XCTAssertEqual(statistics.droppedSamples, 0)
        XCTAssertEqual(statistics.deviceOpens, 1)
        XCTAssertGreaterThanOrEqual(statistics.samplesCaptured, Int64(4.9 * 16_000))

        // After stop the ring buffer holds nothing, in memory or in its counters.
        XCTAssertTrue(pipeline.ringBuffer.storageSnapshot().allSatisfy { $0 == 0 })
        first.wipe()
        XCTAssertTrue(first.samples.allSatisfy { $0 == 0 })
    }

    func testMissingDeviceReportsRetryingEventsAndStopIsTheLastEvent() throws {
        let retries = expectation(description: "retrying twice")
        let events = LockedBox<[CaptureEvent]>([])
        let pipeline = try CapturePipeline(
            configuration: CapturePipelineConfiguration(
                capture: AlsaCaptureConfiguration(device: "myqasr_test_no_such_pcm", configurationText: "",
                                                  initialRetryDelay: 0.02, maximumRetryDelay: 0.04)),
            onEvent: { event in
                events.mutate { $0.append(event) }
                if case .retrying = event, events.value.filter({ if case .retrying = $0 { return true } else { return false } }).count == 2 {
                    retries.fulfill()
                }
            },
            onUtterance: { $0.wipe() })
        try pipeline.start()
        wait(for: [retries], timeout: 20)
        pipeline.stop()
        XCTAssertEqual(pipeline.statistics.deviceOpens, 0)
        XCTAssertEqual(pipeline.statistics.samplesCaptured, 0)
        let seen = events.value
        XCTAssertTrue(seen.contains { if case .unavailable = $0 { return true } else { return false } })
        XCTAssertEqual(seen.last, .stopped)
    }
}
