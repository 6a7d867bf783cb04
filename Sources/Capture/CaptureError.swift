import Foundation

/// The fixed audio format of everything the `Capture` module hands on:
/// signed 16-bit (or Float in -1...1) samples, 16 kHz, one channel.
public enum CaptureFormat {
    /// Samples per second delivered by capture, stored in the ring buffer and
    /// carried by utterances.
    public static let sampleRate = 16_000
    /// Number of interleaved channels (always mono).
    public static let channels = 1
}

/// Errors raised by the capture module.
public enum CaptureError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The ALSA configuration text given for tests or overrides did not parse.
    case invalidConfigurationText(code: Int32, message: String)
    /// `snd_pcm_open`/`snd_pcm_open_lconf` failed (device missing, busy, unknown name).
    case openFailed(device: String, code: Int32, message: String)
    /// The device opened but refused S16_LE / 16 kHz / mono or another setup step.
    case setupFailed(device: String, step: String, code: Int32, message: String)
    /// A read failed in a way `snd_pcm_recover` could not repair (device vanished).
    case readFailed(device: String, code: Int32, message: String)
    /// `poll(2)` on the device descriptors failed.
    case pollFailed(device: String, errno: Int32)
    /// The device reported itself disconnected.
    case disconnected(device: String)
    /// A wake-up pipe or thread could not be created.
    case systemResource(what: String, errno: Int32)
    /// `start()` was called on a component that is already running.
    case alreadyRunning
    /// A configuration value is out of range.
    case invalidParameter(String)

    /// A human-readable explanation of the error.
    public var description: String {
        switch self {
        case let .invalidConfigurationText(code, message):
            return "the ALSA configuration text does not parse: \(message) (error \(code))"
        case let .openFailed(device, code, message):
            return "cannot open ALSA capture device '\(device)': \(message) (error \(code))"
        case let .setupFailed(device, step, code, message):
            return "cannot configure ALSA capture device '\(device)' (\(step)): \(message) (error \(code))"
        case let .readFailed(device, code, message):
            return "reading from ALSA capture device '\(device)' failed: \(message) (error \(code))"
        case let .pollFailed(device, errno):
            return "poll on ALSA capture device '\(device)' failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case let .disconnected(device):
            return "ALSA capture device '\(device)' was disconnected"
        case let .systemResource(what, errno):
            return "cannot create \(what): \(String(cString: strerror(errno))) (errno \(errno))"
        case .alreadyRunning:
            return "capture is already running"
        case let .invalidParameter(message):
            return "invalid capture parameter: \(message)"
        }
    }
}
