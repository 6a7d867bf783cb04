import Foundation
import Tokenizer
@testable import WhisperEngine

/// Test doubles for the decoding tests: a tiny byte-level vocabulary and a scripted
/// "language model" whose logits are a function of the audio tag and the tokens so far.
enum DecodingFixture {
    /// Word tokens of the tiny vocabulary (byte-level form, "Ġ" = leading space).
    static let words = ["Ġhello", "Ġworld", "Ġfoo", "Ġbar", "Ġbaz", "Ġthe"]

    /// An English-only vocabulary: 256 byte symbols, the words, Whisper's control tokens
    /// in Whisper's order, then the 1501 timestamps `<|0.00|>` ... `<|30.00|>`.
    static func englishTokenizer() throws -> WhisperTokenizer {
        var tokens = (0..<256).map { String(ByteLevel.scalarForByte[$0]) }
        tokens += words
        tokens += ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>", "<|transcribe|>",
                   "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
        tokens += timestamps()
        return try WhisperTokenizer(tokens: tokens, merges: [])
    }

    /// A multilingual vocabulary (larger than 51864 tokens): fillers pad the text range, then
    /// the control tokens with every language token, then the timestamps.
    static func multilingualTokenizer() throws -> WhisperTokenizer {
        var tokens = (0..<256).map { String(ByteLevel.scalarForByte[$0]) }
        tokens += words
        let languages = WhisperTokenizer.languages.prefix(99).map { "<|\($0.code)|>" }
        let tail = 2 + languages.count + 6 + 1501
        let fillerCount = 51_866 - tokens.count - tail
        tokens += (0..<fillerCount).map { "filler\($0)" }
        tokens += ["<|endoftext|>", "<|startoftranscript|>"] + languages
        tokens += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
        tokens += timestamps()
        return try WhisperTokenizer(tokens: tokens, merges: [])
    }

    static func timestamps() -> [String] {
        (0...1500).map { String(format: "<|%.2f|>", Double($0) * 0.02) }
    }

    /// Id of a word token such as "hello".
    static func word(_ w: String, _ tokenizer: WhisperTokenizer) -> Int {
        tokenizer.id(ofToken: "Ġ" + w)!
    }

    /// Dimensions for a scripted model over `tokenizer`.
    static func dimensions(_ tokenizer: WhisperTokenizer, nTextCtx: Int = 448) -> ModelDimensions {
        ModelDimensions(nMels: 2, nAudioCtx: 1500, nState: 1, nHeads: 1, nAudioLayers: 1, nTextLayers: 1,
                        nTextCtx: nTextCtx, nVocab: tokenizer.vocabularySize)
    }

    /// Logits whose softmax gives `probabilities` to the listed tokens (approximately, since the
    /// others get `floor`).
    static func logits(_ nVocab: Int, _ probabilities: [Int: Double], floor: Float = -30) -> [Float] {
        var row = [Float](repeating: floor, count: nVocab)
        for (token, p) in probabilities { row[token] = Float(Foundation.log(p)) }
        return row
    }

    /// The part of `sequence` after its last control token (`<|endoftext|>` ..< `<|0.00|>`):
    /// the tokens sampled so far in this window.
    static func sampled(_ sequence: [Int], _ tokenizer: WhisperTokenizer) -> [Int] {
        let s = tokenizer.specials
        guard let last = sequence.lastIndex(where: { $0 >= s.endOfText && $0 < s.timestampBegin }) else { return sequence }
        return Array(sequence[(last + 1)...])
    }
}

/// Records what the decoder asked of the scripted model.
final class ScriptLog {
    /// Every sequence fed as the first step of a session (the start sequence up to `<|startoftranscript|>`).
    var firstSteps: [[Int]] = []
    /// Full sequences of every row at every step.
    var steps = 0
    /// Number of reorders.
    var reorders = 0
    /// Encoded windows (the mel as passed to `encode`).
    var windows: [[Float]] = []
    /// Violations of the `DecoderSession` contract seen by the double.
    var violations: [String] = []
    /// Longest sequence fed.
    var longest = 0
    /// Encoded windows extended with a silent window's positions.
    var silenceExtensions = 0
}

