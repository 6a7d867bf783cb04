/// Sizes of a Whisper network, read off its weights.
public struct ModelDimensions: Sendable, Equatable {
    /// Mel bins of the input (80).
    public var nMels: Int
    /// Encoder positions per 30 s window (1500).
    public var nAudioCtx: Int
    /// Model width (384 tiny, 512 base).
    public var nState: Int
    /// Attention heads (6 tiny, 8 base).
    public var nHeads: Int
    /// Encoder blocks.
    public var nAudioLayers: Int
    /// Decoder blocks.
    public var nTextLayers: Int
    /// Decoder positions (448).
    public var nTextCtx: Int
    /// Vocabulary size (51864 tiny.en, 51865 base).
    public var nVocab: Int

    /// Creates dimensions from explicit values.
    public init(nMels: Int, nAudioCtx: Int, nState: Int, nHeads: Int,
                nAudioLayers: Int, nTextLayers: Int, nTextCtx: Int, nVocab: Int) {
        self.nMels = nMels
        self.nAudioCtx = nAudioCtx
        self.nState = nState
        self.nHeads = nHeads
        self.nAudioLayers = nAudioLayers
        self.nTextLayers = nTextLayers
        self.nTextCtx = nTextCtx
        self.nVocab = nVocab
    }
}

/// Encoder output for one window: `[frames, nState]` row-major, `frames` = 1500 for a whole
/// 30 s window, fewer for a window encoded short (`AudioContextPolicy`).
public struct EncodedAudio: @unchecked Sendable {
    /// Positions (1500 for a full window); the decoder's cross-attention reads these only.
    public let frames: Int
    /// Width of each position.
    public let width: Int
    /// Values, `frames * width`.
    public let values: [Float]
    /// When set, the decoder attends past `frames` to this silent window's positions, up to a whole
    /// window (`SpeechModel.extendedWithSilence`).
    public let silentTail: SilentWindow?

    /// Wraps encoder output values.
    public init(frames: Int, width: Int, values: [Float], silentTail: SilentWindow? = nil) {
        precondition(values.count == frames * width)
        self.frames = frames
        self.width = width
        self.values = values
        self.silentTail = silentTail
    }
}

/// An incremental decoder over one encoded window: a batch of token sequences that
/// grow together, one step at a time. Beam search keeps one sequence per beam and
/// reorders them between steps; greedy decoding uses a batch of one.
public protocol DecoderSession: AnyObject {
    /// Number of sequences currently in the batch.
    var batchSize: Int { get }
    /// Tokens already consumed by every sequence (all sequences have the same length).
    var length: Int { get }
    /// Appends `tokens[b]` to sequence `b` (every row has the same count, at least one) and
    /// returns the logits of each sequence's last position, `[batchSize, nVocab]` row-major.
    func step(_ tokens: [[Int]]) -> [Float]
    /// Rebuilds the batch so that new sequence `i` continues old sequence `sources[i]`.
    /// `sources` may repeat indices (to widen from one prompt to many beams) or drop some.
    func reorder(_ sources: [Int])
}

extension SpeechModel {
    /// Checks `cancellation` before and after the whole pass.
    public func encode(mel: [Float], cancellation: Cancellation?) throws -> EncodedAudio {
        try cancellation?.check()
        let audio = encode(mel: mel)
        try cancellation?.check()
        return audio
    }
}

/// The network as decoding sees it: audio features in, a decoder session out.
public protocol SpeechModel: AnyObject {
    /// Sizes of the network.
    var dimensions: ModelDimensions { get }
    /// Runs the encoder on one window of log-mel features, `[nMels, 2 * frames]` row-major with
    /// `frames` in `1...nAudioCtx` (`nAudioCtx` for a whole 30 s window); returns `[frames, nState]`.
    func encode(mel: [Float]) -> EncodedAudio
    /// `encode(mel:)`, throwing `DecodingError.cancelled` once `cancellation` is set (checked at least before
    /// and after the pass).
    func encode(mel: [Float], cancellation: Cancellation?) throws -> EncodedAudio
    /// `audio` (a short window's encoding) followed, for the decoder, by the positions of an encoded
    /// silent window from `audio.frames` on: decoding then attends over a whole window's positions. Making the
    /// silent window (once per model) throws `DecodingError.cancelled` once `cancellation` is set.
    func extendedWithSilence(_ audio: EncodedAudio, cancellation: Cancellation?) throws -> EncodedAudio
    /// Starts decoding over `audio` with a batch of one empty sequence.
    func makeDecoderSession(audio: EncodedAudio) -> DecoderSession
}
