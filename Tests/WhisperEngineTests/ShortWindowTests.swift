import Foundation
import Tokenizer
import XCTest
@testable import WhisperEngine

/// The short window (`ShortWindowPolicy`): what is encoded, and when the guard sends a window back
/// to the whole 30 s, on scripted models.
final class ShortWindowTests: XCTestCase {
    func ts(_ tokenizer: WhisperTokenizer, _ step: Int) -> Int { tokenizer.specials.timestampBegin + step }

    /// One second of padding, rounded up to whole seconds (the defaults' guard).
    static let policy = ShortWindowPolicy(paddingFrames: 100, bucketFrames: 100)

    /// `[nMels = 2, frames]` with bin 0 = frame index + 1 and bin 1 = -(frame index + 1).
    func rampMel(frames: Int) -> [Float] {
        (0..<frames).map { Float($0 + 1) } + (0..<frames).map { -Float($0 + 1) }
    }

    /// A model that knows how many mel frames it was given (the tag is the mel's value count,
    /// `2 * frames`) and decodes `short` from a short window, `whole` from a whole one.
    func model(_ tokenizer: WhisperTokenizer, short: [Int], whole: [Int]) -> ScriptedModel {
        let n = tokenizer.vocabularySize
        let eot = tokenizer.specials.endOfText
        return ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer), tag: { Float($0.count) }) { tag, sequence in
            let script = Int(tag) == 2 * 3000 ? whole : short
            let sampled = DecodingFixture.sampled(sequence, tokenizer)
            if sampled.count < script.count, Array(script.prefix(sampled.count)) == sampled {
                return DecodingFixture.logits(n, [script[sampled.count]: 0.999])
            }
            return DecodingFixture.logits(n, [eot: 0.999])
        }
    }

    func transcribe(_ model: ScriptedModel, _ tokenizer: WhisperTokenizer, contentFrames: Int,
                    policy: ShortWindowPolicy? = ShortWindowTests.policy) throws -> Transcript {
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        options.shortWindow = policy
        let frames = contentFrames + 400
        return try Transcriber(model: model, tokenizer: tokenizer, suppressIDs: [])
            .transcribe(mel: rampMel(frames: frames), frameCount: frames, contentFrames: contentFrames, options: options)
    }

    func testEncodedFramesAreTheAudioPlusPaddingRoundedUp() {
        let policy = ShortWindowPolicy(paddingFrames: 100, bucketFrames: 100)
        XCTAssertEqual(policy.encodedFrames(contentFrames: 250, windowFrames: 3000), 400)
        XCTAssertEqual(policy.encodedFrames(contentFrames: 300, windowFrames: 3000), 400)
        XCTAssertEqual(policy.encodedFrames(contentFrames: 0, windowFrames: 3000), 100)
        XCTAssertEqual(policy.encodedFrames(contentFrames: 2899, windowFrames: 3000), nil, "3000 frames: the whole window")
        XCTAssertEqual(policy.encodedFrames(contentFrames: 3000, windowFrames: 3000), nil)
        // Odd buckets become even: two mel frames per encoder position.
        XCTAssertEqual(ShortWindowPolicy(paddingFrames: 0, bucketFrames: 1).encodedFrames(contentFrames: 7, windowFrames: 3000), 8)
        XCTAssertEqual(ShortWindowPolicy(paddingFrames: 50, bucketFrames: 2).encodedFrames(contentFrames: 301, windowFrames: 3000), 352)
    }

    func testAShortWindowEncodesOnlyItsOwnFramesAndStands() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let model = model(tokenizer, short: [t(0), w("hello"), w("world"), t(100)], whole: [t(0), w("foo"), t(100)])
        // 2.5 s of audio: 250 frames, 100 of padding, rounded up to 400.
        let transcript = try transcribe(model, tokenizer, contentFrames: 250)
        XCTAssertEqual(transcript.text, " hello world")
        XCTAssertEqual(transcript.shortWindows, 1)
        XCTAssertEqual(transcript.fullWindowRetries, 0)
        XCTAssertEqual(model.log.windows.count, 1, "no whole window")
        let mel = model.log.windows[0]
        XCTAssertEqual(mel.count, 2 * 400)
        XCTAssertEqual(Array(mel[0..<250]), (0..<250).map { Float($0 + 1) })
        XCTAssertEqual(Array(mel[250..<400]), [Float](repeating: 0, count: 150), "frames past the audio are zeros")
        XCTAssertEqual(mel[400], -1)
        XCTAssertEqual(mel[400 + 249], -250)
        XCTAssertEqual(mel[400 + 250], 0)
        XCTAssertEqual(transcript.segments.map(\.end), [2.0])
        XCTAssertEqual(model.log.violations, [])
    }

    func testTheDecoderReadsTheSilentTailUnlessThePolicySaysNot() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let withTail = model(tokenizer, short: [t(0), w("hello"), t(100)], whole: [t(0), w("foo"), t(100)])
        XCTAssertEqual(try transcribe(withTail, tokenizer, contentFrames: 250).text, " hello")
        XCTAssertEqual(withTail.log.silenceExtensions, 1)
        XCTAssertTrue(ShortWindowPolicy().silentTail, "on by default")
        var policy = Self.policy
        policy.silentTail = false
        let without = model(tokenizer, short: [t(0), w("hello"), t(100)], whole: [t(0), w("foo"), t(100)])
        XCTAssertEqual(try transcribe(without, tokenizer, contentFrames: 250, policy: policy).text, " hello")
        XCTAssertEqual(without.log.silenceExtensions, 0)
    }

    func testOptionsWithoutAShortWindowEncodeTheWholeWindow() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let model = model(tokenizer, short: [t(0), w("hello"), t(100)], whole: [t(0), w("foo"), t(100)])
        let transcript = try transcribe(model, tokenizer, contentFrames: 250, policy: nil)
        XCTAssertEqual(transcript.text, " foo")
        XCTAssertEqual(transcript.shortWindows, 0)
        XCTAssertEqual(model.log.windows.map(\.count), [2 * 3000])
        XCTAssertNotNil(TranscriptionOptions().shortWindow, "the short window is on by default")
    }

    func testTheGuardSendsARepetitiveShortResultToTheWholeWindow() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        // 30 tokens: under the token limit of 2.5 s (16 + 8 * 2.5 = 36), far over the compression ratio.
        let loop = [t(0)] + [Int](repeating: w("the"), count: 28) + [t(100)]
        let model = model(tokenizer, short: loop, whole: [t(0), w("hello"), w("world"), t(100)])
        let transcript = try transcribe(model, tokenizer, contentFrames: 250)
        XCTAssertEqual(transcript.text, " hello world")
        XCTAssertEqual(transcript.shortWindows, 0)
        XCTAssertEqual(transcript.fullWindowRetries, 1)
        XCTAssertEqual(model.log.windows.map(\.count), [2 * 400, 2 * 3000], "short first, then whole")
        // Without the compression-ratio limit the same short result stands.
        var lenient = Self.policy
        lenient.maxCompressionRatio = nil
        let kept = try transcribe(model, tokenizer, contentFrames: 250, policy: lenient)
        XCTAssertEqual(kept.shortWindows, 1)
        XCTAssertTrue(kept.text.hasPrefix(" the the the"))
    }

    func testTheGuardRetriesAShortDecodeThatDoesNotEndWithinItsTokenLimit() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let endless = [t(0)] + [Int](repeating: w("the"), count: 200)
        let model = model(tokenizer, short: endless, whole: [t(0), w("hello"), t(100)])
        var policy = Self.policy
        policy.maxCompressionRatio = nil
        XCTAssertEqual(policy.tokenLimit(contentSeconds: 2.5), 36)
        let transcript = try transcribe(model, tokenizer, contentFrames: 250, policy: policy)
        XCTAssertEqual(transcript.text, " hello")
        XCTAssertEqual(transcript.fullWindowRetries, 1)
        // The short decode stopped at the limit: 36 steps after the start, not 200.
        XCTAssertLessThan(model.log.longest, 1 + 36 + 2)
    }

    func testTheGuardRejectsTimestampsPastTheAudio() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        // 2.5 s of audio; the short window ends its segment at 8.00 s.
        let model = model(tokenizer, short: [t(0), w("hello"), t(400)], whole: [t(0), w("world"), t(100)])
        let transcript = try transcribe(model, tokenizer, contentFrames: 250)
        XCTAssertEqual(transcript.text, " world")
        XCTAssertEqual(transcript.fullWindowRetries, 1)
        // 1.2 s past the audio stands (the last timestamp of a clipped 1 s command lands about 1 s late,
        // and the whole window puts it there too).
        let late = self.model(tokenizer, short: [t(0), w("hello"), t(185)], whole: [t(0), w("world"), t(100)])
        let kept = try transcribe(late, tokenizer, contentFrames: 250)
        XCTAssertEqual(kept.text, " hello")
        XCTAssertEqual(kept.fullWindowRetries, 0)
    }

    func testTheGuardRejectsAnImprobableShortResult() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let n = tokenizer.vocabularySize
        let eot = tokenizer.specials.endOfText
        let w = { DecodingFixture.word($0, tokenizer) }
        let sentence = [w("hello"), w("world"), eot]
        // The short window hesitates at every token (p = 0.3 against three others at 0.233: average
        // log-probability -1.2); the whole window is sure.
        let model = ScriptedModel(dimensions: DecodingFixture.dimensions(tokenizer), tag: { Float($0.count) }) { tag, sequence in
            let sampled = DecodingFixture.sampled(sequence, tokenizer)
            let p = Int(tag) == 2 * 3000 ? 0.997 : 0.3
            let next = sentence[min(sampled.count, sentence.count - 1)]
            return DecodingFixture.logits(n, [next: p, 65: (1 - p) / 3, 66: (1 - p) / 3, 67: (1 - p) / 3])
        }
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        options.decoding.withoutTimestamps = true
        options.shortWindow = Self.policy
        let transcript = try Transcriber(model: model, tokenizer: tokenizer, suppressIDs: [])
            .transcribe(mel: rampMel(frames: 650), frameCount: 650, contentFrames: 250, options: options)
        XCTAssertEqual(transcript.text, " hello world")
        XCTAssertEqual(transcript.fullWindowRetries, 1)
        XCTAssertEqual(model.log.windows.map(\.count), [2 * 400, 2 * 3000])
        XCTAssertGreaterThan(transcript.segments[0].avgLogProb, -0.1, "the segment is the whole window's")
    }

    func testTheTailOfLongAudioIsEncodedShort() throws {
        let tokenizer = try DecodingFixture.englishTokenizer()
        let w = { DecodingFixture.word($0, tokenizer) }
        let t = { self.ts(tokenizer, $0) }
        let model = model(tokenizer, short: [t(0), w("world"), t(100)], whole: [t(0), w("hello"), t(1500)])
        // 35 s: a whole first window, then 5 s encoded as 6 s (500 + 100 frames).
        let transcript = try transcribe(model, tokenizer, contentFrames: 3500)
        XCTAssertEqual(transcript.text, " hello world")
        XCTAssertEqual(transcript.segments.map(\.start), [0, 30])
        XCTAssertEqual(model.log.windows.map(\.count), [2 * 3000, 2 * 600])
        XCTAssertEqual(model.log.windows[1][0], 3001, "the second window starts at frame 3000")
        XCTAssertEqual(transcript.shortWindows, 1)
    }
}
