import ArgumentParser
import Audio
import Foundation
import Quantization
import WhisperEngine

/// Runs `files` through `model` with `observer` watching every linear layer; counts each
/// file as one sample in `statistics`. Transcripts go to `onText` only (never stored).
func runCalibrationAudio(model: WhisperModel, files: [String], threads: Int, beamSize: Int,
                         observer: ActivationObserver, statistics: ActivationStatistics?,
                         onText: ((String, String) -> Void)? = nil) throws {
    let recognizer = try SpeechRecognizer(model: model, threads: threads, observer: observer)
    var options = TranscriptionOptions()
    options.decoding.beamSize = beamSize
    for file in files {
        let samples: [Float]
        do { samples = try loadAudio(path: file) } catch { throw CLIError("\(error)") }
        let transcript = try recognizer.transcribe(samples: samples, options: options)
        statistics?.finishSample()
        onText?(file, transcript.text.trimmingCharacters(in: .whitespaces))
    }
    if let error = statistics?.observationError { throw CLIError("\(error)") }
}

/// `myqasr stats`: the personalisation statistics of a user's unlabelled audio.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Gather activation statistics of unlabelled audio for quantization.",
        discussion: """
            Runs the full-precision model over the files and keeps, for every linear layer, \
            the median |output| (its sensitivity) and per-input-feature second moments (for \
            calibration without audio). With --second-moments it also keeps each layer's \
            whole input second moment (Σ x xᵀ), which `myqasr quantize --stats` then uses for \
            error-compensated rounding; the file grows to about 57 MB for tiny.en. The file \
            holds these aggregates only: no audio, features, tokens or text. Transcripts are \
            not printed unless --show-text.

            Examples:
              myqasr stats --model tiny.en my-recordings/*.wav --out me.myqs
              myqasr stats --model tiny.en --second-moments my-recordings/*.wav --out me.myqs
              myqasr stats --model tiny.en new.wav --merge me.myqs --out me.myqs
            """
    )

    @Option(name: .shortAndLong, help: "Full-precision model: tiny.en, base, or a CTranslate2 model directory.")
    var model = "tiny.en"

    @Option(help: "Where to write the statistics (.myqs).")
    var out: String

    @Option(help: "Fold these existing statistics in (same model) before writing.")
    var merge: String?

    @Option(help: "Beam width while decoding the files (the decoder's activations follow it).")
    var beamSize = 1

    @Option(help: "Worker threads for the network.")
    var threads = 2

    @Flag(help: "Also keep each layer's whole input second moment (for compensated rounding; a much larger file).")
    var secondMoments = false

    @Flag(help: "Print each file's transcript.")
    var showText = false

    @Argument(help: "WAV files of the user's speech (no transcripts needed).")
    var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one WAV file") }
        guard beamSize >= 1 else { throw ValidationError("--beam-size must be at least 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let whisper = try loadFullPrecisionModel(model, for: "statistics")
        let statistics = ActivationStatistics(modelIdentity: ModelIdentity.of(whisper), keepSecondMoments: secondMoments)
        let start = Date()
        try runCalibrationAudio(model: whisper, files: files, threads: threads, beamSize: beamSize,
                                observer: statistics, statistics: statistics,
                                onText: showText ? { file, text in print("\(file): \(text)") } : nil)
        let seconds = Date().timeIntervalSince(start)
        if let merge {
            do { try statistics.merge(try StatisticsFile.load(path: merge)) } catch { throw CLIError("\(error)") }
        }
        do { try StatisticsFile.write(statistics, to: out) } catch { throw CLIError("\(error)") }
        let layers = statistics.layers
        print("\(statistics.sampleCount) utterances, \(layers.count) layers -> \(out) (\(String(format: "%.1f", seconds)) s)")
        print("digest \(StatisticsFile.digest(statistics))")
        let ranked = layers.sorted { $0.medianAbsOutput < $1.medianAbsOutput }
        if let low = ranked.first, let high = ranked.last {
            print(String(format: "median |output|: lowest %.4g (%@), highest %.4g (%@)", low.medianAbsOutput, low.name,
                         high.medianAbsOutput, high.name))
        }
    }
}
