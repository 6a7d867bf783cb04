import Audio
import CKernels
import Foundation
import Tokenizer

/// A loaded Whisper model: weights, decoding configuration and vocabulary.
/// Immutable and shareable; a requantized model is a new `WhisperModel` sharing the
/// tokenizer and configuration with different weights.
public final class WhisperModel: @unchecked Sendable {
    /// Short name (`tiny.en`, `base`, or the directory name).
    public let name: String
    /// The network weights.
    public let weights: WhisperWeights
    /// Token suppression lists and language ids from `config.json`.
    public let config: ModelConfig
    /// The vocabulary.
    public let tokenizer: WhisperTokenizer
    /// The weights' silent window for short windows' decoders (`ShortWindowPolicy.silentTail`), made
    /// on first use and shared by every recognizer of this model.
    public let silentWindows = SilentWindowStore()

    /// Assembles a model from loaded parts.
    public init(name: String, weights: WhisperWeights, config: ModelConfig, tokenizer: WhisperTokenizer) {
        self.name = name
        self.weights = weights
        self.config = config
        self.tokenizer = tokenizer
    }

    /// Loads `tiny.en`, `base`, or a CTranslate2 model directory (see `ModelLocator`).
    public static func load(_ nameOrPath: String) throws -> WhisperModel {
        try load(directory: try ModelLocator().resolve(nameOrPath))
    }

    /// Loads the model files of `directory`, checking that the vocabulary fits the weights.
    public static func load(directory: ModelDirectory) throws -> WhisperModel {
        try load(directory: directory, weights: try WhisperWeights(file: try ModelFile(path: directory.modelBin)))
    }

    /// Gives back what a finished phase leaves resident: the heap pages freed since the last call (the C
    /// allocator otherwise keeps them, and the process would stay as large as it was), and the pages of code
    /// and constants the process has run (`mq_release_code_pages`; the code still in use maps back with minor
    /// faults). Call after dropping a model, and when a long-running process goes idle.
    public static func releaseFreedMemory() {
        mq_release_free_heap()
        mq_release_code_pages()
    }

    /// For a long-running process (the daemon), before its threads allocate: every thread's C heap
    /// allocations go to one heap, so that `releaseFreedMemory` can return all that is free
    /// (see `mq_use_one_heap`).
    public static func useOneHeap() {
        mq_use_one_heap()
    }

    /// Set once per process by the first `SpeechRecognizer`: the C heap keeps the scratch that
    /// each window frees for the next one instead of faulting it in again (see `mq_keep_freed_heap`;
    /// `releaseFreedMemory` still returns it).
    fileprivate static let keepFreedMemory: Void = mq_keep_freed_heap()

    /// Loads `tiny.en`, `base` or a model directory with its float16 weight matrices left in the
    /// file's mapping (`HalfMatrix`): the full-precision network for occasional passes beside a
    /// quantized model, without a resident float32 copy. With `resident`, a model already held (the one in
    /// service), its position tables are shared where they are the same (`WhisperWeights.sharingPositions`).
    public static func loadMapped(_ nameOrPath: String, sharingWith resident: WhisperModel? = nil) throws -> WhisperModel {
        let directory = try ModelLocator().resolve(nameOrPath)
        var weights = try WhisperWeights(file: try ModelFile(path: directory.modelBin), mappingHalves: true)
        if let resident { weights = weights.sharingPositions(with: resident.weights) }
        return try load(directory: directory, weights: weights)
    }

    /// Pairs `weights` made elsewhere (a quantized form of this network) with the vocabulary
    /// and configuration of `tiny.en`, `base` or a model directory; its `model.bin` is not read.
    public static func load(_ nameOrPath: String, weights: WhisperWeights) throws -> WhisperModel {
        try load(directory: try ModelLocator().resolve(nameOrPath), weights: weights)
    }

    /// The vocabulary and configuration of `directory` with `weights`, checking that they fit.
    static func load(directory: ModelDirectory, weights: WhisperWeights) throws -> WhisperModel {
        let config = try ModelConfig(contentsOf: directory.configJSON)
        let tokenizer = try SharedTokenizers.shared.tokenizer(for: directory)
        guard tokenizer.vocabularySize == weights.dimensions.nVocab else {
            throw ModelFileError.badConfig(
                path: directory.vocabulary,
                reason: "vocabulary has \(tokenizer.vocabularySize) tokens but the weights have \(weights.dimensions.nVocab)")
        }
        return WhisperModel(name: directory.name, weights: weights, config: config, tokenizer: tokenizer)
    }

