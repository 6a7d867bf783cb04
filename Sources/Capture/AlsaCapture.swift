import CALSA
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Settings for `AlsaCapture`.
public struct AlsaCaptureConfiguration: Sendable, Equatable {
    /// The ALSA PCM name to capture from ("default", "hw:1,0", "plughw:CARD=Mic", or a name
    /// defined in `configurationText`).
    public var device: String
    /// Extra ALSA configuration (asoundrc syntax) merged over the system configuration
    /// for this device only, opened with `snd_pcm_open_lconf`. `nil` uses the system
    /// configuration as is (which also honours `ALSA_CONFIG_PATH`).
    public var configurationText: String?
    /// Requested device latency (ALSA buffer time); periods are about a quarter of it.
    public var latency: TimeInterval
    /// The first delay before reopening a missing or lost device.
    public var initialRetryDelay: TimeInterval
    /// The ceiling of the doubling retry delay.
    public var maximumRetryDelay: TimeInterval
    /// How long one `poll(2)` may wait before the loop checks the device state again.
    public var pollTimeout: TimeInterval

    /// Creates a configuration; the defaults suit a daemon on the default device.
    public init(
        device: String = "default",
        configurationText: String? = nil,
        latency: TimeInterval = 0.2,
        initialRetryDelay: TimeInterval = 0.5,
        maximumRetryDelay: TimeInterval = 30,
        pollTimeout: TimeInterval = 0.5
    ) {
        self.device = device
        self.configurationText = configurationText
        self.latency = latency
        self.initialRetryDelay = initialRetryDelay
        self.maximumRetryDelay = maximumRetryDelay
        self.pollTimeout = pollTimeout
    }

    func validate() throws {
        guard !device.isEmpty else { throw CaptureError.invalidParameter("the device name is empty") }
        guard latency > 0.005, latency <= 10 else {
            throw CaptureError.invalidParameter("latency must be between 5 ms and 10 s, got \(latency)")
        }
        guard initialRetryDelay > 0, maximumRetryDelay >= initialRetryDelay else {
            throw CaptureError.invalidParameter(
                "retry delays must satisfy 0 < initial (\(initialRetryDelay)) <= maximum (\(maximumRetryDelay))")
        }
        guard pollTimeout > 0 else { throw CaptureError.invalidParameter("poll timeout must be positive") }
    }
}

/// Something that happened to the capture device, reported in order from the capture thread.
public enum CaptureEvent: Sendable, Equatable, CustomStringConvertible {
    /// The device is open and configured; periods of `periodFrames` will follow.
    case opened(device: String, periodFrames: Int, bufferFrames: Int)
    /// The device could not be opened (missing, busy, refused the format).
    case unavailable(CaptureError)
    /// An overrun (samples lost inside ALSA because reading fell behind) was recovered;
    /// `total` counts overruns since `start()`.
    case overrun(total: Int)
    /// An open device failed beyond recovery (unplugged, driver error) and was closed.
    case lost(CaptureError)
    /// The device will be opened again after `delay` seconds (attempt counts from 1).
    case retrying(in: TimeInterval, attempt: Int)
    /// Capture stopped at the caller's request; no more samples will be delivered.
    case stopped

    /// A one-line summary suitable for logs.
    public var description: String {
        switch self {
        case let .opened(device, period, buffer):
            return "opened '\(device)' (period \(period) frames, buffer \(buffer) frames)"
        case let .unavailable(error): return "unavailable: \(error)"
        case let .overrun(total): return "overrun recovered (\(total) so far)"
        case let .lost(error): return "lost: \(error)"
        case let .retrying(delay, attempt):
            return "retrying in \(String(format: "%.2f", delay)) s (attempt \(attempt))"
        case .stopped: return "stopped"
        }
    }
}

/// Counters kept by `AlsaCapture`.
public struct CaptureStatistics: Sendable, Equatable {
    /// Frames (= samples, mono) delivered to the sink since `start()`.
    public var framesCaptured: Int64 = 0
    /// Overruns recovered with `snd_pcm_recover`.
    public var overruns: Int = 0
    /// Successful opens of the device.
    public var opens: Int = 0
    /// Failed opens plus lost devices.
    public var failures: Int = 0
}

