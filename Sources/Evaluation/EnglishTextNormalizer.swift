import Foundation

/// Normalises English text before scoring, in the manner of Whisper's English text normaliser,
/// so that formatting differences (case, punctuation, "twenty one" vs "21", "colour" vs "color",
/// "won't" vs "will not") do not count as recognition errors.
///
/// Apply it to both the reference and the hypothesis. The steps, in order:
/// 1. curly apostrophes become straight ones; the text is lower-cased;
/// 2. text between `[...]`, `<...>` and `(...)` is removed;
/// 3. filler words are removed: hmm, mm, mhm, mmm, uh, um;
/// 4. contractions and abbreviated titles are expanded: won't → will not, can't → can not,
///    let's → let us, n't → not, 're → are, 's → is (as Whisper does, possessives included),
///    's been → has been, 'd → would, 'd been → had been, 'll → will, 've → have, 'm → am,
///    gonna → going to, mr → mister, dr → doctor, st → saint, …;
/// 5. commas between digits and full stops not followed by a digit are removed;
/// 6. diacritics are stripped (é → e, ß → ss, æ → ae, ø → o, …) and every other punctuation mark
///    or symbol becomes a space, except the numeric symbols `. % $ ¢ € £` (apostrophes go too);
/// 7. spelled-out numbers become digits (``EnglishNumberNormalizer``);
/// 8. British spellings become American ones (``EnglishSpellings``);
/// 9. currency and percent signs are attached to their numbers, stray ones removed;
/// 10. whitespace is collapsed and trimmed.
public struct EnglishTextNormalizer: Sendable {
    /// The number step, exposed for callers that only want digits.
    public let numbers = EnglishNumberNormalizer()

    /// Creates a normaliser; it holds only compiled patterns and tables and can be shared.
    public init() {}

    /// Returns the normalised form of `text`: lower-case words separated by single spaces.
    public func normalize(_ text: String) -> String {
        var s = text
            .replacingOccurrences(of: "\u{2019}", with: "'")
            .replacingOccurrences(of: "\u{2018}", with: "'")
            .replacingOccurrences(of: "\u{02BC}", with: "'")
            .lowercased()
        for rule in Self.earlyRules { s = rule.apply(s) }
        for rule in Self.contractions { s = rule.apply(s) }
        s = Self.digitComma.applyRepeatedly(s)
        s = Self.sentencePeriod.applyRepeatedly(s)
        s = Self.removeSymbolsAndDiacritics(s, keep: Self.numericSymbols)
        s = numbers.normalize(s)
        s = EnglishSpellings.americanize(s)
        for rule in Self.lateRules { s = rule.apply(s) }
        return s.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }

    /// Same as ``normalize(_:)``.
    public func callAsFunction(_ text: String) -> String { normalize(text) }

    /// The symbols that survive symbol removal because they may belong to a number.
    static let numericSymbols: Set<Unicode.Scalar> = [".", "%", "$", "¢", "€", "£"]

    /// Letters that Unicode decomposition does not split into a base letter and a mark.
    static let extraDiacritics: [Unicode.Scalar: String] = [
        "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "ẞ": "SS",
        "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "th", "ł": "l", "Ł": "L",
    ]

    /// Decomposes `text` (NFKD), drops combining marks, maps the letters of ``extraDiacritics``,
    /// and replaces every other mark, symbol or punctuation character not in `keep` with a space.
    public static func removeSymbolsAndDiacritics(_ text: String, keep: Set<Unicode.Scalar> = []) -> String {
        var out = String.UnicodeScalarView()
        for scalar in text.decomposedStringWithCompatibilityMapping.unicodeScalars {
            if keep.contains(scalar) {
                out.append(scalar)
            } else if let mapped = extraDiacritics[scalar] {
                out.append(contentsOf: mapped.unicodeScalars)
            } else {
                switch scalar.properties.generalCategory {
                case .nonspacingMark:
                    continue
                case .spacingMark, .enclosingMark,
                     .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol,
                     .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
                     .initialPunctuation, .finalPunctuation, .otherPunctuation:
                    out.append(" ")
                default:
                    out.append(scalar)
                }
            }
        }
        return String(out)
    }

    static let earlyRules: [RegexRewrite] = [
        RegexRewrite(#"[<\[][^>\]]*[>\]]"#, ""),       // [noise], <unk>
        RegexRewrite(#"\([^)]+?\)"#, ""),              // (laughs)
        RegexRewrite(#"\b(?:hmm|mm|mhm|mmm|uh|um)\b"#, ""),
        RegexRewrite(#"\s+'"#, "'"),                   // "it 's" -> "it's"
    ]

    static let contractions: [RegexRewrite] = {
        let whole: [(String, String)] = [
            ("won't", "will not"), ("can't", "can not"), ("let's", "let us"), ("ain't", "aint"),
            ("y'all", "you all"), ("wanna", "want to"), ("gotta", "got to"), ("gonna", "going to"),
            ("i'ma", "i am going to"), ("imma", "i am going to"), ("woulda", "would have"),
            ("coulda", "could have"), ("shoulda", "should have"), ("ma'am", "madam"),
            // abbreviated titles (the full stop is gone by the time numbers are read)
            ("mr", "mister "), ("mrs", "missus "), ("st", "saint "), ("dr", "doctor "),
            ("prof", "professor "), ("capt", "captain "), ("gov", "governor "), ("ald", "alderman "),
            ("gen", "general "), ("sen", "senator "), ("rep", "representative "),
            ("pres", "president "), ("rev", "reverend "), ("hon", "honorable "),
            ("asst", "assistant "), ("assoc", "associate "), ("lt", "lieutenant "),
            ("col", "colonel "), ("jr", "junior "), ("sr", "senior "), ("esq", "esquire "),
        ]
        let suffixes: [(String, String)] = [
            // perfect tenses first: "'s been" is "has been", not "is been"
            ("'d been", " had been"), ("'s been", " has been"), ("'d gone", " had gone"),
            ("'s gone", " has gone"), ("'d done", " had done"), ("'s got", " has got"),
            ("n't", " not"), ("'re", " are"), ("'s", " is"), ("'d", " would"), ("'ll", " will"),
            ("'t", " not"), ("'ve", " have"), ("'m", " am"),
        ]
        // "st" after a number is an ordinal suffix ("21 st"), not "saint"
        return whole.map { word, replacement in
            let guardDigit = word == "st" ? #"(?<![0-9] )(?<![0-9])"# : ""
            return RegexRewrite(guardDigit + #"\b"# + NSRegularExpression.escapedPattern(for: word) + #"\b"#, replacement)
        }
            + suffixes.map { RegexRewrite(NSRegularExpression.escapedPattern(for: $0.0) + #"\b"#, $0.1) }
    }()

    static let digitComma = RegexRewrite(#"(\d),(\d)"#, "$1$2")
    static let sentencePeriod = RegexRewrite(#"\.([^0-9]|$)"#, " $1")

    static let lateRules: [RegexRewrite] = [
        RegexRewrite(#"([$¢€£])\s+([0-9])"#, "$1$2"),  // "$ 5" -> "$5"
        RegexRewrite(#"([0-9])\s+%"#, "$1%"),          // "5 %" -> "5%"
        RegexRewrite(#"[.$¢€£]([^0-9]|$)"#, " $1"),    // symbols not before a digit
        RegexRewrite(#"(^|[^0-9])%"#, "$1 "),          // percent not after a digit
    ]
}
