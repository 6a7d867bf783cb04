import CKernels
import Foundation

/// The decoder's view of a silent 30 s window (an all-zero log-mel, what follows the audio in a
/// window Whisper pads): every decoder block's cross-attention keys and values at all `nAudioCtx`
/// positions, in half precision.
///
/// A short window (`ShortWindowPolicy`) is encoded over its own frames only; with `silentTail` its
/// decoder attends over those frames' keys and values followed by this window's, from the same
/// position on, so that it still sees a whole window's positions, as Whisper's decoder was trained
/// to. Without them a short window's decoder loses the silence after the speech (it repeats the
/// utterance more often, and its words drift further from the whole window's; docs/evaluation.md).
/// Made once per set of weights and shared (`SilentWindowStore`); weights-derived and immutable.
/// Kept in int8 with one scale per position and head (`Int8Rows`, 64 values each): it stays in memory as
/// long as its model serves (18 MiB in float32 for tiny.en, 9 MiB in half, 4.6 MiB in int8), and the
/// decoder reads it through kernels that widen as they go (`Kernels.gemmFewRowsABtInt8`,
/// `gemmFewRowsABInt8`). Transcripts and speed: docs/evaluation.md, "The silent window".
public final class SilentWindow: @unchecked Sendable {
    /// One block's keys or values, `[heads, frames, dh]`, as int8 codes with one scale per row of `dh`
    /// (`[heads, frames]`): value ≈ code · scale, the scale the row's largest magnitude / 127.
    struct Int8Rows: Sendable {
        let codes: [Int8]
        let scales: [Float]

        /// Part `part` (0: keys, 1: values) of one block's cross-attention projections `kv` (`[frames, 2d]`, as
        /// `WhisperNetwork.forEachBlockCrossKeysValues` gives them), laid out `[heads, frames, dh]` and rounded to
        /// int8 one row of `dh` at a time.
        init(_ kv: UnsafeBufferPointer<Float>, part: Int, frames: Int, heads: Int, headWidth dh: Int) {
            let d = heads * dh
            var codes = [Int8](repeating: 0, count: frames * d), scales = [Float](repeating: 0, count: frames * heads)
            codes.withUnsafeMutableBufferPointer { c in
                scales.withUnsafeMutableBufferPointer { s in
                    for h in 0..<heads {
                        for f in 0..<frames {
                            mq_quantize_rows_q8(kv.baseAddress! + f * 2 * d + part * d + h * dh, 1, dh,
                                                c.baseAddress! + (h * frames + f) * dh, s.baseAddress! + h * frames + f)
                        }
                    }
                }
            }
            self.codes = codes
            self.scales = scales
        }

        var byteSize: Int { codes.count + scales.count * MemoryLayout<Float>.size }
    }

    /// Positions (`nAudioCtx`, 1500).
    public let frames: Int
    /// Per decoder block: keys and values.
    let crossKV: [(keys: Int8Rows, values: Int8Rows)]

    /// The silent window of `network`'s weights (`nAudioCtx` positions): one encoder pass over 30 s of zero mel, then
    /// each decoder block's keys and values, rounded to int8 one block at a time. Once `cancellation` is set the encoder
    /// pass stops at its next step, as a transcription's does (`DecodingError.cancelled`).
    init(network: WhisperNetwork, cancellation: Cancellation?) throws {
        let dims = network.weights.dimensions
        let zeros = try network.encode(mel: [Float](repeating: 0, count: dims.nMels * 2 * dims.nAudioCtx),
                                       cancellation: cancellation)
        var blocks: [(keys: Int8Rows, values: Int8Rows)] = []
        network.forEachBlockCrossKeysValues(zeros) { kv in
            func rows(_ part: Int) -> Int8Rows {
                Int8Rows(kv, part: part, frames: zeros.frames, heads: dims.nHeads, headWidth: dims.nState / dims.nHeads)
            }
            blocks.append((rows(0), rows(1)))
        }
        frames = zeros.frames
        crossKV = blocks
    }

    /// Bytes held: per decoder block, two `[frames, d]` int8 arrays and their scales (4.6 MiB for tiny, 9.2 MiB
    /// for base).
    public var byteSize: Int {
        crossKV.reduce(0) { $0 + $1.keys.byteSize + $1.values.byteSize }
    }
}

/// Holds the silent window of one set of weights: made on first use (one encoder pass over 30 s
/// of silence, then the decoder blocks' key and value projections) and shared by every network
/// given the same store, on any thread. `WhisperModel` keeps one per model.
public final class SilentWindowStore: @unchecked Sendable {
    private let lock = NSLock()
    private var window: SilentWindow?

    /// An empty store.
    public init() {}

    /// The window, made by `make` under the store's lock the first time (and tried again next time when `make` throws).
    func window(making make: () throws -> SilentWindow) rethrows -> SilentWindow {
        lock.lock()
        defer { lock.unlock() }
        if let window { return window }
        let made = try make()
        window = made
        return made
    }

    /// Bytes held (0 until first use).
    public var byteSize: Int {
        lock.lock()
        defer { lock.unlock() }
        return window?.byteSize ?? 0
    }
}

extension WhisperNetwork {
    /// The silent window of these weights, from `silentWindows`: made on first use with this network's threads
    /// and no observer (it is not the user's speech). Making it stops at the encoder's next step once `cancellation`
    /// is set (`DecodingError.cancelled`; none is kept, and the next use makes it again): a statistics pass that
    /// makes one gives way to a transcription as quickly as its own encoder pass does.
    public func silentWindow(cancellation: Cancellation?) throws -> SilentWindow {
        try silentWindows.window { try SilentWindow(network: WhisperNetwork(weights: weights, threads: threads), cancellation: cancellation) }
    }

    /// `audio`'s frames followed, for the decoder, by the silent window's positions after them: the
    /// decoder attends over a whole window. Stops as `silentWindow(cancellation:)` does.
    public func extendedWithSilence(_ audio: EncodedAudio, cancellation: Cancellation?) throws -> EncodedAudio {
        guard audio.frames < weights.dimensions.nAudioCtx else { return audio }
        return EncodedAudio(frames: audio.frames, width: audio.width, values: audio.values,
                            silentTail: try silentWindow(cancellation: cancellation))
    }
}

extension WhisperModel {
    /// Makes this model's silent window now (one encoder pass over 30 s of silence on `threads` threads), so that
    /// the first short window decoded with it does not pay for it. The daemon calls it before a model serves.
    public func prepareShortWindows(threads: Int = 2) {
        _ = try? silentWindow(threads: threads, cancellation: nil)   // no cancellation: never throws
    }

    /// This model's silent window, made now on `threads` threads if it is not yet; stops at the encoder's next step
    /// once `cancellation` is set (`DecodingError.cancelled`, and none is kept).
    @discardableResult
    public func silentWindow(threads: Int, cancellation: Cancellation?) throws -> SilentWindow {
        try WhisperNetwork(weights: weights, threads: threads, silentWindows: silentWindows).silentWindow(cancellation: cancellation)
    }
}
