import Foundation
import XCTest
import Tokenizer
@testable import WhisperEngine

/// Temperature fallback and Whisper's long-form seek loop on scripted models.
final class DecodingTranscriberTests: XCTestCase {
    /// Token `i` of `<|i * 0.02|>`.
    func ts(_ tokenizer: WhisperTokenizer, _ step: Int) -> Int { tokenizer.specials.timestampBegin + step }

    /// A model that reads the window's seek from the mel (bin 0 holds the frame index) and
    /// follows `scripts[seek]` token by token, then ends the text. Sequences that leave the
    /// script continue with "the" (`offScript`) so that stray beams never finish early.
    func seekScripted(_ tokenizer: WhisperTokenizer, _ scripts: [Int: [Int]],
                      silent: Set<Int> = [], noSpeechButConfident: Set<Int> = []) -> ScriptedModel {
        let n = tokenizer.vocabularySize
        let s = tokenizer.specials
        let the = DecodingFixture.word("the", tokenizer)
        return ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { tag, sequence in
            let seek = Int(tag)
            let sampled = DecodingFixture.sampled(sequence, tokenizer)
            if silent.contains(seek) {
                // High no-speech probability and a flat, improbable continuation.
                if sampled.isEmpty { return DecodingFixture.logits(n, [s.noSpeech: 0.9], floor: -10) }
                return DecodingFixture.logits(n, [s.endOfText: 0.001], floor: -10)
            }
            let script = scripts[seek] ?? []
            var probabilities: [Int: Double]
            if sampled.count < script.count, Array(script.prefix(sampled.count)) == sampled {
                probabilities = [script[sampled.count]: 0.999]
            } else if sampled == script {
                probabilities = [s.endOfText: 0.999]
            } else {
                probabilities = [the: 0.999]
            }
            if sampled.isEmpty && noSpeechButConfident.contains(seek) {
                probabilities = probabilities.mapValues { _ in 0.1 }
                probabilities[s.noSpeech] = 0.9
            }
            return DecodingFixture.logits(n, probabilities)
        }
    }

    /// `[nMels = 2, frames]` with bin 0 = frame index and bin 1 = -frame index.
    func rampMel(frames: Int) -> [Float] {
        (0..<frames).map { Float($0) } + (0..<frames).map { -Float($0) }
    }

