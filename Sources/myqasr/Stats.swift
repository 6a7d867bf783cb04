import ArgumentParser
import Audio
import Foundation
import Quantization
import Units
import WhisperEngine

/// Runs `files` through `model` with `observer` watching every linear layer; counts each
/// file as one sample in `statistics`. Transcripts go to `onText` only (never stored).
func runCalibrationAudio(model: WhisperModel, files: [String], threads: Int, beamSize: Int,
                         observer: ActivationObserver, statistics: ActivationStatistics?,
                         onText: ((String, String) -> Void)? = nil) throws {
    let recognizer = try SpeechRecognizer(model: model, threads: threads, observer: observer)
    var options = TranscriptionOptions()
    options.decoding.beamSize = beamSize
    // Whole windows, as the quantizer's measurements were made (docs/myqasr-method.md).
    options.shortWindow = nil
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
            Gathers exactly what the daemon gathers from live utterances: each file is one \
            statistics pass of the full-precision model (greedy decoding), merged into the kept \
            statistics as the daemon merges each utterance. While a quantized model of 4 bits or \
            more serves, the daemon also gathers the decoder's layers behind that model's encoder: \
            --served MODEL.myq does the same. Per linear layer they hold the \
            median |output|, per-input-feature second moments, and the input second moment \
            E[x xT] on diagonal blocks of 384 features (16-bit correlations), which \
            `myqasr quantize --stats` uses for error-compensated rounding. For tiny.en the file \
            is about 11 MB (base: about 19 MB). The file holds these aggregates only: no audio, \
            features, tokens or text. Transcripts are not printed unless --show-text.

            Examples:
              myqasr stats --model tiny.en my-recordings/*.wav --out me.myqs
              myqasr stats --model tiny.en --served uniform4.myq my-recordings/*.wav --out me.myqs
              myqasr stats --model tiny.en new.wav --merge me.myqs --out me.myqs
            """
    )

    @Option(name: .shortAndLong, help: "Full-precision model: tiny.en, base, or a CTranslate2 model directory.")
    var model = "tiny.en"

    @Option(help: "Where to write the statistics (.myqs).")
    var out: String

    @Option(help: "Fold these existing statistics in (same model, same moment blocks) before writing.")
    var merge: String?

    @Option(help: "Worker threads for the network (the daemon uses 1; only the order of sums differs).")
    var threads = 2

    @Option(help: ArgumentHelp(
        "Input features per diagonal block of the second moments (0: whole matrices, about 52 MB for tiny.en).",
        discussion: "The daemon keeps \(StatisticsPass.momentBlockSize); other sizes are for measurements."))
    var momentBlock = StatisticsPass.momentBlockSize

    @Option(help: ArgumentHelp(
        "The model (.myq) that serves while this audio is heard: at 4 bits or more, the decoder is also observed behind its encoder.",
        discussion: "A model of --model, as the daemon's model in service is (docs/myqasr-method.md section 1)."))
    var served: String?

    @Flag(help: "Print each file's transcript.")
    var showText = false

    @Argument(help: "WAV files of the user's speech (no transcripts needed).")
    var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one WAV file") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard momentBlock >= 0 else { throw ValidationError("--moment-block must be 0 or more") }
    }

    func run() throws {
        let whisper = try loadFullPrecisionModel(model, for: "statistics")
        let identity = ModelIdentity.of(whisper)
        let statistics = StatisticsPass.emptyStatistics(modelIdentity: identity, momentBlockSize: momentBlock)
        let servedModel = try served.map { try loadAnyModel($0) }
        if let served, let servedModel, !StatisticsPass.standsIn(servedModel) {
            print("\(served) has layers below \(StatisticsPass.servedEncoderMinimumBits) bits or none quantized: "
                  + "its encoder does not stand in (the daemon's passes do the same)")
        }
        let start = Date()
        do {
            for file in files {
                let samples: [Float]
                do { samples = try loadAudio(path: file) } catch { throw CLIError("\(error)") }
                let pass = try StatisticsPass.run(model: whisper, identity: identity, samples: samples, threads: threads,
                                                  momentBlockSize: momentBlock, served: servedModel)
                try statistics.merge(pass.statistics)
                if showText { print("\(file): \(pass.text.trimmingCharacters(in: .whitespaces))") }
            }
            let seconds = Date().timeIntervalSince(start)
            if let merge { try statistics.merge(try StatisticsFile.load(path: merge)) }
            try StatisticsFile.write(statistics, to: out)
            let layers = statistics.layers
            print("\(statistics.sampleCount) utterances, \(layers.count) layers -> \(out) (\(String(format: "%.1f", seconds)) s)")
        } catch let error as CLIError {
            throw error
        } catch {
            throw CLIError("\(error)")
        }
        print("digest \(StatisticsFile.digest(statistics))")
        if let moments = statistics.secondMoments {
            print("second moments: \(moments.layerNames.count) inputs, blocks of \(moments.blockSize == 0 ? "whole width" : "\(moments.blockSize)"), "
                  + "\(ByteSize.formatExact(moments.keptByteCount)) kept")
        }
    }
}
