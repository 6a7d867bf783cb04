import Foundation
import XCTest
@testable import Tokenizer

/// A vocabulary built in the test: the 256 byte symbols in GPT-2 order, a few merged
/// symbols, then Whisper's control tokens and three timestamps.
final class HandMadeVocabularyTests: XCTestCase {
    static let byteSymbols: [String] = (0..<256).map { String(ByteLevel.scalarForByte[$0]) }
    // ids 256...264
    static let mergedSymbols = ["lo", "low", "er", "Ġl", "Ġlow", "Ġlower", "ow", "ĠlowĠ", "ÃĹ"]
    static let specialSymbols = [
        "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
        "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>",
        "<|0.00|>", "<|0.02|>", "<|0.04|>",
    ]
    static let tokens = byteSymbols + mergedSymbols + specialSymbols

    func id(_ symbol: String) -> Int { Self.tokens.firstIndex(of: symbol)! }

    func testByteToUnicodeMappingMatchesGPT2() {
        // Printable ASCII and most of Latin-1 map to themselves.
        XCTAssertEqual(ByteLevel.scalarForByte[0x21], "!")
        XCTAssertEqual(ByteLevel.scalarForByte[0x41], "A")
        XCTAssertEqual(ByteLevel.scalarForByte[0x7E], "~")
        XCTAssertEqual(ByteLevel.scalarForByte[0xA1], "¡")
        XCTAssertEqual(ByteLevel.scalarForByte[0xAC], "¬")
        XCTAssertEqual(ByteLevel.scalarForByte[0xAE], "®")
        XCTAssertEqual(ByteLevel.scalarForByte[0xFF], "ÿ")
        // The 68 others follow from U+0100 in byte order.
        XCTAssertEqual(ByteLevel.scalarForByte[0x00], "\u{100}")
        XCTAssertEqual(ByteLevel.scalarForByte[0x09], "ĉ")
        XCTAssertEqual(ByteLevel.scalarForByte[0x0A], "Ċ")
        XCTAssertEqual(ByteLevel.scalarForByte[0x20], "Ġ")
        XCTAssertEqual(ByteLevel.scalarForByte[0x7F], "ġ")
        XCTAssertEqual(ByteLevel.scalarForByte[0xA0], "ł")
        XCTAssertEqual(ByteLevel.scalarForByte[0xAD], "Ń")
        XCTAssertEqual(Set(ByteLevel.scalarForByte).count, 256)
        for b in 0..<256 { XCTAssertEqual(ByteLevel.byte(for: ByteLevel.scalarForByte[b]), UInt8(b)) }
        XCTAssertNil(ByteLevel.byte(for: "\u{144}"))
        XCTAssertEqual(ByteLevel.encode(Array(" é\n".utf8)), "ĠÃ©Ċ")
        XCTAssertEqual(ByteLevel.decode("ĠÃ©Ċ"), Array(" é\n".utf8))
    }

    func testPreTokenizerFollowsGPT2Pattern() {
        XCTAssertEqual(PreTokenizer.split("Hello world"), ["Hello", " world"])
        XCTAssertEqual(PreTokenizer.split("I'm sure they'll"), ["I", "'m", " sure", " they", "'ll"])
        XCTAssertEqual(PreTokenizer.split("Don'T 'sup"), ["Don", "'", "T", " '", "sup"])
        XCTAssertEqual(PreTokenizer.split("abc123 4.5!?"), ["abc", "123", " 4", ".", "5", "!?"])
        // A run of spaces leaves its last space to the next word; trailing spaces stay together.
        XCTAssertEqual(PreTokenizer.split("a   b  "), ["a", "  ", " b", "  "])
        XCTAssertEqual(PreTokenizer.split("a\n\nb\tc"), ["a", "\n", "\n", "b", "\t", "c"])
        XCTAssertEqual(PreTokenizer.split(" \nx"), [" ", "\n", "x"])
        XCTAssertEqual(PreTokenizer.split("naïve 日本"), ["naïve", " 日本"])
        XCTAssertEqual(PreTokenizer.split(""), [])
    }

    func testMergeOrderDecidesTheSplit() throws {
        // "er" outranks "lo": l o w e r -> l o w er -> lo w er -> low er.
        let a = try WhisperTokenizer(tokens: Self.tokens, merges: [("e", "r"), ("l", "o"), ("lo", "w")])
        XCTAssertEqual(a.encode("lower"), [id("low"), id("er")])
        // "o w" before "l o": l ow e r, and "l ow" has no merge.
        let b = try WhisperTokenizer(tokens: Self.tokens, merges: [("o", "w"), ("l", "o"), ("lo", "w")])
        XCTAssertEqual(b.encode("lower"), [id("l"), id("ow"), id("e"), id("r")])
        // With "l o" first the same text ends up as low + e + r (no "e r" merge).
        let c = try WhisperTokenizer(tokens: Self.tokens, merges: [("l", "o"), ("o", "w"), ("lo", "w")])
        XCTAssertEqual(c.encode("lower"), [id("low"), id("e"), id("r")])
    }

