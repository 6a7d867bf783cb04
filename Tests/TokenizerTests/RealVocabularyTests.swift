import Foundation
import TestSupport
import Tokenizer
import XCTest

/// Checks against the real Whisper vocabularies (`scripts/fetch-models tiny.en base`; `Fixtures`).
final class RealVocabularyTests: XCTestCase {
    static let samples = [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's 42, isn't it?",
        "Café crème brûlée à la française — naïve façade",
        "Ünïcödé ÅÄÖ ß ŁŻ ǅ; Привет, как дела? Ελληνικά العربية עברית हिन्दी 日本語のテキスト",
        "Emoji: 😀👍🏽 and 🇫🇷 flags, 👨‍👩‍👧 family",
        "Numbers 3.14159, 1,000,000 and 2024-05-17 at 09:30; 50% off $19.99!",
        "  leading and   multiple   spaces \n\nnew lines\ttabs ",
        "Quotes \"double\" 'single' «guillemets» (parens) [brackets] {braces} <angles> & ampersand",
        "x\u{301}y a\u{A0}b zero\u{200B}width",
        "<|endoftext|> is text here",
        "",
    ]

    private static var cache: [String: WhisperTokenizer] = [:]

    func load(_ name: String) throws -> WhisperTokenizer {
        if let t = Self.cache[name] { return t }
        let dir = try Fixtures.modelDirectory(name)
        guard let tokenizerJSON = dir.tokenizerJSON else {
            throw Fixtures.missing("\(dir.path) has no tokenizer.json: run scripts/fetch-models \(name)")
        }
        let t = try WhisperTokenizer(vocabularyFile: dir.vocabulary, tokenizerJSON: tokenizerJSON)
        Self.cache[name] = t
        return t
    }

    func testRoundTripTinyEn() throws {
        let t = try load("tiny.en")
        for text in Self.samples {
            let ids = t.encode(text)
            XCTAssertTrue(ids.allSatisfy { $0 >= 0 && $0 < t.specials.endOfText }, text)
            XCTAssertEqual(t.decode(ids), text)
        }
    }

    func testRoundTripBase() throws {
        let t = try load("base")
        for text in Self.samples {
            let ids = t.encode(text)
            XCTAssertTrue(ids.allSatisfy { $0 >= 0 && $0 < t.specials.endOfText }, text)
            XCTAssertEqual(t.decode(ids), text)
        }
    }

    func testKnownIdsTinyEn() throws {
        let t = try load("tiny.en")
        XCTAssertEqual(t.vocabularySize, 51864)
        XCTAssertFalse(t.isMultilingual)
        XCTAssertEqual(t.encode(" the"), [262])
        XCTAssertEqual(t.token(262), "Ġthe")
        XCTAssertEqual(t.encode("The quick brown fox jumps over the lazy dog."),
                       [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13])
        XCTAssertEqual(t.encode("I'm sure they'll say it's 42, isn't it?"),
                       [40, 1101, 1654, 484, 1183, 910, 340, 338, 5433, 11, 2125, 470, 340, 30])
        XCTAssertEqual(t.specials, SpecialTokens(
            endOfText: 50256, startOfTranscript: 50257, translate: 50357, transcribe: 50358, startOfLM: 50359,
            startOfPrevious: 50360, noSpeech: 50361, noTimestamps: 50362, timestampBegin: 50363))
        XCTAssertEqual(t.token(50256), "<|endoftext|>")
        XCTAssertEqual(t.languageToken("en"), 50258)
        XCTAssertEqual(t.languageTokens, Array(50258...50356))
        // This vocabulary spells Hebrew `<|iw|>`; it is still reported as `he`.
        XCTAssertEqual(t.token(50278), "<|iw|>")
        XCTAssertEqual(t.languageToken("he"), 50278)
        XCTAssertEqual(t.languageToken("iw"), 50278)
        XCTAssertEqual(t.languageCode(forToken: 50278), "he")
        XCTAssertEqual(t.timestampToken(seconds: 1.0), 50413)
        XCTAssertEqual(t.timestampToken(seconds: 30.0), 51863)
        XCTAssertTrue(t.isTimestamp(51863))
        XCTAssertFalse(t.isTimestamp(50362))
        XCTAssertEqual(t.decode([50257, 50258, 50358, 50363, 464, 2068, 50413, 50256]), "The quick")
    }

    func testKnownIdsBase() throws {
        let t = try load("base")
        XCTAssertEqual(t.vocabularySize, 51865)
        XCTAssertTrue(t.isMultilingual)
        XCTAssertEqual(t.specials.endOfText, 50257)
        XCTAssertEqual(t.specials.startOfTranscript, 50258)
        XCTAssertEqual(t.specials.translate, 50358)
        XCTAssertEqual(t.specials.transcribe, 50359)
        XCTAssertEqual(t.specials.noSpeech, 50362)
        XCTAssertEqual(t.specials.noTimestamps, 50363)
        XCTAssertEqual(t.specials.timestampBegin, 50364)
        XCTAssertEqual(t.languageToken("en"), 50259)
        XCTAssertEqual(t.languageToken("fr"), 50265)
        XCTAssertEqual(t.languageToken("su"), 50357)
        XCTAssertNil(t.languageToken("yue"))
        XCTAssertEqual(t.languageToken("iw"), t.languageToken("he"))
        XCTAssertEqual(t.languageCode(forToken: 50265), "fr")
        XCTAssertEqual(t.languageTokens, Array(50259...50357))
        XCTAssertEqual(t.languageTokens.map { t.languageCode(forToken: $0)! },
                       Array(WhisperTokenizer.languages.prefix(99).map(\.code)))
        // The shipped tokenizer.json lacks the "Ġ t" merge; Whisper (tiktoken) gives one token.
        XCTAssertEqual(t.encode(" the"), [264])
        XCTAssertEqual(t.encode("Hello world"), [15947, 1002])
        XCTAssertEqual(t.decode([50258, 50265, 50359, 50364, 15947, 1002, 50364 + 50]), "Hello world")
    }

    func testBaseMergesFromVocabularyMatchTokenizerJSON() throws {
        let fromJSON = try load("base")
        let fromVocabulary = try WhisperTokenizer(vocabularyFile: try Fixtures.modelDirectory("base").vocabulary)
        for text in Self.samples {
            XCTAssertEqual(fromVocabulary.encode(text), fromJSON.encode(text), text)
        }
    }

    func testWordSplittingOnRealTokens() throws {
        let t = try load("base")
        let ids = t.encode(" Hello, wonderful 日本語 world!")
        let words = t.splitIntoWords(ids)
        XCTAssertEqual(words.map(\.text), [" Hello", ",", " wonderful", " 日本語", " world", "!"])
        XCTAssertEqual(words.flatMap(\.tokens), ids)
    }
}
