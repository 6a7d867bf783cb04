import Foundation

/// One compiled regular-expression substitution (ICU syntax, `$1` templates).
struct RegexRewrite: @unchecked Sendable {
    // NSRegularExpression is immutable once built and documented as safe to share between threads.
    let regex: NSRegularExpression
    let template: String

    /// Compiles `pattern`; the patterns are literals of this module, so a failure is a programming error.
    init(_ pattern: String, _ template: String, caseInsensitive: Bool = false) {
        do {
            regex = try NSRegularExpression(
                pattern: pattern, options: caseInsensitive ? [.caseInsensitive] : [])
        } catch {
            preconditionFailure("invalid built-in regular expression \(pattern): \(error)")
        }
        self.template = template
    }

    /// Replaces every match in `text`.
    func apply(_ text: String) -> String {
        let range = NSRange(text.startIndex..<text.endIndex, in: text)
        return regex.stringByReplacingMatches(in: text, options: [], range: range, withTemplate: template)
    }

    /// Applies the rewrite until the text stops changing (for patterns whose matches overlap,
    /// such as `1,000,000`), at most `limit` times.
    func applyRepeatedly(_ text: String, limit: Int = 8) -> String {
        var current = text
        for _ in 0..<limit {
            let next = apply(current)
            if next == current { break }
            current = next
        }
        return current
    }

    /// Whether `text` matches the pattern as a whole.
    func matchesWhole(_ text: String) -> Bool {
        let range = NSRange(text.startIndex..<text.endIndex, in: text)
        guard let m = regex.firstMatch(in: text, options: [.anchored], range: range) else { return false }
        return m.range == range
    }
}