/// A decoder session over a scripted language model.
final class ScriptedSession: DecoderSession {
    private var rows: [[Int]] = [[]]
    private let tag: Float
    private let nVocab: Int
    private let nTextCtx: Int
    private let lm: (Float, [Int]) -> [Float]
    private let log: ScriptLog

    init(tag: Float, nVocab: Int, nTextCtx: Int, log: ScriptLog, lm: @escaping (Float, [Int]) -> [Float]) {
        self.tag = tag
        self.nVocab = nVocab
        self.nTextCtx = nTextCtx
        self.log = log
        self.lm = lm
    }

    var batchSize: Int { rows.count }
    var length: Int { rows.first?.count ?? 0 }

    func step(_ tokens: [[Int]]) -> [Float] {
        log.steps += 1
        if tokens.count != rows.count { log.violations.append("step with \(tokens.count) rows, batch is \(rows.count)") }
        if Set(tokens.map(\.count)).count != 1 || tokens.first?.isEmpty != false {
            log.violations.append("step rows have unequal or zero length")
        }
        if rows.first?.isEmpty == true { log.firstSteps.append(contentsOf: tokens) }
        var out: [Float] = []
        out.reserveCapacity(rows.count * nVocab)
        for i in 0..<min(rows.count, tokens.count) {
            rows[i] += tokens[i]
            log.longest = max(log.longest, rows[i].count)
            if rows[i].count > nTextCtx { log.violations.append("sequence longer than the context: \(rows[i].count)") }
            let row = lm(tag, rows[i])
            if row.count != nVocab { log.violations.append("script returned \(row.count) logits") }
            out += row
        }
        return out
    }

    func reorder(_ sources: [Int]) {
        log.reorders += 1
        if sources.contains(where: { $0 < 0 || $0 >= rows.count }) { log.violations.append("reorder out of range: \(sources)") }
        rows = sources.map { rows[$0] }
    }
}

/// A `SpeechModel` whose encoder reports the first mel value of the window as the audio tag
/// (or what `tag` makes of the mel) and whose decoder follows a script.
final class ScriptedModel: SpeechModel {
    let dimensions: ModelDimensions
    let log = ScriptLog()
    private let lm: (Float, [Int]) -> [Float]
    private let tag: ([Float]) -> Float

    /// `lm(tag, sequence)` returns the logits after `sequence` (the full sequence, start tokens included);
    /// `tag(mel)` is the audio tag of an encoded window (default: its first mel value).
    init(dimensions: ModelDimensions, tag: @escaping ([Float]) -> Float = { $0.first ?? 0 },
         lm: @escaping (Float, [Int]) -> [Float]) {
        self.dimensions = dimensions
        self.lm = lm
        self.tag = tag
    }

    /// Accepts `[nMels, 2 * frames]` for frames in 1...nAudioCtx, as the network does.
    func encode(mel: [Float]) -> EncodedAudio {
        let frames = mel.count / (2 * dimensions.nMels)
        if mel.count != dimensions.nMels * 2 * frames || frames < 1 || frames > dimensions.nAudioCtx {
            log.violations.append("encode got \(mel.count) values")
        }
        log.windows.append(mel)
        return EncodedAudio(frames: 1, width: 1, values: [tag(mel)])
    }

    /// Counted in the log; the tag is unchanged.
    func extendedWithSilence(_ audio: EncodedAudio, cancellation: Cancellation?) -> EncodedAudio {
        log.silenceExtensions += 1
        return audio
    }

    func makeDecoderSession(audio: EncodedAudio) -> DecoderSession {
        ScriptedSession(tag: audio.values[0], nVocab: dimensions.nVocab, nTextCtx: dimensions.nTextCtx, log: log, lm: lm)
    }
}

/// A window of encoded audio carrying `tag`.
func taggedAudio(_ tag: Float) -> EncodedAudio { EncodedAudio(frames: 1, width: 1, values: [tag]) }
