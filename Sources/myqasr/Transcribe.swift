import ArgumentParser
import Audio
import Foundation
import WhisperEngine

/// `myqasr transcribe`: audio files in, text or JSON out.
struct Transcribe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Transcribe WAV files.",
        discussion: """
            Accepts WAV (PCM 16/24/32-bit or float, any rate, any channel count); audio is
            mixed to mono and resampled to 16 kHz. Long recordings are transcribed window by
            window, as Whisper does.

            Examples:
              myqasr transcribe speech.wav
              myqasr transcribe --model base --language fr interview.wav
              myqasr transcribe --format json --beam-size 1 a.wav b.wav
              myqasr transcribe --model me.myq speech.wav
            """
    )

    /// Output formats.
    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    @Option(name: .shortAndLong, help: "Model: tiny.en, base, a CTranslate2 model directory, or a .myq file.")
    var model = "tiny.en"

    @Option(help: "Beam width; 1 decodes greedily.")
    var beamSize = 5

    @Option(help: "Spoken language code (e.g. en, fr); omit to detect it (multilingual models).")
    var language: String?

    @Option(help: "Worker threads for the network.")
    var threads = 2

    @Flag(help: "Translate to English instead of transcribing (multilingual models).")
    var translate = false

    @Flag(help: "Decode without timestamp tokens (one segment per 30 s window).")
    var withoutTimestamps = false

    @Flag(help: ArgumentHelp(
        "Encode every window whole (30 s), as Whisper does.",
        discussion: "By default a window with less than 30 s of audio is encoded over its own frames, and decoded again whole when that result looks unreliable."))
    var fullWindow = false

    @Option(help: "Output format: text (one line per file) or json (segments with times and scores).")
    var format: Format = .text

    @Argument(help: "WAV files to transcribe.")
    var files: [String]

    func validate() throws {
        guard beamSize >= 1 else { throw ValidationError("--beam-size must be at least 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard !files.isEmpty else { throw ValidationError("give at least one WAV file") }
    }

    func run() throws {
        let loadStart = Date()
        let whisper = try loadAnyModel(model)
        let recognizer = try SpeechRecognizer(model: whisper, threads: threads)
        let loadSeconds = Date().timeIntervalSince(loadStart)

        var options = TranscriptionOptions()
        options.decoding.beamSize = beamSize
        options.decoding.language = language
        options.decoding.task = translate ? .translate : .transcribe
        options.decoding.withoutTimestamps = withoutTimestamps
        if fullWindow { options.shortWindow = nil }

        var results: [FileResult] = []
        for file in files {
            let samples: [Float]
            do {
                samples = try loadAudio(path: file)
            } catch {
                throw CLIError("\(error)")
            }
            let start = Date()
            let transcript = try recognizer.transcribe(samples: samples, options: options)
            let result = FileResult(file: file, text: transcript.text.trimmingCharacters(in: .whitespaces),
                                    language: transcript.language, segments: transcript.segments,
                                    secondsAudio: Double(samples.count) / Double(WhisperAudio.sampleRate),
                                    secondsWall: Date().timeIntervalSince(start), shortWindows: transcript.shortWindows,
                                    fullWindowRetries: transcript.fullWindowRetries)
            results.append(result)
            if format == .text {
                print(files.count > 1 ? "\(file): \(result.text)" : result.text)
            }
        }
        if format == .json {
            let report = Report(files: results, loadSeconds: loadSeconds,
                                totalAudioS: results.map(\.secondsAudio).reduce(0, +),
                                totalWallS: results.map(\.secondsWall).reduce(0, +))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        }
    }

    /// One file's result in the JSON output (keys in snake_case, as faster-whisper's).
    struct FileResult: Encodable {
        let file: String
        let text: String
        let language: String
        let segments: [Segment]
        let secondsAudio: Double
        let secondsWall: Double
        /// Windows encoded short whose result stood, and short windows decoded again whole.
        let shortWindows: Int
        let fullWindowRetries: Int
    }

    /// The whole JSON output.
    struct Report: Encodable {
        let files: [FileResult]
        let loadSeconds: Double
        let totalAudioS: Double
        let totalWallS: Double
    }
}

/// An error shown to the user as a plain message (no stack of types).
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
