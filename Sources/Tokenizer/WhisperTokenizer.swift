import Foundation

/// Ids of Whisper's control tokens, looked up by their strings in the vocabulary.
public struct SpecialTokens: Sendable, Equatable {
    /// `<|endoftext|>`; every id below it is a text token.
    public let endOfText: Int
    /// `<|startoftranscript|>`.
    public let startOfTranscript: Int
    /// `<|translate|>`.
    public let translate: Int
    /// `<|transcribe|>`.
    public let transcribe: Int
    /// `<|startoflm|>`.
    public let startOfLM: Int
    /// `<|startofprev|>`, which introduces the previous-text prompt.
    public let startOfPrevious: Int
    /// `<|nocaptions|>` (called `<|nospeech|>` in large-v3), whose probability is the no-speech probability.
    public let noSpeech: Int
    /// `<|notimestamps|>`.
    public let noTimestamps: Int
    /// `<|0.00|>`, the first timestamp token; later ones step by 0.02 s.
    public let timestampBegin: Int

    /// Creates the set from explicit ids.
    public init(endOfText: Int, startOfTranscript: Int, translate: Int, transcribe: Int, startOfLM: Int,
                startOfPrevious: Int, noSpeech: Int, noTimestamps: Int, timestampBegin: Int) {
        self.endOfText = endOfText
        self.startOfTranscript = startOfTranscript
        self.translate = translate
        self.transcribe = transcribe
        self.startOfLM = startOfLM
        self.startOfPrevious = startOfPrevious
        self.noSpeech = noSpeech
        self.noTimestamps = noTimestamps
        self.timestampBegin = timestampBegin
    }
}

/// Whisper's byte-level BPE tokenizer over a CTranslate2 `vocabulary.txt` (one token per
/// line, line index = id) and the merges of a HuggingFace `tokenizer.json`.
///
/// Immutable after initialisation, hence safe to share between threads.
public final class WhisperTokenizer: @unchecked Sendable {
    /// Seconds per timestamp token step.
    public static let timestampStep = 0.02
    /// Size of an English-only Whisper vocabulary; multilingual ones are larger (51865 or more).
    public static let englishOnlyVocabularySize = 51864

    private let tokens: [String]
    /// Byte value -> id of its single-byte symbol.
    private let byteIDs: [Int]
    /// (left id, right id) -> (rank, merged id), for encoding.
    private let merges: MergeTable
    private let languageByToken: [Int: String]
    private let tokenByLanguage: [String: Int]

    /// Number of tokens in the vocabulary, specials and timestamps included.
    public var vocabularySize: Int { tokens.count }
    /// True when the vocabulary is larger than the English-only one (multilingual models).
    public let isMultilingual: Bool
    /// Control token ids, found by their strings.
    public let specials: SpecialTokens
    /// Language token ids in vocabulary order.
    public let languageTokens: [Int]

    /// Loads `vocabularyFile` (CTranslate2 `vocabulary.txt`). Merges are read from
    /// `tokenizerJSON` (`model.merges`) when given, else derived from the vocabulary order.
    ///
    /// Whisper itself ranks merges by vocabulary id (tiktoken). When the file's merges follow
    /// vocabulary order, any text token that no merge produces gets its merge back, derived as
    /// `init(tokens:)` does. This matters for real files: the multilingual `tokenizer.json`
    /// shipped with Whisper base lacks the first merge (`Ġ t` -> `Ġt`, id 256), without which
    /// `" the"` would encode as `["Ġ", "the"]` instead of Whisper's single token 264.
    public convenience init(vocabularyFile: String, tokenizerJSON: String? = nil) throws {
        let lines = try WhisperTokenizer.readVocabulary(vocabularyFile)
        if let tokenizerJSON {
            let merges = try WhisperTokenizer.readMerges(tokenizerJSON: tokenizerJSON)
            try self.init(tokens: lines, merges: merges, completing: true)
        } else {
            try self.init(tokens: lines, merges: [], completing: true)
        }
    }

