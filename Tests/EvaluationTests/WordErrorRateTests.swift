import XCTest
@testable import Evaluation

final class WordErrorRateTests: XCTestCase {
    func words(_ s: String) -> [String] { s.split(separator: " ").map(String.init) }

    func align(_ ref: String, _ hyp: String) -> WordErrorCounts {
        WordErrorRate.align(reference: words(ref), hypothesis: words(hyp)).counts
    }

    func testIdentical() {
        let c = align("the cat sat on the mat", "the cat sat on the mat")
        XCTAssertEqual(c, WordErrorCounts(substitutions: 0, deletions: 0, insertions: 0, referenceWords: 6))
        XCTAssertEqual(c.wordErrorRate, 0)
        XCTAssertEqual(c.hits, 6)
    }

    func testBothEmpty() {
        let c = align("", "")
        XCTAssertEqual(c, .zero)
        XCTAssertEqual(c.wordErrorRate, 0)
    }

    func testEmptyReference() {
        let c = align("", "hello there")
        XCTAssertEqual(c, WordErrorCounts(substitutions: 0, deletions: 0, insertions: 2, referenceWords: 0))
        XCTAssertEqual(c.wordErrorRate, .infinity)
        XCTAssertTrue(c.description.contains("inf"))
    }

    func testEmptyHypothesis() {
        let c = align("a b c", "")
        XCTAssertEqual(c, WordErrorCounts(substitutions: 0, deletions: 3, insertions: 0, referenceWords: 3))
        XCTAssertEqual(c.wordErrorRate, 1)
    }

    func testSubstitutionAndDeletion() {
        // sat -> sit (S), second "the" dropped (D)
        let c = align("the cat sat on the mat", "the cat sit on mat")
        XCTAssertEqual(c, WordErrorCounts(substitutions: 1, deletions: 1, insertions: 0, referenceWords: 6))
        XCTAssertEqual(c.wordErrorRate, 2.0 / 6.0, accuracy: 1e-12)
        XCTAssertEqual(c.description, "WER 33.33% (S=1 D=1 I=0, N=6)")
    }

    func testInsertions() {
        let c = align("a b c d", "a x b c d e")
        XCTAssertEqual(c, WordErrorCounts(substitutions: 0, deletions: 0, insertions: 2, referenceWords: 4))
        XCTAssertEqual(c.wordErrorRate, 0.5)
    }

    func testWerCanExceedOne() {
        let c = align("yes", "no no no")
        XCTAssertEqual(c.errors, 3)
        XCTAssertEqual(c.substitutions, 1)
        XCTAssertEqual(c.insertions, 2)
        XCTAssertEqual(c.wordErrorRate, 3)
    }

    func testMixedKnownCounts() {
        // ref: i went to the store yesterday
        // hyp: i want to store yesterday evening
        // went->want (S), "the" (D), "evening" (I)
        let c = align("i went to the store yesterday", "i want to store yesterday evening")
        XCTAssertEqual(c, WordErrorCounts(substitutions: 1, deletions: 1, insertions: 1, referenceWords: 6))
    }

    func testAlignmentSteps() {
        let a = WordErrorRate.align(reference: words("a b c"), hypothesis: words("a x c d"))
        XCTAssertEqual(a.steps, [.match("a"), .substitution(reference: "b", hypothesis: "x"), .match("c"),
                                 .insertion("d")])
        let d = WordErrorRate.align(reference: words("a b c"), hypothesis: words("a c"))
        XCTAssertEqual(d.steps, [.match("a"), .deletion("b"), .match("c")])
    }

    func testSwapIsTwoEdits() {
        XCTAssertEqual(align("a b", "b a").errors, 2)
    }

    func testNormalisedCounts() {
        let c = WordErrorRate.counts(reference: "He paid twenty-one dollars for the colour TV.",
                                     hypothesis: "he paid $21 for the color tv")
        XCTAssertEqual(c, WordErrorCounts(referenceWords: 7))  // he paid $21 for the color tv
        // Without normalisation case and punctuation count as errors: "Hello," vs "hello".
        let raw = WordErrorRate.counts(reference: "Hello, world", hypothesis: "hello world", normalizer: nil)
        XCTAssertEqual(raw, WordErrorCounts(substitutions: 1, referenceWords: 2))
    }

    func testCorpusSumsEditsNotRates() {
        let pairs: [(reference: String, hypothesis: String)] = [
            ("a b c", "a b c"),  // 0 of 3
            ("d e", "d"),        // 1 of 2
        ]
        let total = WordErrorRate.corpus(pairs, normalizer: nil)
        XCTAssertEqual(total, WordErrorCounts(substitutions: 0, deletions: 1, insertions: 0, referenceWords: 5))
        XCTAssertEqual(total.wordErrorRate, 0.2, accuracy: 1e-12)  // not the mean of 0 and 0.5
    }

    func testAddition() {
        var sum = WordErrorCounts(substitutions: 1, deletions: 2, insertions: 3, referenceWords: 10)
        sum += WordErrorCounts(substitutions: 4, deletions: 0, insertions: 1, referenceWords: 5)
        XCTAssertEqual(sum, WordErrorCounts(substitutions: 5, deletions: 2, insertions: 4, referenceWords: 15))
        XCTAssertEqual(sum.errors, 11)
        XCTAssertEqual(sum.hits, 8)
    }
}