/// Captures 16 kHz mono S16_LE audio from an ALSA PCM on a dedicated thread.
///
/// Design:
/// - The device is opened non-blocking (`SND_PCM_NONBLOCK`) with `snd_pcm_set_params`
///   (soft resampling allowed, so a `plug`/`default` PCM converts any rate/channel count).
/// - A dedicated `Thread` (never the Swift concurrency pool) polls the PCM's descriptors
///   together with the read end of a private wake-up pipe, then reads one period with
///   `snd_pcm_readi`. `stop()` writes to the pipe, so the thread wakes at once, closes the
///   PCM itself (the PCM is never touched from another thread) and exits; `stop()` waits
///   for that. The only thing that can delay `stop()` is a plugin that blocks inside
///   `snd_pcm_readi` despite non-blocking mode (ALSA's `file` plugin reading a FIFO that
///   has no data yet): then the thread exits as soon as that read returns.
/// - Overruns (`-EPIPE`) and suspends (`-ESTRPIPE`) go through `snd_pcm_recover` and are
///   counted. Any other failure closes the device, reports `.lost`, and the device is
///   reopened with exponential backoff (`initialRetryDelay` doubling up to
///   `maximumRetryDelay`; reset once a reopened device delivers audio). Missing devices
///   at start are retried the same way, reporting `.unavailable` then `.retrying`.
/// - Samples go to the `sink` closure on the capture thread, as a buffer that is only
///   valid during the call (no allocation per period). The sink must return quickly.
public final class AlsaCapture: @unchecked Sendable {
    /// Receives one chunk of captured samples; the buffer is only valid during the call.
    public typealias Sink = (UnsafeBufferPointer<Int16>) -> Void

    /// The configuration this capture was created with.
    public let configuration: AlsaCaptureConfiguration
    /// Capture events (opened, overrun, lost, retrying, ...) as an async sequence.
    /// The newest 256 undelivered events are kept if nobody is reading.
    public let events: AsyncStream<CaptureEvent>

    private let sink: Sink
    private let eventHandler: ((CaptureEvent) -> Void)?
    private let eventContinuation: AsyncStream<CaptureEvent>.Continuation
    private let logger: Logger

    private let lock = NSLock()
    private var stats = CaptureStatistics()
    private var running = false
    private var stopRequested = false
    private var wakeReadFD: Int32 = -1
    private var wakeWriteFD: Int32 = -1
    private var finished: DispatchSemaphore?
    private var captureThread: Thread?

    /// Creates a capture; nothing is opened until `start()`.
    /// - Parameters:
    ///   - configuration: device, optional ALSA configuration text, latency and retry policy.
    ///   - logger: where state changes and ALSA library messages are logged.
    ///   - eventHandler: optional callback for events, called on the capture thread
    ///     (in addition to the `events` stream).
    ///   - sink: receives the captured samples on the capture thread.
    public init(
        configuration: AlsaCaptureConfiguration = AlsaCaptureConfiguration(),
        logger: Logger = Logger(label: "myqasr.capture.alsa"),
        eventHandler: ((CaptureEvent) -> Void)? = nil,
        sink: @escaping Sink
    ) {
        self.configuration = configuration
        self.logger = logger
        self.sink = sink
        self.eventHandler = eventHandler
        var continuation: AsyncStream<CaptureEvent>.Continuation!
        self.events = AsyncStream(bufferingPolicy: .bufferingNewest(256)) { continuation = $0 }
        self.eventContinuation = continuation
        AlsaLibraryLog.install()
    }

    deinit {
        stop()
        eventContinuation.finish()
    }

    /// A snapshot of the counters.
    public var statistics: CaptureStatistics {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    /// Whether the capture thread is running (including while it waits to retry).
    public var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    /// Starts the capture thread. Returns at once; a missing device is not an error
    /// here but is reported through events and retried.
    /// - Throws: `CaptureError.alreadyRunning`, `.invalidParameter`, `.systemResource`.
    public func start() throws {
        try configuration.validate()
        lock.lock()
        defer { lock.unlock() }
        guard !running else { throw CaptureError.alreadyRunning }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw CaptureError.systemResource(what: "wake-up pipe", errno: errno) }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeReadFD = fds[0]
        wakeWriteFD = fds[1]
        stopRequested = false
        stats = CaptureStatistics()
        running = true
        let done = DispatchSemaphore(value: 0)
        finished = done
        let thread = Thread { [self] in
            self.runLoop()
            self.lock.lock()
            close(self.wakeReadFD)
            close(self.wakeWriteFD)
            self.wakeReadFD = -1
            self.wakeWriteFD = -1
            self.running = false
            self.finished = nil
            self.captureThread = nil
            self.lock.unlock()
            done.signal()
        }
        thread.name = "myqasr.capture"
        thread.stackSize = 1 << 20
        captureThread = thread
        thread.start()
    }