    func testSpaceBelongsToTheFollowingWord() throws {
        // Ranks: l o (0) < lo w (1) < e r (2) < Ġ l (3) < Ġl ow (4) < o w (5) < Ġlow er (6).
        let t = try WhisperTokenizer(tokens: Self.tokens, merges: [
            ("l", "o"), ("lo", "w"), ("e", "r"), ("Ġ", "l"), ("Ġl", "ow"), ("o", "w"), ("Ġlow", "er"),
        ])
        // Ġ l o w e r -> Ġ lo w e r -> Ġ low e r -> Ġ low er; "Ġ low" has no merge.
        XCTAssertEqual(t.encode(" lower"), [id("Ġ"), id("low"), id("er")])
        XCTAssertEqual(t.encode("low lower"), [id("low"), id("Ġ"), id("low"), id("er")])
        XCTAssertEqual(t.decode(t.encode("low lower")), "low lower")
        // Specials are not parsed: the text is encoded byte by byte.
        XCTAssertEqual(t.encode("<|en|>").count, 6)
    }

    func testMergeProducingUnknownSymbolIsRejected() {
        XCTAssertThrowsError(try WhisperTokenizer(tokens: Self.tokens, merges: [("e", "r"), ("Ġl", "o")])) { error in
            XCTAssertEqual(error as? TokenizerError, .mergeNotInVocabulary(index: 1, left: "Ġl", right: "o"))
            XCTAssertTrue("\(error)".contains("'Ġl' + 'o'"), "\(error)")
        }
    }

    func testMultibyteCharactersMergeFromBytes() throws {
        // "×" is C3 97, i.e. the byte symbols "Ã" and "Ĺ".
        let t = try WhisperTokenizer(tokens: Self.tokens, merges: [("Ã", "Ĺ")])
        XCTAssertEqual(t.encode("×"), [id("ÃĹ")])
        XCTAssertEqual(t.encode("é"), [id("Ã"), id("©")])
        XCTAssertEqual(t.decode([id("ÃĹ")]), "×")
    }

    func testDecodeSkipsSpecialsAndReplacesInvalidUTF8() throws {
        let t = try WhisperTokenizer(tokens: Self.tokens, merges: [])
        let s = t.specials
        XCTAssertEqual(t.decode([s.startOfTranscript, id("h"), id("i"), s.timestampBegin + 1, s.endOfText]), "hi")
        // A lone continuation byte, and a truncated two-byte sequence.
        XCTAssertEqual(t.decode([id("a"), id("©"), id("b")]), "a\u{FFFD}b")
        XCTAssertEqual(t.decode([id("Ã")]), "\u{FFFD}")
        XCTAssertEqual(t.token(id("Ġ")), "Ġ")
        XCTAssertEqual(t.token(-1), "")
    }

    func testSpecialsLanguagesAndTimestampsAreFoundByString() throws {
        let t = try WhisperTokenizer(tokens: Self.tokens, merges: [])
        let base = 256 + Self.mergedSymbols.count
        XCTAssertEqual(t.specials, SpecialTokens(
            endOfText: base, startOfTranscript: base + 1, translate: base + 4, transcribe: base + 5,
            startOfLM: base + 6, startOfPrevious: base + 7, noSpeech: base + 8, noTimestamps: base + 9,
            timestampBegin: base + 10))
        XCTAssertEqual(t.vocabularySize, Self.tokens.count)
        XCTAssertFalse(t.isMultilingual)
        XCTAssertEqual(t.languageTokens, [base + 2, base + 3])
        XCTAssertEqual(t.languageToken("fr"), base + 3)
        XCTAssertNil(t.languageToken("de"))
        XCTAssertEqual(t.languageCode(forToken: base + 2), "en")
        XCTAssertNil(t.languageCode(forToken: 5))
        XCTAssertTrue(t.isTimestamp(base + 12))
        XCTAssertFalse(t.isTimestamp(base + 9))
        XCTAssertEqual(t.timestampToken(seconds: 0), base + 10)
        XCTAssertEqual(t.timestampToken(seconds: 0.02), base + 11)
        XCTAssertEqual(t.timestampToken(seconds: 0.031), base + 12)
        XCTAssertEqual(t.timestampToken(seconds: 99), base + 12, "clamped to the last timestamp")
        XCTAssertEqual(t.timestampToken(seconds: -1), base + 10)
        XCTAssertEqual(t.seconds(ofTimestamp: base + 12)!, 0.04, accuracy: 1e-12)
        XCTAssertNil(t.seconds(ofTimestamp: base))
    }

    func testLanguageListIsWhispers() {
        let codes = WhisperTokenizer.languages.map(\.code)
        XCTAssertEqual(codes.count, 100)
        XCTAssertEqual(Set(codes).count, 100)
        XCTAssertEqual(Array(codes.prefix(7)), ["en", "zh", "de", "es", "ru", "ko", "fr"])
        XCTAssertEqual(Array(codes.suffix(4)), ["ba", "jw", "su", "yue"])
        XCTAssertEqual(WhisperTokenizer.languages[6].name, "french")
    }

