import Foundation

/// Byte sizes as every myqasr program reads and prints them: budgets on the command line
/// (`myqasr quantize --budget`, `myqasrd --budget`, `myqasrctl budget`), sizes in the daemon's
/// configuration, sizes in status lines and messages. One set of rules for all of them:
///
/// - a number of bytes (`25165824`), or a number and a unit, with or without a space (`24MiB`, `24 MiB`,
///   `0.5GiB`, `1.5k`); units are case-insensitive;
/// - `K`, `KiB`, `M`, `MiB`, `G`, `GiB` are powers of 1024; `KB`, `MB`, `GB` powers of 1000; `B` is bytes;
/// - a fraction of a byte is dropped (a budget is never rounded up);
/// - a size is at least one byte; where a limit may be lifted (`parseLimit`), `0`, `none` and
///   `unlimited` mean no limit.
public enum ByteSize {
    /// Why a size could not be read.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        /// The text that was given.
        public var text: String
        /// Whether "none" would have been accepted (a limit).
        public var acceptsNone: Bool

        /// One line: what was wrong and what is accepted, with examples.
        public var description: String {
            "\"\(text)\" is not a size: write bytes (25165824) or a number with a unit, such as 24MiB, 24M, 24MB "
                + "or 0.5GiB (K, KiB, M, MiB, G, GiB are powers of 1024; KB, MB, GB powers of 1000)"
                + (acceptsNone ? ", or none for no limit" : "")
        }
    }

    private static let units: [String: Double] = [
        "": 1, "b": 1,
        "k": 1024, "kib": 1024, "kb": 1000,
        "m": 1024 * 1024, "mib": 1024 * 1024, "mb": 1_000_000,
        "g": 1024 * 1024 * 1024, "gib": 1024 * 1024 * 1024, "gb": 1_000_000_000,
    ]

    /// Parses a size of at least one byte: "24MiB", "24M", "24 MB", "0.5GiB", "1.5k", "25165824".
    public static func parse(_ text: String) throws -> Int {
        guard let bytes = bytes(text), bytes > 0 else { throw ParseError(text: text, acceptsNone: false) }
        return bytes
    }

    /// Parses a limit: a size as `parse` reads it, or nil for no limit ("0", "none", "unlimited").
    public static func parseLimit(_ text: String) throws -> Int? {
        let word = text.trimmingCharacters(in: .whitespaces).lowercased()
        if word == "none" || word == "unlimited" { return nil }
        guard let bytes = bytes(text) else { throw ParseError(text: text, acceptsNone: true) }
        return bytes == 0 ? nil : bytes
    }

    /// The bytes `text` names (0 included), or nil when it is not a size.
    private static func bytes(_ text: String) -> Int? {
        let lower = text.trimmingCharacters(in: .whitespaces).lowercased()
        let numberEnd = lower.firstIndex(where: { !($0.isASCII && ($0.isNumber || $0 == ".")) }) ?? lower.endIndex
        let unit = lower[numberEnd...].trimmingCharacters(in: .whitespaces)
        guard numberEnd > lower.startIndex, let number = Double(lower[..<numberEnd]), number.isFinite,
              let scale = units[unit] else { return nil }
        let bytes = (number * scale).rounded(.down)
        // Less than a byte is not a size (and not "no limit" either); so is more than any machine holds.
        guard bytes >= 1 || number == 0, bytes < Double(Int.max / 2) else { return nil }
        return Int(bytes)
    }

    /// "24.0 MiB", "812 KiB", "512 B", "1.50 GiB": a compact form for status lines and messages.
    public static func format(_ bytes: Int) -> String {
        let value = Double(bytes)
        if value >= 1024 * 1024 * 1024 { return String(format: "%.2f GiB", value / (1024 * 1024 * 1024)) }
        if value >= 1024 * 1024 { return String(format: "%.1f MiB", value / (1024 * 1024)) }
        if value >= 1024 { return String(format: "%.0f KiB", value / 1024) }
        return "\(bytes) B"
    }

    /// "24.0 MiB (25165824 bytes)": the compact form and the exact count, where a byte matters
    /// (a budget and what was made for it).
    public static func formatExact(_ bytes: Int) -> String {
        "\(format(bytes)) (\(bytes) bytes)"
    }
}