    /// Stops capture and waits until the capture thread has closed the device and exited.
    /// Safe to call more than once and from any thread; called from the sink or the event
    /// handler (the capture thread itself) it only requests the stop and returns, and the
    /// thread exits after the callback.
    public func stop() {
        lock.lock()
        guard running, let done = finished else {
            lock.unlock()
            return
        }
        stopRequested = true
        var byte: UInt8 = 1
        _ = write(wakeWriteFD, &byte, 1)
        let calledFromCaptureThread = captureThread.map { $0 === Thread.current } ?? false
        lock.unlock()
        if calledFromCaptureThread { return }
        done.wait()
        done.signal()  // let concurrent stop() callers through as well
    }

    // MARK: - Capture thread

    private var shouldStop: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopRequested
    }

    /// Reports an event to the handler and the stream, and logs it. `repeated` marks a
    /// failure or retry identical to the previous one, logged at debug level only so a
    /// missing microphone does not flood the journal.
    private func emit(_ event: CaptureEvent, repeated: Bool = false) {
        switch event {
        case .opened: logger.info("capture: \(event)")
        case .stopped: logger.debug("capture: \(event)")   // the owner logs the stop once, with the counts
        case .overrun: logger.notice("capture: \(event)")
        case .unavailable, .lost, .retrying:
            if repeated {
                logger.debug("capture: \(event)")
            } else {
                logger.warning("capture: \(event)")
            }
        }
        eventHandler?(event)
        eventContinuation.yield(event)
    }

    private func update(_ change: (inout CaptureStatistics) -> Void) {
        lock.lock()
        change(&stats)
        lock.unlock()
    }

    private enum SessionEnd {
        case stopRequested
        case lost(CaptureError)
    }

    private func runLoop() {
        var delay = configuration.initialRetryDelay
        var attempt = 0
        var lastFailure: CaptureError?
        while !shouldStop {
            switch openDevice() {
            case let .success(device):
                update { $0.opens += 1 }
                emit(.opened(device: configuration.device, periodFrames: device.periodFrames,
                             bufferFrames: device.bufferFrames))
                var delivered = false
                let end = readLoop(device, delivered: &delivered)
                snd_pcm_close(device.pcm)
                if delivered {
                    delay = configuration.initialRetryDelay
                    attempt = 0
                }
                lastFailure = nil
                switch end {
                case .stopRequested:
                    break
                case let .lost(error):
                    update { $0.failures += 1 }
                    emit(.lost(error))
                }
            case let .failure(error):
                update { $0.failures += 1 }
                emit(.unavailable(error), repeated: error == lastFailure)
                lastFailure = error
            }
            if shouldStop { break }
            attempt += 1
            emit(.retrying(in: delay, attempt: attempt), repeated: lastFailure != nil && attempt > 1)
            if waitForWake(timeout: delay) { break }
            delay = min(delay * 2, configuration.maximumRetryDelay)
        }
        emit(.stopped)
    }

    /// Waits up to `timeout` seconds for `stop()`; returns true when stop was requested.
    private func waitForWake(timeout: TimeInterval) -> Bool {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeout * 1e9)
        while true {
            if shouldStop { return true }
            let now = DispatchTime.now().uptimeNanoseconds
            if now >= deadline { return false }
            var fd = pollfd(fd: wakeReadFD, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
            _ = poll(&fd, 1, milliseconds)
        }
    }

    private struct OpenDevice {
        var pcm: OpaquePointer
        var periodFrames: Int
        var bufferFrames: Int
    }

    private func openDevice() -> Result<OpenDevice, CaptureError> {
        let name = configuration.device
        var handle: OpaquePointer?
        var code: Int32
        if let text = configuration.configurationText {
            let config: OpaquePointer
            switch AlsaConfigText.load(text) {
            case let .success(loaded): config = loaded
            case let .failure(error): return .failure(error)
            }
            code = snd_pcm_open_lconf(&handle, name, SND_PCM_STREAM_CAPTURE, SND_PCM_NONBLOCK, config)
            snd_config_delete(config)
        } else {
            code = snd_pcm_open(&handle, name, SND_PCM_STREAM_CAPTURE, SND_PCM_NONBLOCK)
        }
        guard code >= 0, let pcm = handle else {
            return .failure(.openFailed(device: name, code: code, message: alsaMessage(code)))
        }
        code = snd_pcm_set_params(pcm, SND_PCM_FORMAT_S16_LE, SND_PCM_ACCESS_RW_INTERLEAVED,
                                  UInt32(CaptureFormat.channels), UInt32(CaptureFormat.sampleRate),
                                  1, UInt32(configuration.latency * 1e6))
        guard code >= 0 else {
            snd_pcm_close(pcm)
            return .failure(.setupFailed(device: name, step: "snd_pcm_set_params S16_LE 16000 Hz mono",
                                         code: code, message: alsaMessage(code)))
        }
        var bufferSize: snd_pcm_uframes_t = 0
        var periodSize: snd_pcm_uframes_t = 0
        code = snd_pcm_get_params(pcm, &bufferSize, &periodSize)
        guard code >= 0, periodSize > 0 else {
            snd_pcm_close(pcm)
            return .failure(.setupFailed(device: name, step: "snd_pcm_get_params",
                                         code: code, message: alsaMessage(code)))
        }
        code = snd_pcm_start(pcm)
        guard code >= 0 else {
            snd_pcm_close(pcm)
            return .failure(.setupFailed(device: name, step: "snd_pcm_start", code: code, message: alsaMessage(code)))
        }
        return .success(OpenDevice(pcm: pcm, periodFrames: Int(periodSize), bufferFrames: Int(bufferSize)))
    }

    private func readLoop(_ device: OpenDevice, delivered: inout Bool) -> SessionEnd {
        let pcm = device.pcm
        let name = configuration.device
        let descriptorCount = Int(snd_pcm_poll_descriptors_count(pcm))
        guard descriptorCount > 0 else {
            return .lost(.setupFailed(device: name, step: "snd_pcm_poll_descriptors_count",
                                      code: Int32(descriptorCount), message: alsaMessage(Int32(descriptorCount))))
        }
        var fds = [pollfd](repeating: pollfd(fd: -1, events: 0, revents: 0), count: descriptorCount + 1)
        fds[0] = pollfd(fd: wakeReadFD, events: Int16(POLLIN), revents: 0)
        let filled = fds.withUnsafeMutableBufferPointer { buffer in
            snd_pcm_poll_descriptors(pcm, buffer.baseAddress! + 1, UInt32(descriptorCount))
        }
        guard filled == descriptorCount else {
            return .lost(.setupFailed(device: name, step: "snd_pcm_poll_descriptors", code: filled,
                                      message: alsaMessage(filled)))
        }
        let timeoutMilliseconds = Int32(max(1, configuration.pollTimeout * 1000))
        let buffer = UnsafeMutableBufferPointer<Int16>.allocate(capacity: device.periodFrames)
        defer {
            explicit_bzero(buffer.baseAddress!, buffer.count * MemoryLayout<Int16>.stride)
            buffer.deallocate()
        }

        while true {
            if shouldStop { return .stopRequested }
            for index in fds.indices { fds[index].revents = 0 }
            let ready = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                return .lost(.pollFailed(device: name, errno: errno))
            }
            if fds[0].revents != 0 || shouldStop { return .stopRequested }
            if ready == 0 {
                // Nothing for a whole poll timeout: make sure the stream is still running.
                switch snd_pcm_state(pcm) {
                case SND_PCM_STATE_DISCONNECTED:
                    return .lost(.disconnected(device: name))
                case SND_PCM_STATE_XRUN, SND_PCM_STATE_SUSPENDED:
                    if let error = recover(pcm, code: -EPIPE) { return .lost(error) }
                case SND_PCM_STATE_PREPARED, SND_PCM_STATE_SETUP:
                    _ = snd_pcm_start(pcm)
                default:
                    break
                }
                continue
            }
            var revents: UInt16 = 0
            let demangled = fds.withUnsafeMutableBufferPointer { all in
                snd_pcm_poll_descriptors_revents(pcm, all.baseAddress! + 1, UInt32(descriptorCount), &revents)
            }
            if demangled < 0 {
                return .lost(.readFailed(device: name, code: demangled, message: alsaMessage(demangled)))
            }
            if revents & UInt16(POLLIN | POLLERR | POLLHUP | POLLNVAL) == 0 { continue }

            let count = snd_pcm_readi(pcm, buffer.baseAddress!, snd_pcm_uframes_t(buffer.count))
            if count > 0 {
                delivered = true
                update { $0.framesCaptured += Int64(count) }
                sink(UnsafeBufferPointer(rebasing: buffer[0..<Int(count)]))
                continue
            }
            let code = Int32(count)
            switch code {
            case 0, -EAGAIN, -EINTR:
                continue
            case -EPIPE, -ESTRPIPE:
                if let error = recover(pcm, code: code) { return .lost(error) }
            default:
                return .lost(.readFailed(device: name, code: code, message: alsaMessage(code)))
            }
        }
    }

    /// Recovers from an overrun or suspend; returns an error when recovery failed.
    private func recover(_ pcm: OpaquePointer, code: Int32) -> CaptureError? {
        let recovered = snd_pcm_recover(pcm, code, 1)
        guard recovered >= 0 else {
            return .readFailed(device: configuration.device, code: code,
                               message: "\(alsaMessage(code)); recovery failed: \(alsaMessage(recovered))")
        }
        var total = 0
        update {
            $0.overruns += 1
            total = $0.overruns
        }
        emit(.overrun(total: total))
        if snd_pcm_state(pcm) == SND_PCM_STATE_PREPARED {
            _ = snd_pcm_start(pcm)
        }
        return nil
    }
}

