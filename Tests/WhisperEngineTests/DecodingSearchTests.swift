import Foundation
import XCTest
import Tokenizer
@testable import WhisperEngine

/// Greedy decoding, beam search, patience, length normalisation, sampling, the start
/// sequence, the no-speech probability and language detection on scripted models.
final class DecodingSearchTests: XCTestCase {
    /// A scripted model over the English vocabulary: `script[sampled]` gives the next-token
    /// probabilities after the tokens sampled so far; unknown prefixes end the text.
    func scripted(_ tokenizer: WhisperTokenizer, atStart: [Int: Double]? = nil,
                  _ script: [[Int]: [Int: Double]]) -> ScriptedModel {
        let n = tokenizer.vocabularySize
        let eot = tokenizer.specials.endOfText
        return ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, sequence in
            let sampled = DecodingFixture.sampled(sequence, tokenizer)
            if sampled.isEmpty, sequence.last == tokenizer.specials.startOfTranscript, let start = atStart {
                return DecodingFixture.logits(n, start)
            }
            return DecodingFixture.logits(n, script[sampled] ?? [eot: 0.9])
        }
    }

    func words(_ tokenizer: WhisperTokenizer) -> (a: Int, b: Int, c: Int, d: Int, e: Int, f: Int) {
        let w = { DecodingFixture.word($0, tokenizer) }
        return (w("hello"), w("world"), w("foo"), w("bar"), w("baz"), w("the"))
    }

    func textOptions(_ configure: (inout DecodingOptions) -> Void = { _ in }) -> DecodingOptions {
        var options = DecodingOptions(withoutTimestamps: true)
        configure(&options)
        return options
    }

    func testBeamSearchFindsTheSequenceGreedyMisses() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let (a, b, c, d, e, f) = words(tokenizer)
        let eot = tokenizer.specials.endOfText
        // Greedy takes a (0.55) and then faces a three-way split; b (0.45) leads to a certain ending.
        let script: [[Int]: [Int: Double]] = [
            []: [a: 0.55, b: 0.45],
            [a]: [c: 0.34, d: 0.33, e: 0.33],
            [a, c]: [eot: 1],
            [b]: [f: 1],
            [b, f]: [eot: 1],
        ]
        let model = scripted(tokenizer, script)
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        let greedy = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.beamSize = 1 })
        let beam = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.beamSize = 2 })
        XCTAssertEqual(greedy.tokens, [a, c])
        XCTAssertEqual(beam.tokens, [b, f])
        XCTAssertEqual(greedy.text, "hello foo")
        XCTAssertEqual(beam.text, "world the")
        XCTAssertGreaterThan(beam.sumLogProb, greedy.sumLogProb)
        let expected = Foundation.log(0.45)
        XCTAssertEqual(beam.sumLogProb, expected, accuracy: 1e-4)
        XCTAssertEqual(beam.avgLogProb, expected / 3, accuracy: 1e-4, "sum / (tokens + 1)")
        XCTAssertEqual(model.log.violations, [])
        XCTAssertGreaterThan(model.log.reorders, 0, "beam search follows its beams with reorder")
    }

    /// Beam 2: after one step two short candidates finish; with patience 1 the search stops
    /// there, with patience 2 it goes on and finds a longer one with a better per-token score.
    func testPatienceKeepsSearchingForMoreFinishedCandidates() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let (a, b, c, d, e, _) = words(tokenizer)
        let eot = tokenizer.specials.endOfText
        let script: [[Int]: [Int: Double]] = [
            []: [a: 0.6, b: 0.4],
            [a]: [eot: 0.52, c: 0.48],
            [a, c]: [d: 1],
            [a, c, d]: [eot: 1],
            [b]: [eot: 0.9, e: 0.1],
            [b, e]: [eot: 1],
        ]
        let model = scripted(tokenizer, script)
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        let impatient = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.beamSize = 2; $0.patience = 1 })
        let patient = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.beamSize = 2; $0.patience = 2 })
        XCTAssertEqual(impatient.tokens, [b], "b+eot (-1.02) beats a+eot (-1.16) per token")
        XCTAssertEqual(patient.tokens, [a, c, d], "(log .6 + log .48) / 3 = -0.42")
        XCTAssertEqual(model.log.violations, [])
    }

    func testLengthNormalisation() {
        typealias C = WindowDecoder.Candidate
        let short = C(tokens: [1], sumLogProb: -1.0)
        let long = C(tokens: [1, 2, 3, 4], sumLogProb: -2.0)
        // nil: sum / length -> -1.0 vs -0.5.
        XCTAssertEqual(WindowDecoder.rank([short, long], lengthPenalty: nil), 1)
        // alpha 0: penalty 1 -> raw sums.
        XCTAssertEqual(WindowDecoder.rank([short, long], lengthPenalty: 0), 0)
        // alpha 1: -1 / 1 vs -2 / 1.5.
        XCTAssertEqual(WindowDecoder.rank([short, long], lengthPenalty: 1), 0)
        // alpha 1 with a longer, slightly worse sequence: -1 vs -1.4 / ((5+8)/6) = -0.646.
        let longer = C(tokens: Array(0..<8), sumLogProb: -1.4)
        XCTAssertEqual(WindowDecoder.rank([short, longer], lengthPenalty: 1), 1)
        XCTAssertEqual(WindowDecoder.rank([short, longer], lengthPenalty: 0), 0)
        // Ties go to the first.
        XCTAssertEqual(WindowDecoder.rank([short, short], lengthPenalty: nil), 0)
    }

    func testSamplingIsSeededAndPicksTheBestOfN() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let (a, b, c, d, _, _) = words(tokenizer)
        let eot = tokenizer.specials.endOfText
        let script: [[Int]: [Int: Double]] = [
            []: [a: 0.5, b: 0.5],
            [a]: [c: 0.4, d: 0.6],
            [b]: [eot: 1],
            [a, c]: [eot: 1],
            [a, d]: [eot: 1],
        ]
        let model = scripted(tokenizer, script)
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        var outcomes = Set<[Int]>()
        for seed in 0..<12 as Range<UInt64> {
            let one = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.temperature = 1; $0.bestOf = 1; $0.seed = seed })
            let again = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.temperature = 1; $0.bestOf = 1; $0.seed = seed })
            XCTAssertEqual(one.tokens, again.tokens, "same seed, same sample")
            XCTAssertEqual(one.temperature, 1)
            outcomes.insert(one.tokens)
        }
        XCTAssertEqual(outcomes, [[a, c], [a, d], [b]], "all three paths get sampled")
        // Per-token scores: [a, d] (log .5 + log .6) / 2 = -0.60 beats [b] -0.69 and [a, c] -0.80;
        // best of 8 finds it (it has probability 0.3 per draw).
        let best = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.temperature = 1; $0.bestOf = 8; $0.seed = 3 })
        XCTAssertEqual(best.tokens, [a, d])
        XCTAssertEqual(best.sumLogProb, Foundation.log(0.5) + Foundation.log(0.6), accuracy: 1e-4)
        XCTAssertEqual(model.log.violations, [])
    }

    func testDecodingStopsAtTheSampleLength() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let the = DecodingFixture.word("the", tokenizer)
        let n = tokenizer.vocabularySize
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer, nTextCtx: 20)) { _, _ in
            DecodingFixture.logits(n, [the: 0.9])
        }
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        for beamSize in [1, 3] {
            let limited = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.beamSize = beamSize; $0.sampleLength = 7 })
            XCTAssertEqual(limited.tokens, Array(repeating: the, count: 7))
            // Without a limit the context (20) stops it: 2 start tokens + 19 sampled, the last never fed.
            let full = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.beamSize = beamSize; $0.sampleLength = 100 })
            XCTAssertEqual(full.tokens.count, 19)
        }
        XCTAssertEqual(model.log.longest, 20)
        XCTAssertEqual(model.log.violations, [])
    }

    func testInitialTokens() throws {
        let english = try DecodingFixture.englishTokenizer()
        let s = english.specials
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(english)) { _, _ in [] }
        let decoder = try WindowDecoder(model: model, tokenizer: english, suppressIDs: [])
        XCTAssertEqual(try decoder.initialTokens(options: DecodingOptions(), languageToken: nil).tokens, [s.startOfTranscript],
                       "English-only models have no language or task token")
        XCTAssertEqual(try decoder.initialTokens(options: DecodingOptions(withoutTimestamps: true, prefix: [5, 6]), languageToken: nil).tokens,
                       [s.startOfTranscript, s.noTimestamps, 5, 6])
        let prompt = Array(0..<300)
        let withPrompt = try decoder.initialTokens(options: DecodingOptions(prompt: prompt), languageToken: nil)
        XCTAssertEqual(withPrompt.tokens, [s.startOfPrevious] + Array(77..<300) + [s.startOfTranscript], "last 223 prompt tokens")
        XCTAssertEqual(withPrompt.sotIndex, 224)
        XCTAssertThrowsError(try decoder.initialTokens(options: DecodingOptions(task: .translate), languageToken: nil)) {
            XCTAssertEqual($0 as? DecodingError, .translationUnsupported)
        }
        XCTAssertThrowsError(try decoder.checkLanguage("fr")) {
            XCTAssertEqual($0 as? DecodingError, .unsupportedLanguage(code: "fr", multilingual: false))
        }
        XCTAssertEqual(try decoder.checkLanguage("EN").code, "en")

        let multi = try DecodingFixture.multilingualTokenizer()
        let m = multi.specials
        let multiModel = ScriptedModel(dimensions: DecodingFixture.dimensions(multi)) { _, _ in [] }
        let multiDecoder = try WindowDecoder(model: multiModel, tokenizer: multi, suppressIDs: [])
        let fr = try XCTUnwrap(multi.languageToken("fr"))
        XCTAssertEqual(try multiDecoder.initialTokens(options: DecodingOptions(task: .translate), languageToken: fr).tokens,
                       [m.startOfTranscript, fr, m.translate])
        XCTAssertEqual(try multiDecoder.checkLanguage("fr").token, fr)
        XCTAssertThrowsError(try multiDecoder.checkLanguage("xx"))
    }

    func testInvalidOptionsAreRejected() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, _ in [] }
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        for bad in [DecodingOptions(temperature: -1), DecodingOptions(beamSize: 0), DecodingOptions(patience: 0),
                    DecodingOptions(lengthPenalty: 2), DecodingOptions(sampleLength: 0)] {
            XCTAssertThrowsError(try decoder.decode(audio: taggedAudio(0), options: bad)) { error in
                guard case .invalidOptions = error as? DecodingError else { return XCTFail("\(error)") }
            }
        }
        XCTAssertThrowsError(try decoder.decode(audio: taggedAudio(0), options: DecodingOptions(prefix: Array(0..<500)))) {
            XCTAssertEqual($0 as? DecodingError, .promptTooLong(initialTokens: 501, contextSize: 448))
        }
    }

    func testNoSpeechProbabilityIsReadAtStartOfTranscriptBeforeFiltering() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let s = tokenizer.specials
        let hello = DecodingFixture.word("hello", tokenizer)
        let n = tokenizer.vocabularySize
        // At <|startoftranscript|> the no-speech token has probability 0.3; it is suppressed for
        // sampling, so decoding still picks text. After <|notimestamps|> it would be 0.01.
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, sequence in
            if sequence.last == s.startOfTranscript { return DecodingFixture.logits(n, [s.noSpeech: 0.3, hello: 0.7]) }
            if sequence.last == s.noTimestamps { return DecodingFixture.logits(n, [s.noSpeech: 0.01, hello: 0.98]) }
            return DecodingFixture.logits(n, [s.endOfText: 0.99])
        }
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        let result = try decoder.decode(audio: taggedAudio(0), options: textOptions { $0.prompt = [hello, hello] })
        XCTAssertEqual(result.noSpeechProb, 0.3, accuracy: 1e-3)
        XCTAssertEqual(result.tokens, [hello])
        XCTAssertEqual(model.log.firstSteps, [[s.startOfPrevious, hello, hello, s.startOfTranscript]])
    }

    func testLanguageDetectionLooksAtLanguageTokensOnly() throws {
        let tokenizer = try DecodingFixture.multilingualTokenizer()
        let s = tokenizer.specials
        let n = tokenizer.vocabularySize
        let fr = try XCTUnwrap(tokenizer.languageToken("fr"))
        let de = try XCTUnwrap(tokenizer.languageToken("de"))
        let hello = DecodingFixture.word("hello", tokenizer)
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, sequence in
            if sequence == [s.startOfTranscript] {
                // A text token is the most likely overall; among languages fr wins over de.
                return DecodingFixture.logits(n, [hello: 0.5, fr: 0.3, de: 0.1])
            }
            if sequence.contains(s.transcribe) && sequence.last == s.noTimestamps { return DecodingFixture.logits(n, [hello: 0.9]) }
            return DecodingFixture.logits(n, [s.endOfText: 0.9])
        }
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        let detection = try decoder.detectLanguage(audio: taggedAudio(0))
        XCTAssertEqual(detection.code, "fr")
        XCTAssertEqual(detection.token, fr)
        XCTAssertEqual(detection.probabilities.count, 99)
        XCTAssertEqual(detection.probabilities.values.reduce(0, +), 1, accuracy: 1e-9)
        XCTAssertEqual(detection.probabilities["fr"] ?? 0, 0.75, accuracy: 1e-3, "0.3 / (0.3 + 0.1), up to the floor mass")
        XCTAssertEqual(detection.probabilities["de"] ?? 0, 0.25, accuracy: 1e-3)

        // decode() with no language detects it and writes <|fr|> into the start sequence.
        let result = try decoder.decode(audio: taggedAudio(0), options: textOptions())
        XCTAssertEqual(result.language, "fr")
        XCTAssertEqual(result.languageProbabilities?["fr"] ?? 0, 0.75, accuracy: 1e-3)
        XCTAssertEqual(result.tokens, [hello])
        XCTAssertEqual(model.log.firstSteps.last, [s.startOfTranscript], "decoding steps to <|startoftranscript|> first")

        // The config's lang_ids restrict the choice.
        let restricted = try WindowDecoder(model: model, tokenizer: tokenizer,
                                           config: ModelConfig(languageIDs: [de, try XCTUnwrap(tokenizer.languageToken("en"))]))
        let restrictedDetection = try restricted.detectLanguage(audio: taggedAudio(0))
        XCTAssertEqual(restrictedDetection.code, "de")
        XCTAssertEqual(restrictedDetection.probabilities.count, 2)
        XCTAssertEqual(restricted.suppressIDsBegin, [tokenizer.encode(" ")[0], s.endOfText], "empty suppress_ids_begin means Whisper's")

        let english = try DecodingFixture.englishTokenizer()
        let englishModel = ScriptedModel(dimensions: DecodingFixture.dimensions(english)) { _, _ in [] }
        let englishDecoder = try WindowDecoder(model: englishModel, tokenizer: english, suppressIDs: [])
        XCTAssertThrowsError(try englishDecoder.detectLanguage(audio: taggedAudio(0))) {
            XCTAssertEqual($0 as? DecodingError, .languageDetectionUnsupported)
        }
    }

    func testDecodingOverheadPerStepIsSmall() throws {
        // A full-size vocabulary, five beams, a model that costs nothing: what remains is the
        // decoder's own work per step (filters, log-softmax, top-k).
        let tokenizer = try DecodingFixture.multilingualTokenizer()
        let n = tokenizer.vocabularySize
        let the = DecodingFixture.word("the", tokenizer)
        let template = DecodingFixture.logits(n, [the: 0.5], floor: -5)
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, _ in template }
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: Array(300..<400))
        let start = Date()
        let result = try decoder.decode(audio: taggedAudio(0), options: DecodingOptions(language: "en", sampleLength: 60))
        let elapsed = Date().timeIntervalSince(start)
        let perStep = elapsed / Double(result.tokens.count)
        print("decoding overhead: \(String(format: "%.2f", perStep * 1000)) ms per step for 5 beams x \(n) logits")
        XCTAssertEqual(result.tokens.count, 60)
        // Optimised builds take about 1.5 ms per step here (five rows of filters, log-softmax
        // and top-k); unoptimised builds are much slower, so only a gross regression fails them.
        #if DEBUG
        let limit = 1.0
        #else
        let limit = 0.02
        #endif
        XCTAssertLessThan(perStep, limit, "decoder overhead per step should be far below a network step")
    }
}
