import Foundation

/// Turns spelled-out English numbers into digits, the number step of ``EnglishTextNormalizer``.
///
/// Expects lower-case text whose punctuation is already gone (``EnglishTextNormalizer`` does that
/// first). Handles:
/// - cardinals: "twenty one" → 21, "one hundred and five" → 105, "two thousand and twenty" → 2020,
///   "three million two hundred thousand" → 3200000;
/// - runs read digit by digit or in pairs: "one two three" → 123, "nineteen ninety nine" → 1999,
///   "double seven" → 77, "oh seven" → 07 ("oh"/"o" are zeros only next to another number word);
/// - ordinals and plurals: "first" → 1st, "twenty first" → 21st, "hundredth" → 100th,
///   "the nineties" → 90s, "sixes" → 6s;
/// - decimals: "two point five" → 2.5, "three and a half" → 3.5, "half a million" → 500000;
/// - signs, currency and percent: "minus five" → -5, "twenty dollars" → $20,
///   "five dollars and ten cents" → $5.10, "ten percent" / "ten per cent" → 10%;
/// - a lone "one" (or the digit 1) is written "one", and "ones" stays "ones", as Whisper does,
///   because "one" is more often a pronoun than a number.
public struct EnglishNumberNormalizer: Sendable {
    /// Creates the normaliser; it holds only constant tables.
    public init() {}

    /// Returns `text` with spelled-out numbers replaced by digits.
    public func normalize(_ text: String) -> String {
        var s = text
        for rule in Self.boundaryRules { s = rule.apply(s) }
        var words = s.split(whereSeparator: { $0.isWhitespace }).map(String.init)
        words = Self.rewriteHalves(words)
        return postprocess(process(words).joined(separator: " "))
    }

    // MARK: - Vocabulary