    /// The same model with other weights (a requantized form of the same network).
    public func withWeights(_ newWeights: WhisperWeights) -> WhisperModel {
        precondition(newWeights.dimensions == weights.dimensions, "withWeights: dimensions differ")
        return WhisperModel(name: name, weights: newWeights, config: config, tokenizer: tokenizer)
    }
}

/// Audio in, text out: the log-mel front end, the network and long-form decoding.
/// One recognizer serves one thread at a time; make one per worker.
public final class SpeechRecognizer {
    /// The model in use.
    public let model: WhisperModel
    /// The network bound to this recognizer's threads and observer.
    public let network: WhisperNetwork
    private let frontEnd: LogMelFrontEnd
    private let transcriber: Transcriber

    /// Prepares `model` for transcription on `threads` threads; `observer`, when given,
    /// sees every linear layer's activations (statistics). The first recognizer of a process also
    /// has the C heap keep freed window scratch for reuse (`WhisperModel.releaseFreedMemory` returns it).
    public init(model: WhisperModel, threads: Int = 2, observer: ActivationObserver? = nil) throws {
        WhisperModel.keepFreedMemory
        self.model = model
        network = WhisperNetwork(weights: model.weights, threads: threads, observer: observer,
                                 silentWindows: model.silentWindows)
        frontEnd = try LogMelFrontEnd(nMels: model.weights.dimensions.nMels)
        transcriber = try Transcriber(model: network, tokenizer: model.tokenizer,
                                      suppressIDs: model.config.suppressIDs,
                                      suppressIDsBegin: model.config.suppressIDsBegin)
    }

    /// Transcribes 16 kHz mono samples of any length.
    public func transcribe(samples: [Float], options: TranscriptionOptions = TranscriptionOptions(),
                           onSegment: ((Segment) -> Void)? = nil) throws -> Transcript {
        var options = options
        if !model.tokenizer.isMultilingual {
            options.decoding.language = "en"
        }
        // Whisper computes the spectrogram of the audio followed by 30 s of silence, but decoding
        // reads only the audio's own frames, and those (their global maximum included) come out
        // the same with nFFT samples of that silence: the frames past it see zeros only. Language
        // detection reads the first 30 s of frames, padding included, so it gets the whole padding.
        let detects = options.decoding.language == nil && model.tokenizer.isMultilingual
        let mel = frontEnd.compute(samples: samples, paddingSamples: detects ? WhisperAudio.nSamples : WhisperAudio.nFFT)
        let contentFrames = samples.count / WhisperAudio.hopLength
        return try transcriber.transcribe(mel: mel.values, frameCount: mel.nFrames,
                                          contentFrames: min(contentFrames, mel.nFrames),
                                          options: options, onSegment: onSegment)
    }

    /// The encoder's output for the first window of `samples` cut as `transcribe` cuts it (their frames, then
    /// zeros), encoded over the whole 30 s or over the samples' own frames (`MeasuredWindow`): what
    /// `greedyTokens(audio:maxTokens:)` and `forEachLogProbabilities(audio:following:_:)` read, so that one encoder
    /// pass serves both. Stops once `cancellation` is set (`DecodingError.cancelled`).
    public func encodeFirstWindow(samples: [Float], window: MeasuredWindow, cancellation: Cancellation? = nil) throws
        -> EncodedAudio
    {
        // As `transcribe` pads an English model's audio: nFFT samples of silence give the audio's frames (and their
        // maximum) as 30 s would, without a 30 s spectrogram for every utterance a drift measurement reads.
        let mel = frontEnd.compute(samples: samples, paddingSamples: WhisperAudio.nFFT)
        let content = min(samples.count / WhisperAudio.hopLength, mel.nFrames, WhisperAudio.nFrames)
        var width = WhisperAudio.nFrames
        if window == .ownFrames,
           let frames = ShortWindowPolicy().encodedFrames(contentFrames: content, windowFrames: WhisperAudio.nFrames) {
            width = frames
        }
        return try network.encode(mel: mel.window(atFrame: 0, frameCount: content).window(atFrame: 0, frameCount: width).values,
                                  cancellation: cancellation)
    }

