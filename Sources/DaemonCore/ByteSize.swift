import Foundation

/// A memory size parsed from configuration or the command line: "24MiB", "1.5GB", "800k", "1048576",
/// or "0" / "none" / "unlimited" for no limit.
public enum ByteSize {
    /// Why a size could not be parsed.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        /// The text that was given.
        public var text: String
        /// Human-readable explanation.
        public var description: String {
            "\"\(text)\" is not a size: use a number of bytes with an optional unit (B, KB, MB, GB, KiB, MiB, GiB, k, M, G), or 0/none for unlimited"
        }
    }

    private static let units: [String: Double] = [
        "": 1, "b": 1,
        "k": 1024, "kb": 1000, "kib": 1024,
        "m": 1024 * 1024, "mb": 1_000_000, "mib": 1024 * 1024,
        "g": 1024 * 1024 * 1024, "gb": 1_000_000_000, "gib": 1024 * 1024 * 1024,
    ]

    /// Parses `text`; nil means unlimited ("0", "none", "unlimited").
    public static func parse(_ text: String) throws -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let lower = trimmed.lowercased()
        if lower == "none" || lower == "unlimited" { return nil }
        let numberEnd = lower.firstIndex(where: { !($0.isNumber || $0 == ".") }) ?? lower.endIndex
        let numberText = String(lower[..<numberEnd])
        let unitText = lower[numberEnd...].trimmingCharacters(in: .whitespaces)
        guard !numberText.isEmpty, let number = Double(numberText), number.isFinite, number >= 0,
              let scale = units[unitText]
        else { throw ParseError(text: text) }
        let bytes = (number * scale).rounded()
        guard bytes < Double(Int.max / 2) else { throw ParseError(text: text) }
        return bytes == 0 ? nil : Int(bytes)
    }

    /// "24.0 MiB", "812 KiB", "512 B": a compact human form.
    public static func format(_ bytes: Int) -> String {
        let value = Double(bytes)
        if value >= 1024 * 1024 * 1024 { return String(format: "%.2f GiB", value / (1024 * 1024 * 1024)) }
        if value >= 1024 * 1024 { return String(format: "%.1f MiB", value / (1024 * 1024)) }
        if value >= 1024 { return String(format: "%.0f KiB", value / 1024) }
        return "\(bytes) B"
    }
}