    /// Builds a tokenizer from the vocabulary (index = id) and the ordered BPE merges
    /// (earlier merges have priority), used exactly as given. Each merge's two symbols and
    /// their concatenation must be in the vocabulary, as must the 256 byte-level symbols and
    /// Whisper's control tokens.
    public convenience init(tokens: [String], merges: [(String, String)]) throws {
        try self.init(tokens: tokens, merges: merges, completing: false)
    }

    /// Builds a tokenizer whose merges are derived from the vocabulary alone, the way Whisper's
    /// tiktoken encoding works: a text token's rank is its id, and its merge is the pair that
    /// BPE with all lower-ranked merges reduces its bytes to.
    public convenience init(tokens: [String]) throws {
        try self.init(tokens: tokens, merges: [], completing: true)
    }

    private init(tokens: [String], merges: [(String, String)], completing: Bool) throws {
        guard !tokens.isEmpty else { throw TokenizerError.emptyVocabulary }
        self.tokens = tokens
        // String -> id, for building only: decoding needs `tokens`, encoding the merges (kept as a table of ids).
        var ids: [String: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (id, token) in tokens.enumerated() where ids[token] == nil { ids[token] = id }

        var byteIDs: [Int] = []
        for byte in 0..<256 {
            let symbol = String(ByteLevel.scalarForByte[byte])
            guard let id = ids[symbol] else {
                throw TokenizerError.missingByteSymbol(byte: UInt8(byte), symbol: symbol)
            }
            byteIDs.append(id)
        }
        self.byteIDs = byteIDs

        func special(_ names: String...) throws -> Int {
            for name in names { if let id = ids[name] { return id } }
            throw TokenizerError.missingSpecialToken(names[0])
        }
        specials = SpecialTokens(
            endOfText: try special("<|endoftext|>"),
            startOfTranscript: try special("<|startoftranscript|>"),
            translate: try special("<|translate|>"),
            transcribe: try special("<|transcribe|>"),
            startOfLM: try special("<|startoflm|>"),
            startOfPrevious: try special("<|startofprev|>"),
            noSpeech: try special("<|nocaptions|>", "<|nospeech|>"),
            noTimestamps: try special("<|notimestamps|>"),
            timestampBegin: try special("<|0.00|>"))
        isMultilingual = tokens.count > WhisperTokenizer.englishOnlyVocabularySize

        var resolved: [(left: Int, right: Int, merged: Int)] = []
        resolved.reserveCapacity(merges.count)
        for (index, (left, right)) in merges.enumerated() {
            guard let l = ids[left], let r = ids[right], let m = ids[left + right] else {
                throw TokenizerError.mergeNotInVocabulary(index: index, left: left, right: right)
            }
            resolved.append((l, r, m))
        }
        // Ranks are the merged token's id when the merges follow vocabulary order (so that
        // missing merges can be slotted in), else the merge's position.
        let idOrdered = zip(resolved, resolved.dropFirst()).allSatisfy { $0.merged < $1.merged }
        let completing = completing && idOrdered
        var table: [Int: (rank: Int, merged: Int)] = [:]
        table.reserveCapacity(merges.count)
        var produced = Set<Int>()
        for (index, m) in resolved.enumerated() {
            let key = WhisperTokenizer.pairKey(m.left, m.right)
            if table[key] == nil { table[key] = (completing ? m.merged : index, m.merged) }
            produced.insert(m.merged)
        }
        if completing {
            let byteSet = Set(byteIDs)
            for id in 0..<specials.endOfText where !byteSet.contains(id) && !produced.contains(id) {
                let bytes = ByteLevel.decode(tokens[id])
                guard bytes.count >= 2 else { continue }
                let parts = WhisperTokenizer.bpe(bytes.map { byteIDs[Int($0)] }, maxRank: id) { table[$0] }
                guard parts.count == 2 else { continue }
                let key = WhisperTokenizer.pairKey(parts[0], parts[1])
                if table[key] == nil { table[key] = (id, id) }
            }
        }
        self.merges = MergeTable(table)

        var byToken: [Int: String] = [:]
        var byLanguage: [String: Int] = [:]
        for (code, _) in WhisperTokenizer.languages {
            // English-only vocabularies spell Hebrew with the older code `iw`.
            let spellings = code == "he" ? ["he", "iw"] : [code]
            if let id = spellings.lazy.compactMap({ ids["<|\($0)|>"] }).first {
                byToken[id] = code
                byLanguage[code] = id
            }
        }
        languageByToken = byToken
        tokenByLanguage = byLanguage
        languageTokens = byToken.keys.sorted()
    }

    /// Reads a CTranslate2 `vocabulary.txt`: one token per line, line index = id. Empty lines
    /// are tokens too (multilingual vocabularies have an empty token at 50256).
    public static func readVocabulary(_ path: String) throws -> [String] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerError.unreadable(path: path, reason: (error as NSError).localizedDescription)
        }
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        if lines.last == "" { lines.removeLast() }
        return lines
    }

    private static func pairKey(_ left: Int, _ right: Int) -> Int { left << 32 | right }

    /// Reads `model.merges` from a HuggingFace `tokenizer.json`; entries are either
    /// `"left right"` strings or `["left", "right"]` pairs.
    public static func readMerges(tokenizerJSON path: String) throws -> [(String, String)] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerError.unreadable(path: path, reason: (error as NSError).localizedDescription)
        }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw TokenizerError.badTokenizerJSON(path: path, reason: "invalid JSON (\((error as NSError).localizedDescription))")
        }
        guard let object = root as? [String: Any], let model = object["model"] as? [String: Any] else {
            throw TokenizerError.badTokenizerJSON(path: path, reason: "no 'model' object")
        }
        guard let list = model["merges"] as? [Any] else {
            throw TokenizerError.badTokenizerJSON(path: path, reason: "no 'model.merges' list")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(list.count)
        for (index, entry) in list.enumerated() {
            if let s = entry as? String {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw TokenizerError.badTokenizerJSON(path: path, reason: "merge \(index) '\(s)' is not two symbols separated by one space")
                }
                merges.append((String(parts[0]), String(parts[1])))
            } else if let pair = entry as? [String], pair.count == 2 {
                merges.append((pair[0], pair[1]))
            } else {
                throw TokenizerError.badTokenizerJSON(path: path, reason: "merge \(index) is neither \"a b\" nor [\"a\", \"b\"]")
            }
        }
        return merges
    }

    // MARK: - Tokens

    /// The raw vocabulary string of `id` (byte-level form for text tokens); empty when out of range.
    public func token(_ id: Int) -> String {
        tokens.indices.contains(id) ? tokens[id] : ""
    }

    /// The id of a raw vocabulary string, if present.
    /// The id of a raw vocabulary string, if present (a search of the vocabulary: for tests and tools).
    public func id(ofToken token: String) -> Int? { tokens.firstIndex(of: token) }

    /// True for `<|0.00|>` ... `<|30.00|>`.
    public func isTimestamp(_ id: Int) -> Bool {
        id >= specials.timestampBegin && id < tokens.count
    }

    /// True for ids below `<|endoftext|>`, which decode to text.
    public func isText(_ id: Int) -> Bool { id >= 0 && id < specials.endOfText }

    /// The timestamp token for `seconds`: `timestampBegin + round(seconds / 0.02)`, clamped to
    /// the vocabulary's timestamp range.
    public func timestampToken(seconds: Double) -> Int {
        let steps = (seconds / WhisperTokenizer.timestampStep).rounded()
        let last = tokens.count - 1
        guard steps.isFinite else { return steps > 0 ? last : specials.timestampBegin }
        let clamped = min(max(steps, 0), Double(last - specials.timestampBegin))
        return specials.timestampBegin + Int(clamped)
    }

    /// Seconds of a timestamp token (`(id - timestampBegin) * 0.02`), nil for other ids.
    public func seconds(ofTimestamp id: Int) -> Double? {
        isTimestamp(id) ? Double(id - specials.timestampBegin) * WhisperTokenizer.timestampStep : nil
    }

    /// The token `<|code|>` for a language code such as `fr`, if this vocabulary has it.
    /// `iw` is accepted for Hebrew (`he`), whichever spelling the vocabulary uses.
    public func languageToken(_ code: String) -> Int? {
        let code = code.lowercased()
        return tokenByLanguage[code == "iw" ? "he" : code]
    }

    /// The language code (as in `languages`) of a language token, nil for other ids.
    public func languageCode(forToken id: Int) -> String? { languageByToken[id] }

    // MARK: - Decoding

    /// The raw bytes of the text tokens in `ids`; specials, timestamps and out-of-range ids are skipped.
    public func bytes(_ ids: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids where isText(id) { out.append(contentsOf: ByteLevel.decode(tokens[id])) }
        return out
    }

    /// Text of the text tokens in `ids`; specials and timestamps are skipped and invalid UTF-8
    /// becomes U+FFFD.
    public func decode(_ ids: [Int]) -> String {
        String(decoding: bytes(ids), as: UTF8.self)
    }

    /// Groups `ids` so that each group decodes to complete UTF-8 (a character split across
    /// tokens stays in one group). Special and timestamp tokens form groups of their own with
    /// their raw vocabulary string as text. Bytes that can never form a character are flushed
    /// as U+FFFD rather than held back. Concatenating the texts of the text groups gives `decode(ids)`.
    public func splitOnUnicode(_ ids: [Int]) -> [(text: String, tokens: [Int])] {
        var groups: [(text: String, tokens: [Int])] = []
        var pendingTokens: [Int] = []
        var pendingBytes: [UInt8] = []
        func flush() {
            guard !pendingTokens.isEmpty else { return }
            groups.append((String(decoding: pendingBytes, as: UTF8.self), pendingTokens))
            pendingTokens = []
            pendingBytes = []
        }
        for id in ids {
            guard isText(id) else {
                flush()
                groups.append((token(id), [id]))
                continue
            }
            pendingTokens.append(id)
            pendingBytes.append(contentsOf: ByteLevel.decode(tokens[id]))
            if !WhisperTokenizer.endsInsideCharacter(pendingBytes) { flush() }
        }
        flush()
        return groups
    }

    /// Groups `ids` into words the way Whisper does for English word timings: a group starts at
    /// a piece beginning with a space, at a lone ASCII punctuation mark or blank piece, and at
    /// or after a special token (which is a group of its own); other pieces join the previous word.
    public func splitIntoWords(_ ids: [Int]) -> [(text: String, tokens: [Int])] {
        var words: [(text: String, tokens: [Int])] = []
        for piece in splitOnUnicode(ids) {
            let special = !isText(piece.tokens[0])
            let trimmed = piece.text.trimmingCharacters(in: .whitespacesAndNewlines)
            let punctuation = trimmed.isEmpty || trimmed.count == 1 && trimmed.unicodeScalars.allSatisfy {
                $0.isASCII && CharacterSet.punctuationCharacters.union(.symbols).contains($0)
            }
            let previousSpecial = words.last.map { !isText($0.tokens[0]) } ?? true
            if special || previousSpecial || piece.text.hasPrefix(" ") || punctuation {
                words.append(piece)
            } else {
                words[words.count - 1].text += piece.text
                words[words.count - 1].tokens += piece.tokens
            }
        }
        return words
    }

    /// True when `bytes` ends with the valid beginning of a multi-byte UTF-8 sequence that is
    /// still missing continuation bytes (so more bytes could complete the character).
    public static func endsInsideCharacter(_ bytes: [UInt8]) -> Bool {
        // Walk back over at most three continuation bytes to the lead byte.
        var i = bytes.count - 1
        var continuation = 0
        while i >= 0 && continuation < 4 && bytes[i] & 0xC0 == 0x80 {
            continuation += 1
            i -= 1
        }
        guard i >= 0 else { return false }
        let lead = bytes[i]
        let length: Int
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0...0xEF: length = 3
        case 0xF0...0xF4: length = 4
        default: return false
        }
        guard continuation < length - 1 else { return false }
        // The second byte of some sequences has a narrower range.
        if continuation >= 1 {
            let second = bytes[i + 1]
            switch lead {
            case 0xE0: if second < 0xA0 { return false }
            case 0xED: if second > 0x9F { return false }
            case 0xF0: if second < 0x90 { return false }
            case 0xF4: if second > 0x8F { return false }
            default: break
            }
        }
        return true
    }

    // MARK: - Encoding

    /// Token ids for `text`: GPT-2 pre-tokenisation, then byte-level BPE with the merges.
    /// Special-token strings in `text` are encoded as plain text, not as specials.
    public func encode(_ text: String) -> [Int] {
        var out: [Int] = []
        for piece in PreTokenizer.split(text) {
            out.append(contentsOf: WhisperTokenizer.bpe(piece.utf8.map { byteIDs[Int($0)] }) { merges[$0] })
        }
        return out
    }

    /// Applies the merges to a sequence of symbol ids: repeatedly merge every occurrence of the
    /// adjacent pair with the lowest rank (below `maxRank`), left to right, until none applies.
    private static func bpe(_ start: [Int], maxRank: Int = .max, merges: (Int) -> (rank: Int, merged: Int)?) -> [Int] {
        var symbols = start
        while symbols.count > 1 {
            var best: (rank: Int, merged: Int, left: Int, right: Int)?
            for i in 0..<(symbols.count - 1) {
                if let m = merges(pairKey(symbols[i], symbols[i + 1])), m.rank < maxRank,
                   best == nil || m.rank < best!.rank {
                    best = (m.rank, m.merged, symbols[i], symbols[i + 1])
                }
            }
            guard let pair = best else { break }
            var next: [Int] = []
            next.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == pair.left && symbols[i + 1] == pair.right {
                    next.append(pair.merged)
                    i += 2
                } else {
                    next.append(symbols[i])
                    i += 1
                }
            }
            symbols = next
        }
        return symbols
    }
}

