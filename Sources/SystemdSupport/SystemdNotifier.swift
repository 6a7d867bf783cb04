#if canImport(Glibc)
import Glibc
#endif
import CSystemd
import Dispatch

/// An error from a libsystemd call.
public struct SystemdError: Error, Equatable, CustomStringConvertible {
    /// The libsystemd function that failed.
    public var function: String
    /// The positive errno value it returned (negated).
    public var errno: Int32

    /// Creates an error from a negative libsystemd return value.
    public init(function: String, returnValue: Int32) {
        self.function = function
        self.errno = -returnValue
    }

    /// Human-readable explanation.
    public var description: String { "\(function) failed: \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// Messages to the service manager through `sd_notify` (no-ops when `NOTIFY_SOCKET` is unset).
public enum SystemdNotifier {
    /// Sends a raw state string such as "READY=1\nSTATUS=Listening". Returns false when there is no service
    /// manager to tell (no `NOTIFY_SOCKET`), true when the message was sent.
    @discardableResult
    public static func notify(_ state: String) throws -> Bool {
        let result = sd_notify(0, state)
        if result < 0 { throw SystemdError(function: "sd_notify", returnValue: result) }
        return result > 0
    }

    /// Startup is complete: `READY=1`, with an optional `STATUS=` line.
    @discardableResult
    public static func ready(status: String? = nil) throws -> Bool {
        try notify(join(["READY=1", status.map { "STATUS=\(sanitize($0))" }]))
    }

    /// A one-line status shown by `systemctl status`: `STATUS=…`.
    @discardableResult
    public static func status(_ text: String) throws -> Bool {
        try notify("STATUS=\(sanitize(text))")
    }

    /// Reloading configuration: `RELOADING=1` with `MONOTONIC_USEC=` (required by `Type=notify-reload`,
    /// harmless before systemd 253). Send `ready()` when the reload is done.
    @discardableResult
    public static func reloading(status: String? = nil) throws -> Bool {
        try notify(join([
            "RELOADING=1", "MONOTONIC_USEC=\(monotonicMicroseconds())", status.map { "STATUS=\(sanitize($0))" },
        ]))
    }

    /// Shutting down: `STOPPING=1`.
    @discardableResult
    public static func stopping(status: String? = nil) throws -> Bool {
        try notify(join(["STOPPING=1", status.map { "STATUS=\(sanitize($0))" }]))
    }

    /// Keep-alive for the service watchdog: `WATCHDOG=1`.
    @discardableResult
    public static func watchdog() throws -> Bool {
        try notify("WATCHDOG=1")
    }

    /// The watchdog interval systemd expects pings within (`WatchdogSec=`), or nil when the watchdog is off
    /// for this process.
    public static func watchdogInterval() throws -> Duration? {
        var usec: UInt64 = 0
        let result = sd_watchdog_enabled(0, &usec)
        if result < 0 { throw SystemdError(function: "sd_watchdog_enabled", returnValue: result) }
        guard result > 0, usec > 0 else { return nil }
        return .microseconds(Int64(clamping: usec))
    }

    /// CLOCK_MONOTONIC in microseconds, as systemd expects in `MONOTONIC_USEC=`.
    public static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
    }

    private static func sanitize(_ text: String) -> String {
        text.replacingNewlines()
    }

    private static func join(_ lines: [String?]) -> String {
        lines.compactMap { $0 }.joined(separator: "\n")
    }
}

extension String {
    /// A status value must be one line.
    fileprivate func replacingNewlines() -> String {
        String(map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}

/// Pings the systemd watchdog at half its interval on a background queue until stopped.
///
/// The daemon should only keep it running while it is healthy: stop it (or never start it) when the main
/// loop is wedged, so systemd restarts the service.
public final class WatchdogPinger: @unchecked Sendable {
    /// Time between pings.
    public let pingInterval: Duration
    private let timer: DispatchSourceTimer
    private let queue = DispatchQueue(label: "myqasr.watchdog")
    private var running = false
    private let ping: @Sendable () -> Void

    /// A pinger for the interval systemd asked for, or nil when the watchdog is not enabled.
    public static func fromEnvironment() throws -> WatchdogPinger? {
        guard let interval = try SystemdNotifier.watchdogInterval() else { return nil }
        return WatchdogPinger(watchdogInterval: interval)
    }

    /// Creates a pinger that sends `WATCHDOG=1` every `watchdogInterval / 2`; `ping` replaces the message
    /// (for tests or extra health checks).
    public init(watchdogInterval: Duration, ping: (@Sendable () -> Void)? = nil) {
        pingInterval = watchdogInterval / 2
        self.ping = ping ?? { _ = try? SystemdNotifier.watchdog() }
        timer = DispatchSource.makeTimerSource(queue: queue)
        let (seconds, attoseconds) = pingInterval.components
        let nanoseconds = Int(clamping: seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        timer.schedule(deadline: .now(), repeating: .nanoseconds(max(nanoseconds, 1_000_000)),
                       leeway: .nanoseconds(max(nanoseconds / 20, 1000)))
        let ping = self.ping
        timer.setEventHandler { ping() }
    }

    /// Starts pinging (the first ping is immediate).
    public func start() {
        queue.sync {
            guard !running else { return }
            running = true
            timer.resume()
        }
    }

    /// Stops pinging.
    public func stop() {
        queue.sync {
            guard running else { return }
            running = false
            timer.suspend()
        }
    }

    deinit {
        if !running { timer.resume() }  // a suspended source must be resumed before it is released
        timer.cancel()
    }
}
