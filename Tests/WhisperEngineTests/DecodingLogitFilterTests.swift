import Foundation
import XCTest
import Tokenizer
@testable import WhisperEngine

/// Each of Whisper's logit rules on hand-made logits.
final class DecodingLogitFilterTests: XCTestCase {
    // A hand-made vocabulary layout: text 0..<10, eot 10, notimestamps 11, timestamps 12..<42.
    let eot = 10, noTimestamps = 11, tb = 12, n = 42

    func flat() -> [Float] { [Float](repeating: 0, count: n) }

    /// Text at logit 0, timestamps at -10: the timestamps' total never forces a timestamp.
    func textHeavy() -> [Float] { (0..<n).map { $0 < tb ? 0 : -10 } }

    func allowed(_ row: [Float]) -> Set<Int> { Set(row.indices.filter { row[$0] > -Float.infinity }) }

    func rules(maxInitial: Int? = 5) -> TimestampRulesFilter {
        TimestampRulesFilter(endOfText: eot, noTimestamps: noTimestamps, timestampBegin: tb, maxInitialTimestampIndex: maxInitial)
    }

    func testSuppressBlankOnlyAtTheFirstSampledPosition() {
        let filter = SuppressBlankFilter(tokens: [3, eot])
        var row = flat()
        filter.apply(&row, sampled: [])
        XCTAssertEqual(allowed(row), Set(0..<n).subtracting([3, eot]))
        var later = flat()
        filter.apply(&later, sampled: [tb, 4])
        XCTAssertEqual(allowed(later), Set(0..<n))
    }

    func testSuppressTokensEverywhereAndIgnoresOutOfRange() {
        let filter = SuppressTokensFilter(tokens: [7, 2, 2, 99, -1])
        XCTAssertEqual(filter.tokens, [-1, 2, 7, 99])
        for sampled in [[], [tb, 1, 2]] {
            var row = flat()
            filter.apply(&row, sampled: sampled)
            XCTAssertEqual(allowed(row), Set(0..<n).subtracting([2, 7]))
        }
    }

    func testFirstTokenMustBeAnEarlyTimestamp() {
        var row = flat()
        rules(maxInitial: 5).apply(&row, sampled: [])
        XCTAssertEqual(allowed(row), Set(tb...(tb + 5)), "text, eot, notimestamps and late timestamps are forbidden")
        var unlimited = flat()
        rules(maxInitial: nil).apply(&unlimited, sampled: [])
        XCTAssertEqual(allowed(unlimited), Set(tb..<n))
    }

    func testNoTimestampsTokenIsAlwaysSuppressed() {
        var row = textHeavy()
        rules().apply(&row, sampled: [tb, 3, 4])
        XCTAssertEqual(row[noTimestamps], -.infinity)
        XCTAssertEqual(row[3], 0)
        XCTAssertEqual(row[tb + 3], -10)
    }

    func testAfterOpeningTimestampAndTextTheClosingTimestampMustBeLater() {
        // <|t=3|> text: text, eot, or a timestamp strictly after 3.
        var row = textHeavy()
        rules().apply(&row, sampled: [tb + 3, 1])
        XCTAssertEqual(allowed(row), Set(0...eot).union((tb + 4)..<n))
    }

    func testAfterALoneTimestampOnlyTimestampsOrEndOfText() {
        // <|3|> a <|6|>: the pair is open -> a timestamp (>= 6, a new segment may start where the
        // last ended) or eot; no text.
        var row = textHeavy()
        rules().apply(&row, sampled: [tb + 3, 1, tb + 6])
        XCTAssertEqual(allowed(row), Set([eot]).union((tb + 6)..<n))
    }

    func testAfterATimestampPairOnlyText() {
        // <|3|> a <|6|><|6|>: has to be text (or eot); timestamps are forbidden.
        var row = textHeavy()
        rules().apply(&row, sampled: [tb + 3, 1, tb + 6, tb + 6])
        XCTAssertEqual(allowed(row), Set(0...eot))
        // The very first timestamp also counts as a pair (nothing before it).
        var first = textHeavy()
        rules().apply(&first, sampled: [tb])
        XCTAssertEqual(allowed(first), Set(0...eot))
    }

    func testTimestampsNeverDecrease() {
        // <|0|> a <|4|><|4|> b: the closing timestamp must exceed 4.
        var row = textHeavy()
        rules().apply(&row, sampled: [tb, 1, tb + 4, tb + 4, 2])
        XCTAssertEqual(allowed(row), Set(0...eot).union((tb + 5)..<n))
    }

    func testTimestampIsForcedWhenTheirTotalProbabilityWins() {
        // 30 timestamps at logit 0 total log(30) ~ 3.4 > best text logit 3 -> text suppressed.
        var row = flat()
        row[2] = 3
        rules().apply(&row, sampled: [tb, 1])
        XCTAssertEqual(allowed(row).filter { $0 < tb }, [], "text and eot suppressed")
        XCTAssertEqual(allowed(row), Set((tb + 1)..<n))
        // With a text token at logit 4 (> log 30) nothing is forced.
        var text = flat()
        text[2] = 4
        rules().apply(&text, sampled: [tb, 1])
        XCTAssertTrue(allowed(text).contains(2))
        XCTAssertTrue(allowed(text).contains(eot))
    }