/// The merges as two sorted arrays, looked up by binary search: 16 bytes per merge (0.8 MB for Whisper's
/// 50,000) where a dictionary of `Int` to `(Int, Int)` took 3 MB at its load factor. Encoding (prompts) is rare
/// and short, decoding never reads it, and the daemon holds the tokenizer for as long as it runs.
struct MergeTable: Sendable {
    /// Packed pair keys (`pairKey`), ascending.
    private let keys: [Int]
    /// Per key: rank in the high 32 bits, merged id in the low 32.
    private let values: [UInt64]

    init(_ table: [Int: (rank: Int, merged: Int)]) {
        let sorted = table.sorted { $0.key < $1.key }
        keys = sorted.map(\.key)
        values = sorted.map { UInt64(UInt32(truncatingIfNeeded: $0.value.rank)) << 32 | UInt64(UInt32(truncatingIfNeeded: $0.value.merged)) }
    }

    subscript(key: Int) -> (rank: Int, merged: Int)? {
        var low = 0, high = keys.count
        while low < high {
            let mid = (low + high) / 2
            if keys[mid] < key { low = mid + 1 } else { high = mid }
        }
        guard low < keys.count, keys[low] == key else { return nil }
        let v = values[low]
        return (Int(v >> 32), Int(v & 0xFFFF_FFFF))
    }
}