/// ALSA's text for an error code.
func alsaMessage(_ code: Int32) -> String {
    guard let text = snd_strerror(code) else { return "unknown error" }
    return String(cString: text)
}

/// Builds a private ALSA configuration: the system configuration with extra text merged over it.
enum AlsaConfigText {
    /// Returns a new configuration tree owned by the caller (release with `snd_config_delete`).
    static func load(_ text: String) -> Result<OpaquePointer, CaptureError> {
        var top: OpaquePointer?
        var code = snd_config_update_ref(&top)
        guard code >= 0, let system = top else {
            return .failure(.invalidConfigurationText(code: code, message: "cannot load the system ALSA configuration: \(alsaMessage(code))"))
        }
        defer { snd_config_unref(system) }
        var copy: OpaquePointer?
        code = snd_config_copy(&copy, system)
        guard code >= 0, let merged = copy else {
            return .failure(.invalidConfigurationText(code: code, message: "cannot copy the system ALSA configuration: \(alsaMessage(code))"))
        }
        var input: OpaquePointer?
        code = text.withCString { snd_input_buffer_open(&input, $0, strlen($0)) }
        guard code >= 0, let reader = input else {
            snd_config_delete(merged)
            return .failure(.invalidConfigurationText(code: code, message: alsaMessage(code)))
        }
        defer { snd_input_close(reader) }
        code = snd_config_load(merged, reader)
        guard code >= 0 else {
            snd_config_delete(merged)
            return .failure(.invalidConfigurationText(code: code, message: alsaMessage(code)))
        }
        return .success(merged)
    }
}

/// Sends ALSA's own library error messages to a swift-log logger instead of stderr.
enum AlsaLibraryLog {
    static let logger = Logger(label: "myqasr.alsa-lib")
    private static let installOnce: Void = {
        _ = myqasr_alsa_set_error_callback { file, line, function, code, message in
            let text = message.map { String(cString: $0) } ?? ""
            let origin = function.map { String(cString: $0) } ?? "?"
            let where_ = file.map { String(cString: $0) } ?? "?"
            AlsaLibraryLog.logger.debug("ALSA: \(text) [\(where_):\(line) \(origin), error \(code)]")
        }
    }()

    /// Installs the handler (idempotent, thread-safe).
    static func install() {
        _ = installOnce
    }
}
