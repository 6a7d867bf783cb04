/// GPT-2's pre-tokenisation, the pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// written out by hand over Unicode scalars (the alternatives are tried in that order).
public enum PreTokenizer {
    private enum Kind { case letter, number, space, other }

    private static func kind(_ s: Unicode.Scalar) -> Kind {
        let p = s.properties
        if p.isWhitespace { return .space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }

    private static let contractions: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"]
        .map { Array($0.unicodeScalars) }

    /// Splits `text` into the pieces GPT-2's regex would find, in order. Concatenated they give `text`.
    public static func split(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        let kinds = scalars.map(kind)
        var pieces: [String] = []
        var i = 0
        let n = scalars.count

        func emit(_ start: Int, _ end: Int) {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars[start..<end])
            pieces.append(String(view))
        }

        while i < n {
            // 's 't 're 've 'm 'll 'd
            if scalars[i] == "'" {
                var matched = 0
                for c in contractions where i + 1 + c.count <= n {
                    if Array(scalars[(i + 1)..<(i + 1 + c.count)]) == c { matched = c.count; break }
                }
                if matched > 0 {
                    emit(i, i + 1 + matched)
                    i += 1 + matched
                    continue
                }
            }
            // ` ?` followed by a run of letters, numbers or "other".
            let body = (scalars[i] == " " && i + 1 < n && kinds[i + 1] != .space) ? i + 1 : i
            if kinds[body] != .space {
                let k = kinds[body]
                var end = body + 1
                while end < n && kinds[end] == k { end += 1 }
                emit(i, end)
                i = end
                continue
            }
            // Whitespace: `\s+(?!\S)` keeps the last space for the next word, else `\s+`.
            var end = i + 1
            while end < n && kinds[end] == .space { end += 1 }
            if end < n && end - i > 1 { end -= 1 }
            emit(i, end)
            i = end
        }
        return pieces
    }
}