    func testLogitFiltersForOptions() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, _ in [] }
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [5, 6])
        let s = tokenizer.specials
        XCTAssertEqual(decoder.suppressIDsBegin, [tokenizer.encode(" ")[0], s.endOfText])
        let filters = decoder.logitFilters(options: DecodingOptions())
        XCTAssertEqual(filters.count, 3)
        let suppress = try XCTUnwrap(filters[1] as? SuppressTokensFilter)
        XCTAssertEqual(Set(suppress.tokens), Set([5, 6, s.transcribe, s.translate, s.startOfTranscript,
                                                  s.startOfPrevious, s.startOfLM, s.noSpeech]))
        let timestamps = try XCTUnwrap(filters[2] as? TimestampRulesFilter)
        XCTAssertEqual(timestamps.maxInitialTimestampIndex, 50, "1.0 s / 0.02 s")
        XCTAssertEqual(decoder.logitFilters(options: DecodingOptions(withoutTimestamps: true)).count, 2)
        XCTAssertEqual(decoder.logitFilters(options: DecodingOptions(suppressBlank: false, suppressTokens: [])).count, 1)
    }

    func testCompressionRatioMatchesPythonZlib() {
        // Values from Python: len(b) / len(zlib.compress(b)).
        XCTAssertEqual(compressionRatio(of: "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."),
                       1.3544303797468353, accuracy: 1e-12)
        XCTAssertEqual(compressionRatio(of: Array(repeating: "the", count: 20).joined(separator: " ")),
                       5.266666666666667, accuracy: 1e-12)
        XCTAssertEqual(compressionRatio(of: "héllo wörld ünïcode"), 0.71875, accuracy: 1e-12)
        XCTAssertEqual(compressionRatio(of: ""), 0)
    }

    func testLogitMath() {
        let row: [Float] = [1, 3, -.infinity, 3, 2]
        row.withUnsafeBufferPointer { r in
            XCTAssertEqual(LogitMath.argmax(r), 1)
            let top = LogitMath.topK(r, 3)
            XCTAssertEqual(top.map(\.index), [1, 3, 4])
            XCTAssertEqual(LogitMath.topK(r, 10).map(\.index), [1, 3, 4, 0, 2])
            let expected = Foundation.log(Foundation.exp(1.0) + 2 * Foundation.exp(3.0) + Foundation.exp(2.0))
            XCTAssertEqual(LogitMath.logSumExp(r, 0..<5), expected, accuracy: 1e-6)
            XCTAssertEqual(LogitMath.logSumExp(r, 2..<3), -.infinity)
        }
        var soft = row
        soft.withUnsafeMutableBufferPointer { LogitMath.logSoftmaxInPlace($0) }
        let total = soft.reduce(0.0) { $0 + Foundation.exp(Double($1)) }
        XCTAssertEqual(total, 1, accuracy: 1e-6)
        XCTAssertEqual(soft[2], -.infinity)
    }

    func testVectorisedAndScalarReductionsAgree() {
        var generator = SeededGenerator(seed: 7)
        var row = (0..<203).map { _ in Float.random(in: -40...8, using: &generator) }
        row[17] = -.infinity
        row[200] = -.infinity
        row.withUnsafeBufferPointer { r in
            for range in [0..<203, 5..<13, 3..<200, 0..<0] {
                XCTAssertEqual(LogitMath.maxVectorised(r, range), LogitMath.maxScalar(r, range))
                let m = LogitMath.maxScalar(r, range)
                guard m > -Float.infinity else { continue }
                let scalar = LogitMath.sumExpScalar(r, range, shift: m)
                XCTAssertEqual(LogitMath.sumExpVectorised(r, range, shift: m), scalar, accuracy: scalar * 1e-6)
            }
        }
        for x: Float in [0, -0.5, -1, -10, -50, -86.9] {
            XCTAssertEqual(Double(LogitMath.expNonPositive(SIMD8(repeating: x))[3]), Foundation.exp(Double(x)),
                           accuracy: Foundation.exp(Double(x)) * 1e-6)
        }
        XCTAssertEqual(LogitMath.expNonPositive(SIMD8(repeating: -.infinity))[0], 0)
        XCTAssertEqual(LogitMath.expNonPositive(SIMD8(repeating: -100))[0], 0)
    }

    func testTemperatureSamplerFollowsTheDistribution() {
        // p = (0.75, 0.25, 0) at T = 1; at T = 0.5 the odds square: 0.9 / 0.1.
        let row: [Float] = [Float(Foundation.log(0.75)), Float(Foundation.log(0.25)), -.infinity]
        var sampler = TemperatureSampler()
        var generator = SeededGenerator(seed: 42)
        for (temperature, expected) in [(1.0, 0.75), (0.5, 0.9)] {
            var counts = [0, 0, 0]
            row.withUnsafeBufferPointer { r in
                for _ in 0..<4000 { counts[sampler.sample(r, temperature: temperature, using: &generator)] += 1 }
            }
            XCTAssertEqual(counts[2], 0, "suppressed tokens are never drawn")
            XCTAssertEqual(Double(counts[0]) / 4000, expected, accuracy: 0.03)
        }
    }
}
