import Foundation

/// How a window with less than 30 s of audio is encoded: over its own mel frames, rounded up,
/// instead of the whole 30 s window (whisper.cpp's `audio_ctx`, chosen per window). The encoder's
/// cost follows the speech: a 3 s command is encoded as about 4 s, not 30.
///
/// Whisper was trained on 30 s windows, so a short window can change the transcript. The guard
/// (`accepts`) decides whether a short window's result stands; when it does not, the transcriber
/// decodes the window again whole, with the usual temperature fallback. Defaults and their
/// measurements: docs/evaluation.md, "The short window".
public struct ShortWindowPolicy: Sendable, Equatable {
    /// The decoder attends past the encoded frames to a silent window's positions, up to a whole
    /// window (`SilentWindow`, made once per model): the encoder's cost still follows the speech,
    /// the decoder sees what Whisper was trained on. Off, it attends to the encoded frames only.
    public var silentTail: Bool = true
    /// Mel frames of silence (zeros) kept after the audio, at least.
    public var paddingFrames: Int = 200
    /// The encoded frames (audio plus padding) are rounded up to a multiple of this.
    public var bucketFrames: Int = 100
    /// Retry whole when the short result's average log-probability is below this.
    public var minAvgLogProb: Double? = -1.0
    /// Retry whole when the short result's compression ratio is above this (repetition).
    public var maxCompressionRatio: Double? = 2.4
    /// Retry whole when a timestamp lies more than this many seconds past the window's audio.
    public var maxTimestampOverrun: Double? = 1.5
    /// The short decode stops after `baseTokens + tokensPerSecond * seconds of audio` tokens and
    /// is retried whole when it has not ended by then (a short window's typical failure is a
    /// loop that repeats the utterance until the decoder's 224-token limit).
    public var baseTokens: Int = 16
    /// See `baseTokens`.
    public var tokensPerSecond: Double = 8

    /// Creates a policy; the defaults are the measured ones.
    public init(silentTail: Bool = true, paddingFrames: Int = 200, bucketFrames: Int = 100, minAvgLogProb: Double? = -1.0,
                maxCompressionRatio: Double? = 2.4, maxTimestampOverrun: Double? = 1.5,
                baseTokens: Int = 16, tokensPerSecond: Double = 8) {
        self.silentTail = silentTail
        self.paddingFrames = paddingFrames
        self.bucketFrames = bucketFrames
        self.minAvgLogProb = minAvgLogProb
        self.maxCompressionRatio = maxCompressionRatio
        self.maxTimestampOverrun = maxTimestampOverrun
        self.baseTokens = baseTokens
        self.tokensPerSecond = tokensPerSecond
    }

    /// Most tokens the short decode of `contentSeconds` of audio may sample.
    public func tokenLimit(contentSeconds: Double) -> Int {
        max(1, baseTokens + Int((tokensPerSecond * max(contentSeconds, 0)).rounded(.up)))
    }

    /// Mel frames to encode for `contentFrames` frames of audio: audio plus `paddingFrames`, rounded
    /// up to `bucketFrames` and to an even count (two mel frames per encoder position); `nil` when
    /// that is not shorter than the window (`windowFrames`, 3000), which is then encoded whole.
    public func encodedFrames(contentFrames: Int, windowFrames: Int) -> Int? {
        let bucket = max(2, bucketFrames + bucketFrames % 2)
        let needed = max(contentFrames, 0) + max(paddingFrames, 0)
        let frames = max(bucket, (needed + bucket - 1) / bucket * bucket)
        return frames < windowFrames ? frames : nil
    }

    /// True when a short window's `result` may stand: ended before `tokenLimit`, average
    /// log-probability and compression ratio within their limits, and no timestamp more than
    /// `maxTimestampOverrun` past the `contentSeconds` of audio the window holds.
    public func accepts(_ result: DecodingResult, contentSeconds: Double, timePrecision: Double,
                        timestampBegin: Int) -> Bool {
        if result.tokens.count >= tokenLimit(contentSeconds: contentSeconds) { return false }
        if let limit = minAvgLogProb, result.avgLogProb < limit { return false }
        if let limit = maxCompressionRatio, result.compressionRatio > limit { return false }
        if let limit = maxTimestampOverrun, let last = result.tokens.last(where: { $0 >= timestampBegin }),
           Double(last - timestampBegin) * timePrecision > contentSeconds + limit {
            return false
        }
        return true
    }
}