    func testSeekingProducesSegmentTimesFromTimestampTokens() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let scripts: [Int: [Int]] = [
            // Two closed segments and an unfinished one: resume at the last pair, 5.00 s.
            0: [t(0), w("hello"), t(100), t(100), w("world"), t(250), t(250), w("foo")],
            // No pair: one segment up to the last timestamp, then the whole window is consumed.
            500: [t(0), w("bar"), t(150)],
            // Last window (10 s of audio, zero-padded): pairs and a single timestamp ending.
            3500: [t(0), w("baz"), t(100), t(100), w("the"), t(300)],
        ]
        let contentFrames = 4500
        let frames = contentFrames + 3000
        for beamSize in [1, 5] {
            let model = seekScripted(tokenizer, scripts)
            let transcriber = try Transcriber(model: model, tokenizer: tokenizer, suppressIDs: [])
            var streamed: [Segment] = []
            var options = TranscriptionOptions()
            options.decoding.beamSize = beamSize
            options.shortWindow = nil        // every window whole (ShortWindowTests covers the short path)
            let transcript = try transcriber.transcribe(mel: rampMel(frames: frames), frameCount: frames,
                                                        contentFrames: contentFrames, options: options) { streamed.append($0) }
            let summary = transcript.segments.map { "\($0.start)-\($0.end):\($0.text)" }
            XCTAssertEqual(summary, ["0.0-2.0: hello", "2.0-5.0: world", "5.0-8.0: bar", "35.0-37.0: baz", "37.0-41.0: the"])
            XCTAssertEqual(streamed, transcript.segments)
            XCTAssertEqual(transcript.text, " hello world bar baz the")
            XCTAssertEqual(transcript.language, "en")
            XCTAssertEqual(transcript.segments[0].tokens, [t(0), w("hello"), t(100)])
            XCTAssertEqual(transcript.segments[0].temperature, 0)
            XCTAssertEqual(model.log.violations, [])

            // Windows: seeks 0, 500 and 3500; the last one zero-padded after its 1000 frames.
            XCTAssertEqual(model.log.windows.count, 3)
            let last = model.log.windows[2]
            XCTAssertEqual(last[0], 3500)
            XCTAssertEqual(last[999], 4499)
            XCTAssertEqual(last[1000], 0)
            XCTAssertEqual(last[3000 + 999], -4499)
            XCTAssertEqual(last[3000 + 1000], 0)
            XCTAssertEqual(model.log.windows[1][0], 500)

            // Each window is prompted with the tokens of the segments before it.
            let s = tokenizer.specials
            XCTAssertEqual(model.log.firstSteps[0], [s.startOfTranscript])
            XCTAssertEqual(model.log.firstSteps[1],
                           [s.startOfPrevious, t(0), w("hello"), t(100), t(100), w("world"), t(250), s.startOfTranscript])
        }
    }

    func testSilentWindowsAreSkipped() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        // Window 0 is silence; window 3000 has speech; window 6000 has a high no-speech
        // probability but confident text, so it is kept.
        let model = seekScripted(tokenizer, [3000: [t(0), w("hello"), t(100)], 6000: [t(0), w("world"), t(50)]],
                                 silent: [0], noSpeechButConfident: [6000])
        let transcriber = try Transcriber(model: model, tokenizer: tokenizer, suppressIDs: [])
        let contentFrames = 7000
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        let transcript = try transcriber.transcribe(mel: rampMel(frames: contentFrames + 3000), frameCount: contentFrames + 3000,
                                                    contentFrames: contentFrames, options: options)
        XCTAssertEqual(transcript.segments.map(\.start), [30.0, 60.0])
        XCTAssertEqual(transcript.segments.map(\.end), [32.0, 61.0])
        XCTAssertEqual(transcript.text, " hello world")
        XCTAssertGreaterThan(transcript.segments[1].noSpeechProb, 0.6)
        // Windows 0 and 3000 start without a prompt: one decode each, so the silent window was
        // not re-decoded at higher temperatures.
        XCTAssertEqual(model.log.firstSteps.filter { $0 == [tokenizer.specials.startOfTranscript] }.count, 2)
        XCTAssertEqual(model.log.windows.count, 3)
        // Nothing from the skipped window reaches the next prompt.
        XCTAssertEqual(model.log.firstSteps[1], [tokenizer.specials.startOfTranscript])
    }

    func testInitialPromptAndNoConditioning() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let s = tokenizer.specials
        let scripts = [0: [t(0), w("hello"), t(100)], 3000: [t(0), w("world"), t(100)]]
        let mel = rampMel(frames: 9000)

        var options = TranscriptionOptions(initialPrompt: "  hi ")
        options.decoding.beamSize = 1
        let model = seekScripted(tokenizer, scripts)
        let transcript = try Transcriber(model: model, tokenizer: tokenizer, suppressIDs: [])
            .transcribe(mel: mel, frameCount: 9000, contentFrames: 6000, options: options)
        let prompt = tokenizer.encode(" hi")
        XCTAssertEqual(model.log.firstSteps[0], [s.startOfPrevious] + prompt + [s.startOfTranscript])
        XCTAssertEqual(model.log.firstSteps[1], [s.startOfPrevious] + prompt + [t(0), w("hello"), t(100), s.startOfTranscript])
        XCTAssertEqual(transcript.text, " hello world", "the initial prompt is not part of the text")

        options.conditionOnPreviousText = false
        options.initialPrompt = nil
        let unconditioned = seekScripted(tokenizer, scripts)
        _ = try Transcriber(model: unconditioned, tokenizer: tokenizer, suppressIDs: [])
            .transcribe(mel: mel, frameCount: 9000, contentFrames: 6000, options: options)
        XCTAssertEqual(unconditioned.log.firstSteps, [[s.startOfTranscript], [s.startOfTranscript]])
    }

    func testMelShapeIsChecked() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let transcriber = try Transcriber(model: seekScripted(tokenizer, [:]), tokenizer: tokenizer, suppressIDs: [])
        XCTAssertThrowsError(try transcriber.transcribe(mel: [0, 0, 0], frameCount: 2, contentFrames: 1)) {
            guard case .melShapeMismatch = $0 as? DecodingError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try transcriber.transcribe(mel: [0, 0, 0, 0], frameCount: 2, contentFrames: 3))
        let empty = try transcriber.transcribe(mel: [], frameCount: 0, contentFrames: 0)
        XCTAssertEqual(empty, Transcript(segments: [], language: "en", text: ""))
    }

    /// Greedy decoding takes "the" (0.55) and then loops on it (0.55 vs end 0.45); the other
    /// first token, "hello" (0.45), leads to a certain four-word sentence.
    func repetitiveModel(_ tokenizer: WhisperTokenizer) -> ScriptedModel {
        let n = tokenizer.vocabularySize
        let eot = tokenizer.specials.endOfText
        let w = { DecodingFixture.word($0, tokenizer) }
        let sentence = [w("hello"), w("world"), w("foo"), w("bar")]
        return ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, sequence in
            let sampled = DecodingFixture.sampled(sequence, tokenizer)
            if sampled.isEmpty { return DecodingFixture.logits(n, [w("the"): 0.55, w("hello"): 0.45]) }
            if sampled.first == w("the") { return DecodingFixture.logits(n, [w("the"): 0.55, eot: 0.45]) }
            if sampled.count < sentence.count { return DecodingFixture.logits(n, [sentence[sampled.count]: 1]) }
            return DecodingFixture.logits(n, [eot: 1])
        }
    }

    func testTemperatureFallbackOnRepetitiveOutput() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let model = repetitiveModel(tokenizer)
        let decoder = try WindowDecoder(model: model, tokenizer: tokenizer, suppressIDs: [])
        let options = DecodingOptions(beamSize: 1, withoutTimestamps: true, sampleLength: 40)

        let greedyOnly = try decoder.decodeWithFallback(audio: taggedAudio(0), options: options,
                                                        policy: FallbackPolicy(temperatures: [0]))
        XCTAssertEqual(greedyOnly.tokens.count, 40)
        XCTAssertGreaterThan(greedyOnly.compressionRatio, 2.4)
        XCTAssertGreaterThan(greedyOnly.avgLogProb, -1, "only the compression ratio fails")
        XCTAssertTrue(FallbackPolicy().needsFallback(greedyOnly))

        let fallback = try decoder.decodeWithFallback(audio: taggedAudio(0), options: options, policy: FallbackPolicy())
        XCTAssertGreaterThan(fallback.temperature, 0)
        XCTAssertEqual(fallback.text, "hello world foo bar")
        XCTAssertLessThanOrEqual(fallback.compressionRatio, 2.4)
        XCTAssertFalse(FallbackPolicy().needsFallback(fallback))
        let again = try decoder.decodeWithFallback(audio: taggedAudio(0), options: options, policy: FallbackPolicy())
        XCTAssertEqual(again, fallback, "sampling is seeded")

        // When every temperature fails, the last attempt is returned.
        let impossible = FallbackPolicy(compressionRatioThreshold: 0.01)
        let last = try decoder.decodeWithFallback(audio: taggedAudio(0), options: options, policy: impossible)
        XCTAssertEqual(last.temperature, 1.0)
        XCTAssertThrowsError(try decoder.decodeWithFallback(audio: taggedAudio(0), options: options,
                                                            policy: FallbackPolicy(temperatures: [])))
        XCTAssertEqual(model.log.violations, [])
    }

    func testFallbackRules() {
        let policy = FallbackPolicy()
        func result(ratio: Double, logProb: Double, noSpeech: Double) -> DecodingResult {
            DecodingResult(tokens: [], text: "", language: "en", languageProbabilities: nil, sumLogProb: 0,
                           avgLogProb: logProb, noSpeechProb: noSpeech, temperature: 0, compressionRatio: ratio)
        }
        XCTAssertFalse(policy.needsFallback(result(ratio: 1.5, logProb: -0.5, noSpeech: 0.1)))
        XCTAssertTrue(policy.needsFallback(result(ratio: 2.5, logProb: -0.5, noSpeech: 0.1)))
        XCTAssertTrue(policy.needsFallback(result(ratio: 1.5, logProb: -1.5, noSpeech: 0.1)))
        // Silence: high no-speech probability and low log-probability -> no fallback.
        XCTAssertFalse(policy.needsFallback(result(ratio: 1.5, logProb: -1.5, noSpeech: 0.7)))
        XCTAssertTrue(policy.isSilence(result(ratio: 1.5, logProb: -1.5, noSpeech: 0.7)))
        XCTAssertFalse(policy.isSilence(result(ratio: 1.5, logProb: -0.5, noSpeech: 0.7)))
        XCTAssertFalse(FallbackPolicy(noSpeechThreshold: nil).isSilence(result(ratio: 1.5, logProb: -1.5, noSpeech: 0.9)))
    }

    func testMultilingualTranscriptionDetectsTheLanguageOnce() throws {
        let tokenizer = try DecodingFixture.multilingualTokenizer()
        let s = tokenizer.specials
        let n = tokenizer.vocabularySize
        let de = try XCTUnwrap(tokenizer.languageToken("de"))
        let hello = DecodingFixture.word("hello", tokenizer)
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer)) { _, sequence in
            if sequence == [s.startOfTranscript] { return DecodingFixture.logits(n, [de: 0.8, hello: 0.1]) }
            let sampled = DecodingFixture.sampled(sequence, tokenizer)
            switch sampled.count {
            case 0: return DecodingFixture.logits(n, [s.timestampBegin: 1])
            case 1: return DecodingFixture.logits(n, [hello: 1])
            case 2: return DecodingFixture.logits(n, [s.timestampBegin + 50: 1])
            default: return DecodingFixture.logits(n, [s.endOfText: 1])
            }
        }
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        let transcript = try Transcriber(model: model, tokenizer: tokenizer, suppressIDs: [])
            .transcribe(mel: rampMel(frames: 7000), frameCount: 7000, contentFrames: 4000, options: options)
        XCTAssertEqual(transcript.language, "de")
        XCTAssertEqual(transcript.segments.map(\.start), [0, 30])
        XCTAssertEqual(transcript.segments.map(\.end), [1, 31])
        XCTAssertEqual(model.log.windows.count, 2, "the first window's encoding serves detection and decoding")
        XCTAssertEqual(model.log.firstSteps.filter { $0 == [s.startOfTranscript] }.count, 2,
                       "one detection step, then the first window starting at <|startoftranscript|>")
        XCTAssertTrue(model.log.firstSteps.last?.contains(s.startOfPrevious) ?? false)
    }
}