    static let onesNames = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    ]
    static let ones: [String: Int] = Dictionary(
        uniqueKeysWithValues: onesNames.enumerated().map { ($0.element, $0.offset + 1) })
    static let zeros: Set<String> = ["zero", "oh", "o"]
    /// Words that stand for 0 only next to another number word ("oh seven", not "oh well").
    static let contextualZeros: Set<String> = ["oh", "o"]

    static let onesSuffixed: [String: (Int, String)] = {
        var table: [String: (Int, String)] = [:]
        for (name, value) in ones {
            table[name == "six" ? "sixes" : name + "s"] = (value, "s")
        }
        let irregular: [String: Int] = ["first": 1, "second": 2, "third": 3, "fifth": 5, "eighth": 8,
                                        "ninth": 9, "twelfth": 12]
        for (name, value) in ones where !irregular.values.contains(value) {
            table[name + "th"] = (value, "th")
        }
        for (name, value) in irregular {
            let suffix = value == 1 ? "st" : value == 2 ? "nd" : value == 3 ? "rd" : "th"
            table[name] = (value, suffix)
        }
        table["zeroth"] = (0, "th")
        return table
    }()

    static let tens: [String: Int] = [
        "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
        "eighty": 80, "ninety": 90,
    ]
    static let tensSuffixed: [String: (Int, String)] = {
        var table: [String: (Int, String)] = [:]
        for (name, value) in tens {
            let stem = String(name.dropLast())  // "twent"
            table[stem + "ies"] = (value, "s")
            table[stem + "ieth"] = (value, "th")
        }
        return table
    }()

    static let multipliers: [String: Int] = [
        "hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000,
        "trillion": 1_000_000_000_000, "quadrillion": 1_000_000_000_000_000,
        "quintillion": 1_000_000_000_000_000_000,
    ]
    static let multipliersSuffixed: [String: (Int, String)] = {
        var table: [String: (Int, String)] = [:]
        for (name, value) in multipliers {
            table[name + "s"] = (value, "s")
            table[name + "th"] = (value, "th")
        }
        return table
    }()

    static let precedingPrefixers: [String: String] = ["minus": "-", "negative": "-", "plus": "+", "positive": "+"]
    static let followingPrefixers: [String: String] = [
        "pound": "£", "pounds": "£", "euro": "€", "euros": "€", "dollar": "$", "dollars": "$",
        "cent": "¢", "cents": "¢",
    ]
    static let prefixSymbols: Set<Character> = ["-", "+", "£", "€", "$", "¢"]
    static let specials: Set<String> = ["and", "double", "triple", "point", "per", "percent"]

    static let vocabulary: Set<String> = {
        var all = Set<String>()
        all.formUnion(zeros); all.formUnion(ones.keys); all.formUnion(onesSuffixed.keys)
        all.formUnion(tens.keys); all.formUnion(tensSuffixed.keys)
        all.formUnion(multipliers.keys); all.formUnion(multipliersSuffixed.keys)
        all.formUnion(precedingPrefixers.keys); all.formUnion(followingPrefixers.keys)
        all.formUnion(specials)
        return all
    }()

    /// Words that may follow "point".
    static let decimalWords: Set<String> = Set(ones.keys).union(tens.keys).union(zeros)

    static let arabic = RegexRewrite(#"[0-9]+(\.[0-9]+)?"#, "")

    static func isArabic(_ word: String) -> Bool { arabic.matchesWhole(word) }

    /// Whether `word` is a number word other than the connectors (and, point, percent, currencies).
    static func isCoreNumber(_ word: String?) -> Bool {
        guard let word else { return false }
        return ones[word] != nil || tens[word] != nil || multipliers[word] != nil || word == "zero"
            || onesSuffixed[word] != nil || tensSuffixed[word] != nil || isArabic(word)
    }

    // MARK: - Preprocessing

    static let boundaryRules: [RegexRewrite] = [
        RegexRewrite(#"([a-z])([0-9])"#, "$1 $2"),               // "covid19" -> "covid 19"
        RegexRewrite(#"([0-9])([a-z])"#, "$1 $2"),               // "5pm" -> "5 pm"
        RegexRewrite(#"([0-9])\s+(st|nd|rd|th|s)\b"#, "$1$2"),   // but keep "21st", "1990s"
    ]

    /// "three and a half" → "three point five"; "half a million" / "a half million" → "0.5 million".
    static func rewriteHalves(_ words: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < words.count {
            let w = words[i]
            if w == "and", i + 2 < words.count, words[i + 1] == "a", words[i + 2] == "half",
               let last = out.last, decimalWords.contains(last) || multipliers[last] != nil || isArabic(last) {
                out += ["point", "five"]
                i += 3
                continue
            }
            if w == "half", i + 2 < words.count, words[i + 1] == "a", multipliers[words[i + 2]] != nil {
                out += ["0.5", words[i + 2]]
                i += 3
                continue
            }
            if w == "half", i + 1 < words.count, multipliers[words[i + 1]] != nil {
                if out.last == "a" { out.removeLast() }
                out += ["0.5", words[i + 1]]
                i += 2
                continue
            }
            out.append(w)
            i += 1
        }
        return out
    }

    // MARK: - The number reader

    /// A number being read: an exact integer, or a string of digits (read digit by digit, or a decimal).
    enum Value {
        case integer(Int)
        case digits(String)

        var text: String {
            switch self {
            case .integer(let i): return String(i)
            case .digits(let d): return d
            }
        }
    }

    /// Multiplies a decimal digit string by `factor` if the product is a whole number.
    static func wholeProduct(_ digits: String, _ factor: Int) -> Int? {
        let parts = digits.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = Int(parts[0].isEmpty ? "0" : String(parts[0])) else { return nil }
        var numerator = whole
        var denominator = 1
        if parts.count == 2 {
            let fraction = parts[1]
            guard !fraction.isEmpty, fraction.count <= 9, let f = Int(fraction) else { return nil }
            for _ in 0..<fraction.count { denominator *= 10 }
            let (scaled, o1) = whole.multipliedReportingOverflow(by: denominator)
            let (sum, o2) = scaled.addingReportingOverflow(f)
            guard !o1, !o2 else { return nil }
            numerator = sum
        }
        let (product, overflow) = numerator.multipliedReportingOverflow(by: factor)
        guard !overflow, product % denominator == 0 else { return nil }
        return product / denominator
    }

    /// `value` followed by a multiplier: "two hundred", "one million three hundred thousand".
    static func scaled(_ value: Int, by multiplier: Int) -> Int? {
        let before = value / 1000 * 1000
        let (product, o1) = (value % 1000).multipliedReportingOverflow(by: multiplier)
        let (sum, o2) = before.addingReportingOverflow(product)
        return o1 || o2 ? nil : sum
    }

    /// `value` followed by a word worth `n` (1-19 when `isOnes`, else 20-90 tens).
    static func appending(_ value: Value?, _ n: Int, isOnes: Bool, previous: String?) -> Value {
        guard let value else { return .integer(n) }
        let previousIsOnes = previous.map { ones[$0] != nil } ?? false
        let previousIsTens = previous.map { tens[$0] != nil } ?? false
        switch value {
        case .integer(let i) where !(isOnes && previousIsOnes):
            let unit = (isOnes && n < 10) ? 10 : 100
            if i % unit == 0 { return .integer(i + n) }
            return .digits(String(i) + String(n))
        default:
            let text = value.text
            if isOnes, previousIsTens, n < 10, text.hasSuffix("0") {
                return .digits(String(text.dropLast()) + String(n))  // "nineteen ninety nine"
            }
            return .digits(text + String(n))
        }
    }

    func process(_ words: [String]) -> [String] {
        var out: [String] = []
        var value: Value?
        var prefix: (symbol: String, word: String)?
        var skipNext = false

        func flush(suffix: String = "") {
            if let v = value {
                out.append((prefix?.symbol ?? "") + v.text + suffix)
                prefix = nil
            }
            value = nil
        }
        func emitWord(_ word: String) {
            flush()
            if let p = prefix { out.append(p.word); prefix = nil }
            out.append(word)
        }
        func emitNumber(_ text: String) {
            value = nil
            out.append((prefix?.symbol ?? "") + text)
            prefix = nil
        }

        for index in words.indices {
            if skipNext { skipNext = false; continue }
            let word = words[index]
            let previous = index > 0 ? words[index - 1] : nil
            let next = index + 1 < words.count ? words[index + 1] : nil

            // digits, possibly after a sign or currency symbol: "$20", "-3", "2.5"
            if let first = word.first, Self.prefixSymbols.contains(first), Self.isArabic(String(word.dropFirst())) {
                let body = String(word.dropFirst())
                flush()
                prefix = (String(first), String(first))
                value = body.contains(".") ? .digits(body) : (Int(body).map(Value.integer) ?? .digits(body))
                continue
            }
            if Self.isArabic(word) {
                if case .digits(let d)? = value, d.hasSuffix(".") {
                    value = .digits(d + word)  // "two point 5", "192.168" pieces
                    continue
                }
                flush()
                value = word.contains(".") ? .digits(word) : (Int(word).map(Value.integer) ?? .digits(word))
                continue
            }
            guard Self.vocabulary.contains(word) else {
                emitWord(word)
                continue
            }
            if Self.zeros.contains(word) {
                if Self.contextualZeros.contains(word), !Self.isCoreNumber(previous), !Self.isCoreNumber(next),
                   value == nil {
                    emitWord(word)
                } else {
                    value = .digits((value?.text ?? "") + "0")
                }
            } else if let n = Self.ones[word] {
                value = Self.appending(value, n, isOnes: true, previous: previous)
            } else if let (n, suffix) = Self.onesSuffixed[word] {
                emitNumber(Self.appending(value, n, isOnes: true, previous: previous).text + suffix)
            } else if let t = Self.tens[word] {
                value = Self.appending(value, t, isOnes: false, previous: previous)
            } else if let (t, suffix) = Self.tensSuffixed[word] {
                emitNumber(Self.appending(value, t, isOnes: false, previous: previous).text + suffix)
            } else if let m = Self.multipliers[word] {
                switch value {
                case nil:
                    value = .integer(m)
                case .integer(let i)? where i != 0:
                    if let s = Self.scaled(i, by: m) { value = .integer(s) } else { flush(); value = .integer(m) }
                case let v?:
                    if let p = Self.wholeProduct(v.text, m) { value = .integer(p) } else { flush(); value = .integer(m) }
                }
            } else if let (m, suffix) = Self.multipliersSuffixed[word] {
                switch value {
                case nil:
                    emitNumber(String(m) + suffix)
                case .integer(let i)? where i != 0:
                    if let s = Self.scaled(i, by: m) { emitNumber(String(s) + suffix) } else { flush(); emitNumber(String(m) + suffix) }
                case let v?:
                    if let p = Self.wholeProduct(v.text, m) { emitNumber(String(p) + suffix) } else { flush(); emitNumber(String(m) + suffix) }
                }
            } else if let symbol = Self.precedingPrefixers[word] {
                flush()
                if Self.isCoreNumber(next) {
                    prefix = (symbol, word)
                } else {
                    emitWord(word)
                }
            } else if let symbol = Self.followingPrefixers[word] {
                if value != nil {
                    prefix = (symbol, prefix?.word ?? word)
                    flush()
                } else {
                    emitWord(word)
                }
            } else if word == "percent" {
                if value != nil { flush(suffix: "%") } else { emitWord(word) }
            } else if word == "per" {
                if value != nil, next == "cent" {
                    flush(suffix: "%")
                    skipNext = true
                } else {
                    emitWord(word)
                }
            } else if word == "and" {
                // "one hundred and five": drop "and" between a multiplier and more of the number
                let afterMultiplier = previous.map { Self.multipliers[$0] != nil } ?? false
                if !(afterMultiplier && value != nil && Self.isCoreNumber(next)) {
                    emitWord(word)
                }
            } else if word == "double" || word == "triple" {
                if let next, let digit = Self.ones[next].map({ $0 < 10 ? $0 : nil }) ?? (Self.zeros.contains(next) ? 0 : nil) {
                    let repeats = word == "double" ? 2 : 3
                    value = .digits((value?.text ?? "") + String(repeating: String(digit), count: repeats))
                    skipNext = true
                } else {
                    emitWord(word)
                }
            } else if word == "point" {
                if let next, Self.decimalWords.contains(next) || Self.isArabic(next) {
                    value = .digits((value?.text ?? "") + ".")
                } else {
                    emitWord(word)
                }
            } else {
                emitWord(word)
            }
        }
        flush()
        if let p = prefix { out.append(p.word) }
        return out
    }

    // MARK: - Postprocessing

    static let dollarsAndCents = RegexRewrite(#"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b"#, "")
    static let zeroWithCents = RegexRewrite(#"[€£$]0\.([0-9]{1,2})\b"#, "")
    static let loneOne = RegexRewrite(#"(?<![\w.$£€¢+\-])1(s?)(?![\w%]|\.[0-9])"#, "one$1")

    /// Rewrites every match of `rule` with `transform`, which receives the capture groups.
    static func rewrite(_ text: String, _ rule: RegexRewrite, _ transform: ([String]) -> String) -> String {
        let ns = text as NSString
        var result = ""
        var cursor = 0
        for m in rule.regex.matches(in: text, range: NSRange(location: 0, length: ns.length)) {
            result += ns.substring(with: NSRange(location: cursor, length: m.range.location - cursor))
            let groups = (0..<m.numberOfRanges).map { g -> String in
                let r = m.range(at: g)
                return r.location == NSNotFound ? "" : ns.substring(with: r)
            }
            result += transform(groups)
            cursor = m.range.location + m.range.length
        }
        result += ns.substring(from: cursor)
        return result
    }

    func postprocess(_ text: String) -> String {
        // "$5 and ¢10" -> "$5.10"
        var s = Self.rewrite(text, Self.dollarsAndCents) { g in
            let cents = Int(g[3]) ?? 0
            return g[1] + g[2] + "." + (cents < 10 ? "0" : "") + String(cents)
        }
        // "$0.5" -> "¢50", "$0.05" -> "¢5"
        s = Self.rewrite(s, Self.zeroWithCents) { g in
            let cents = (Int(g[1]) ?? 0) * (g[1].count == 1 ? 10 : 1)
            return "¢" + String(cents)
        }
        return Self.loneOne.apply(s)
    }
}