    func testMissingPiecesAreReported() {
        XCTAssertThrowsError(try WhisperTokenizer(tokens: Array(Self.tokens.dropLast(3)), merges: [])) { error in
            XCTAssertEqual(error as? TokenizerError, .missingSpecialToken("<|0.00|>"))
        }
        XCTAssertThrowsError(try WhisperTokenizer(tokens: Array(Self.tokens.dropFirst()), merges: [])) { error in
            XCTAssertEqual(error as? TokenizerError, .missingByteSymbol(byte: 0, symbol: "\u{100}"))
        }
        XCTAssertThrowsError(try WhisperTokenizer(tokens: [], merges: [])) { error in
            XCTAssertEqual(error as? TokenizerError, .emptyVocabulary)
        }
    }

    func testMergesDerivedFromVocabularyOrder() throws {
        // Without merges a token's rank is its id, and its merge is the pair that the lower
        // ranks reduce its bytes to: lo=l+o, low=lo+w, er, Ġl, Ġlow=Ġ+low (not Ġl+ow: "lo"
        // outranks "Ġl"), Ġlower=Ġlow+er, ow.
        let t = try WhisperTokenizer(tokens: Self.tokens)
        XCTAssertEqual(t.encode("lower"), [id("low"), id("er")])
        XCTAssertEqual(t.encode(" low"), [id("Ġlow")])
        XCTAssertEqual(t.encode(" lower"), [id("Ġlower")])
        XCTAssertEqual(t.encode("owl"), [id("ow"), id("l")])
        XCTAssertEqual(t.encode("×"), [id("ÃĹ")])
    }

    func testFilesAreReadAndMergesParsedInBothLayouts() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let vocab = dir.appendingPathComponent("vocabulary.txt").path
        try (Self.tokens.joined(separator: "\n") + "\n").write(toFile: vocab, atomically: true, encoding: .utf8)
        let strings = dir.appendingPathComponent("strings.json").path
        try #"{"model": {"type": "BPE", "merges": ["l o", "lo w", "e r"]}}"#
            .write(toFile: strings, atomically: true, encoding: .utf8)
        let pairs = dir.appendingPathComponent("pairs.json").path
        try #"{"model": {"merges": [["o", "w"], ["l", "o"]]}}"#.write(toFile: pairs, atomically: true, encoding: .utf8)

        let a = try WhisperTokenizer(vocabularyFile: vocab, tokenizerJSON: strings)
        XCTAssertEqual(a.vocabularySize, Self.tokens.count)
        XCTAssertEqual(a.encode("lower"), [id("low"), id("er")])
        // The file's merges follow vocabulary order, so tokens no merge produces get theirs
        // back: Ġlow = Ġ+low comes from the vocabulary.
        XCTAssertEqual(a.encode(" low"), [id("Ġlow")])
        let listed = try WhisperTokenizer.readMerges(tokenizerJSON: pairs)
        XCTAssertEqual(listed.map { [$0.0, $0.1] }, [["o", "w"], ["l", "o"]])
        // Out of vocabulary order: used exactly as given ("o w" first), nothing added.
        let b = try WhisperTokenizer(vocabularyFile: vocab, tokenizerJSON: pairs)
        XCTAssertEqual(b.encode("lower"), [id("l"), id("ow"), id("e"), id("r")])

        let bad = dir.appendingPathComponent("bad.json").path
        try #"{"model": {"merges": ["a b c"]}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try WhisperTokenizer(vocabularyFile: vocab, tokenizerJSON: bad)) { error in
            guard case .badTokenizerJSON(let path, _)? = error as? TokenizerError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, bad)
            XCTAssertTrue("\(error)".contains(bad))
        }
        let missing = dir.appendingPathComponent("nope.txt").path
        XCTAssertThrowsError(try WhisperTokenizer(vocabularyFile: missing)) { error in
            guard case .unreadable(let path, _)? = error as? TokenizerError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, missing)
        }
    }

    func testSplittingKeepsCharactersWhole() throws {
        let t = try WhisperTokenizer(tokens: Self.tokens, merges: [])
        // "é" is two byte tokens and "😀" four; each must stay in one group.
        let ids = t.encode("aé 😀!")
        let groups = t.splitOnUnicode(ids)
        XCTAssertEqual(groups.map(\.text), ["a", "é", " ", "😀", "!"])
        XCTAssertEqual(groups.flatMap(\.tokens), ids)
        XCTAssertEqual(t.splitIntoWords(ids).map(\.text), ["aé", " 😀", "!"])
        let s = t.specials
        XCTAssertEqual(t.splitIntoWords([s.timestampBegin, id("a"), id("b"), s.timestampBegin + 1]).map(\.text),
                       ["<|0.00|>", "ab", "<|0.02|>"])
        XCTAssertTrue(WhisperTokenizer.endsInsideCharacter([0x61, 0xF0, 0x9F]))
        XCTAssertFalse(WhisperTokenizer.endsInsideCharacter([0xF0, 0x9F, 0x98, 0x80]))
        XCTAssertFalse(WhisperTokenizer.endsInsideCharacter([0x80]), "a stray continuation byte never completes")
        XCTAssertFalse(WhisperTokenizer.endsInsideCharacter([0xE0, 0x80]), "E0 80 is not a valid prefix")
    }
}
