import Foundation
import XCTest
@testable import Capture

/// Real ALSA capture through the `file` plugin (no sound card needed).
final class AlsaCaptureTests: XCTestCase {
    func testExactSamplesComeThrough() throws {
        let directory = try TemporaryDirectory()
        let count = 40_000
        // A ramp that wraps through the whole Int16 range, so every byte position varies.
        let pattern: [Int16] = (0..<count).map { Int16(truncatingIfNeeded: $0 &* 7 &- 32768) }
        let input = directory.path("ramp.raw")
        try Signal.bytes(pattern).write(to: URL(fileURLWithPath: input))

        let reached = expectation(description: "all samples captured")
        let collector = SampleCollector(target: count, reached: reached)
        let opened = expectation(description: "opened")
        opened.assertForOverFulfill = false
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "testmic",
                configurationText: filePCMConfiguration(name: "testmic", infile: input)),
            eventHandler: { event in
                if case .opened = event { opened.fulfill() }
            },
            sink: collector.append)
        try capture.start()
        XCTAssertThrowsError(try capture.start()) { error in
            XCTAssertEqual(error as? CaptureError, .alreadyRunning)
        }
        wait(for: [opened, reached], timeout: 20)
        capture.stop()
        XCTAssertFalse(capture.isRunning)

        let received = collector.collected
        XCTAssertGreaterThanOrEqual(received.count, count)
        assertSameSamples(Array(received.prefix(count)), pattern, "captured samples differ from the file")
        XCTAssertGreaterThanOrEqual(capture.statistics.framesCaptured, Int64(count))
        XCTAssertEqual(capture.statistics.opens, 1)
    }

    func testSystemConfigurationPathThroughALSA_CONFIG_PATH() throws {
        // The daemon's route: no configuration text, the device comes from the ALSA
        // configuration files. ALSA re-reads ALSA_CONFIG_PATH at every open.
        let directory = try TemporaryDirectory()
        let count = 20_000
        let pattern: [Int16] = (0..<count).map { Int16(truncatingIfNeeded: $0 &* 31 &+ 1) }
        let input = directory.path("pattern.raw")
        try Signal.bytes(pattern).write(to: URL(fileURLWithPath: input))
        let conf = directory.path("test.conf")
        try filePCMConfiguration(name: "myqasr_envmic", infile: input).write(toFile: conf, atomically: true, encoding: .utf8)
        let previous = getenv("ALSA_CONFIG_PATH").map { String(cString: $0) }
        setenv("ALSA_CONFIG_PATH", "/usr/share/alsa/alsa.conf:\(conf)", 1)
        defer {
            if let previous { setenv("ALSA_CONFIG_PATH", previous, 1) } else { unsetenv("ALSA_CONFIG_PATH") }
        }
        let reached = expectation(description: "all samples captured")
        let collector = SampleCollector(target: count, reached: reached)
        let capture = AlsaCapture(configuration: AlsaCaptureConfiguration(device: "myqasr_envmic"),
                                  sink: collector.append)
        try capture.start()
        wait(for: [reached], timeout: 20)
        capture.stop()
        assertSameSamples(Array(collector.collected.prefix(count)), pattern, "samples through ALSA_CONFIG_PATH")
    }

    func testFortyEightKilohertzStereoThroughPlugComesOutAtSixteenKilohertzMono() throws {
        let directory = try TemporaryDirectory()
        let seconds = 2.0
        let tone = Signal.int16(Signal.tone(frequency: 1000, amplitude: 0.5, seconds: seconds, rate: 48_000))
        var stereo: [Int16] = []
        stereo.reserveCapacity(tone.count * 2)
        for sample in tone { stereo.append(sample); stereo.append(sample) }
        let input = directory.path("tone48k-stereo.raw")
        try Signal.bytes(stereo).write(to: URL(fileURLWithPath: input))

        let configuration = filePCMConfiguration(name: "file48", infile: input) + """

        pcm.mic16 {
            type plug
            slave { pcm "file48" rate 48000 channels 2 format S16_LE }
        }
        """
        let wanted = 16_000  // one second at 16 kHz (a third of the file's frames)
        let reached = expectation(description: "one second captured")
        let collector = SampleCollector(target: wanted, reached: reached)
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(device: "mic16", configurationText: configuration),
            sink: collector.append)
        try capture.start()
        wait(for: [reached], timeout: 20)
        capture.stop()

        let received = Array(collector.collected.prefix(wanted))
        // Skip the resampler's start-up; analyse 0.8 s.
        let window = received[1600..<14_400]
        let crossings = zeroCrossings(window)
        // A 1 kHz tone at 16 kHz crosses zero 2000 times a second: 1600 in 0.8 s. At 48 kHz
        // (no conversion) it would be a third of that.
        XCTAssertEqual(Double(crossings), 1600, accuracy: 40, "zero crossings \(crossings): not 1 kHz at 16 kHz")
        // Amplitude kept by the stereo-to-mono downmix (both channels equal): RMS of a 0.5 sine.
        let expectedRMS = 0.5 / 2.0.squareRoot() * 32768
        XCTAssertEqual(rms(window), expectedRMS, accuracy: expectedRMS * 0.15)
    }

    func testMissingDeviceIsRetriedWithBackoffAndStopsCleanly() throws {
        let retries = expectation(description: "four retries")
        retries.expectedFulfillmentCount = 4
        retries.assertForOverFulfill = false
        let lock = NSLock()
        var seen: [CaptureEvent] = []
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "myqasr_test_no_such_pcm",
                configurationText: "# nothing defined here\n",
                initialRetryDelay: 0.05,
                maximumRetryDelay: 0.2),
            eventHandler: { event in
                lock.lock()
                seen.append(event)
                lock.unlock()
                if case .retrying = event { retries.fulfill() }
            },
            sink: { _ in XCTFail("no samples can come from a missing device") })
        try capture.start()
        wait(for: [retries], timeout: 20)
        capture.stop()

        lock.lock()
        let events = seen
        lock.unlock()
        let delays = events.compactMap { event -> TimeInterval? in
            if case let .retrying(delay, _) = event { return delay }
            return nil
        }
        XCTAssertGreaterThanOrEqual(delays.count, 4)
        XCTAssertEqual(Array(delays.prefix(4)), [0.05, 0.1, 0.2, 0.2], "backoff doubles up to the maximum")
        guard case let .unavailable(error) = events.first else {
            return XCTFail("first event should be .unavailable, got \(String(describing: events.first))")
        }
        guard case let .openFailed(device, code, _) = error else {
            return XCTFail("expected openFailed, got \(error)")
        }
        XCTAssertEqual(device, "myqasr_test_no_such_pcm")
        XCTAssertLessThan(code, 0)
        XCTAssertTrue(error.description.contains("myqasr_test_no_such_pcm"))
        XCTAssertEqual(events.last, .stopped)
        XCTAssertEqual(capture.statistics.opens, 0)
        XCTAssertGreaterThanOrEqual(capture.statistics.failures, 4)
    }

    func testStopInterruptsALongRetryWait() throws {
        let retrying = expectation(description: "waiting to retry")
        retrying.assertForOverFulfill = false
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "myqasr_test_no_such_pcm", configurationText: "",
                initialRetryDelay: 30, maximumRetryDelay: 30),
            eventHandler: { event in
                if case .retrying = event { retrying.fulfill() }
            },
            sink: { _ in })
        try capture.start()
        wait(for: [retrying], timeout: 20)
        let began = Date()
        capture.stop()
        XCTAssertLessThan(Date().timeIntervalSince(began), 2, "stop() must not wait out the 30 s backoff")
        XCTAssertFalse(capture.isRunning)
    }

    func testEventsStreamReportsOpenedThenStopped() async throws {
        let directory = try TemporaryDirectory()
        let input = directory.path("silence.raw")
        try Signal.bytes([Int16](repeating: 0, count: 8000)).write(to: URL(fileURLWithPath: input))
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "testmic", configurationText: filePCMConfiguration(name: "testmic", infile: input)),
            sink: { _ in })
        try capture.start()
        var iterator = capture.events.makeAsyncIterator()
        let first = await iterator.next()
        guard case let .opened(device, period, buffer)? = first else {
            return XCTFail("expected .opened, got \(String(describing: first))")
        }
        XCTAssertEqual(device, "testmic")
        XCTAssertGreaterThan(period, 0)
        XCTAssertGreaterThanOrEqual(buffer, period)
        capture.stop()
        var last: CaptureEvent?
        while let event = await iterator.next() {
            last = event
            if event == .stopped { break }
        }
        XCTAssertEqual(last, .stopped)
    }

    func testStopFromTheSinkDoesNotDeadlock() throws {
        let directory = try TemporaryDirectory()
        let input = directory.path("noise.raw")
        try Signal.bytes(Signal.int16(Signal.noise(amplitude: 0.1, count: 16_000))).write(to: URL(fileURLWithPath: input))
        let stopped = expectation(description: "stopped event")
        let holder = LockedBox<AlsaCapture?>(nil)
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "testmic", configurationText: filePCMConfiguration(name: "testmic", infile: input)),
            eventHandler: { event in
                if event == .stopped { stopped.fulfill() }
            },
            sink: { _ in holder.value?.stop() })
        holder.mutate { $0 = capture }
        try capture.start()
        wait(for: [stopped], timeout: 20)
        capture.stop()  // joins the (finished) thread
        XCTAssertFalse(capture.isRunning)
        holder.mutate { $0 = nil }
    }

    func testInvalidConfigurationIsRejected() {
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(initialRetryDelay: 5, maximumRetryDelay: 1),
            sink: { _ in })
        XCTAssertThrowsError(try capture.start()) { error in
            guard case .invalidParameter = error as? CaptureError else {
                return XCTFail("expected invalidParameter, got \(error)")
            }
        }
    }

    func testUnparsableConfigurationTextIsReportedAsUnavailable() throws {
        let unavailable = expectation(description: "unavailable")
        unavailable.assertForOverFulfill = false
        let lock = NSLock()
        var reported: CaptureError?
        let capture = AlsaCapture(
            configuration: AlsaCaptureConfiguration(
                device: "testmic", configurationText: "pcm.testmic { type file ",
                initialRetryDelay: 30, maximumRetryDelay: 30),
            eventHandler: { event in
                if case let .unavailable(error) = event {
                    lock.lock()
                    reported = error
                    lock.unlock()
                    unavailable.fulfill()
                }
            },
            sink: { _ in })
        try capture.start()
        wait(for: [unavailable], timeout: 20)
        capture.stop()
        lock.lock()
        defer { lock.unlock() }
        guard case .invalidConfigurationText? = reported else {
            return XCTFail("expected invalidConfigurationText, got \(String(describing: reported))")
        }
    }
}