    /// The decoder's next-token log-probabilities after each of `tokens`, fed one at a time as
    /// decoding feeds them, over `audio` (`encodeFirstWindow`): `body(position, row)` for each position in turn,
    /// `row` the `[nVocab]` log-probabilities after `tokens[position]` (valid during the call only). Two models
    /// given the same tokens can be compared position by position (`myqasr compare`). Stops before the next position
    /// once `cancellation` is set (`DecodingError.cancelled`).
    public func forEachLogProbabilities(audio: EncodedAudio, following tokens: [Int], cancellation: Cancellation? = nil,
                                        _ body: (_ position: Int, _ row: UnsafeBufferPointer<Float>) -> Void) throws {
        let session = network.makeDecoderSession(audio: audio)
        for (position, token) in tokens.enumerated() {
            try cancellation?.check()
            var row = session.step([[token]])
            row.withUnsafeMutableBufferPointer {
                _ = LogitMath.logSoftmaxInPlace($0)
                body(position, UnsafeBufferPointer($0))
            }
        }
    }

    /// The tokens one greedy decode of `audio` (`encodeFirstWindow`) gives, after the prompt it
    /// decodes them from (`WindowDecoder.initialTokens`: start of transcript, then language and
    /// task for a multilingual model): what `forEachLogProbabilities(audio:following:_:)` is fed to
    /// compare two models on the same tokens. `promptLength` counts the prompt's tokens; `maxTokens` caps the
    /// tokens sampled (nil: half the decoder context, as `transcribe`). Stops once `cancellation` is set.
    public func greedyTokens(audio: EncodedAudio, maxTokens: Int? = nil,
                             cancellation: Cancellation? = nil) throws -> (tokens: [Int], promptLength: Int) {
        var options = DecodingOptions(beamSize: 1, sampleLength: maxTokens)
        options.cancellation = cancellation
        if !model.tokenizer.isMultilingual { options.language = "en" }
        let decoder = transcriber.decoder
        let result = try decoder.decode(audio: audio, options: options)
        let prompt = try decoder.initialTokens(options: options, languageToken: model.tokenizer.languageToken(result.language))
        return (prompt.tokens + result.tokens, prompt.tokens.count)
    }

    /// Detects the spoken language of the first 30 s (multilingual models only).
    public func detectLanguage(samples: [Float]) throws -> LanguageDetection {
        let mel = frontEnd.compute(samples: Array(samples.prefix(WhisperAudio.nSamples)),
                                   paddingSamples: WhisperAudio.nSamples)
        let audio = network.encode(mel: mel.window(atFrame: 0).values)
        return try transcriber.decoder.detectLanguage(audio: audio)
    }
}

/// The vocabularies loaded in this process, one per set of files while any model holds it: a tokenizer holds
/// Whisper's 51,865 token strings and 50,000 merges (a few MB), and reading its files takes more for a while; the
/// daemon holds its model's source mapped beside the model it
/// serves (statistics passes, the self-check), so each load of the same files shares the one already in memory.
/// A file changed on disk (other size, time or inode) is read again.
final class SharedTokenizers: @unchecked Sendable {  // @unchecked: `loaded` is guarded by `lock`
    static let shared = SharedTokenizers()

    private final class Entry {
        weak var tokenizer: WhisperTokenizer?
        init(_ tokenizer: WhisperTokenizer) { self.tokenizer = tokenizer }
    }

    private let lock = NSLock()
    private var loaded: [String: Entry] = [:]

    /// The tokenizer of `directory`'s vocabulary files, read unless a model still holds it.
    func tokenizer(for directory: ModelDirectory) throws -> WhisperTokenizer {
        let key = ([directory.vocabulary] + (directory.tokenizerJSON.map { [$0] } ?? [])).map(Self.identity).joined(separator: "|")
        lock.lock()
        let known = loaded[key]?.tokenizer
        lock.unlock()
        if let known { return known }
        let tokenizer = try WhisperTokenizer(vocabularyFile: directory.vocabulary, tokenizerJSON: directory.tokenizerJSON)
        lock.lock()
        defer { lock.unlock() }
        loaded = loaded.filter { $0.value.tokenizer != nil }
        if let raced = loaded[key]?.tokenizer { return raced }
        loaded[key] = Entry(tokenizer)
        return tokenizer
    }

    /// A file's path with its inode, size and modification time (the path alone when it cannot be read).
    private static func identity(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { return path }
        return "\(path):\(info.st_ino):\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
    }
}
