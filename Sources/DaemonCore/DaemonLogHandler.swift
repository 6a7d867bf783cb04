import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Log lines on stderr, one per message. Under systemd (`JOURNAL_STREAM` set) each line starts with a syslog
/// priority prefix (`<3>`) that journald turns into the entry's priority, and carries no timestamp (journald
/// adds its own); otherwise lines start with an ISO 8601 timestamp and the level.
///
/// Callers must only log durations, counts and sizes: this handler writes whatever it is given.
public struct DaemonLogHandler: LogHandler {
    /// The minimum level written.
    public var logLevel: Logger.Level
    /// Metadata added to every message of this logger.
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let journal: Bool

    private static let lock = NSLock()

    /// A handler for `label`; `journal` nil decides from `JOURNAL_STREAM`.
    public init(label: String, level: Logger.Level, journal: Bool? = nil) {
        self.label = label
        self.logLevel = level
        self.journal = journal ?? (ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil)
    }

    /// Metadata of this logger by key.
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Writes one line.
    public func log(event: LogEvent) {
        let level = event.level
        let message = event.message
        var all = metadata
        if let explicit = event.metadata { all.merge(explicit) { _, new in new } }
        var text = message.description
        if !all.isEmpty {
            text += " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        let output: String
        if journal {
            output = "<\(Self.priority(level))>\(text)\n"
        } else {
            output = "\(Self.timestamp()) \(level) \(label): \(text)\n"
        }
        Self.lock.lock()
        fputs(output, stderr)
        fflush(stderr)
        Self.lock.unlock()
    }

    /// The syslog priority written for `level` (journald reads it from the `<N>` prefix).
    public static func priorityForTesting(_ level: Logger.Level) -> Int { priority(level) }

    /// syslog priority of a level (journald reads it from the `<N>` prefix).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(cString: buffer)
    }
}
