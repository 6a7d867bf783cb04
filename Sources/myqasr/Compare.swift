import ArgumentParser
import Audio
import Foundation
import WhisperEngine

extension MeasuredWindow: ExpressibleByArgument {}

/// `myqasr compare`: how closely a model's next-token distributions follow a reference model's.
struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure how closely a model's next-token distributions follow a reference model's.",
        discussion: """
            Decodes each file's first 30 s window with the reference model (greedy), then gives \
            both models the reference's tokens over that window and compares their next-token \
            distributions at every position after the prompt: the mean KL divergence \
            KL(reference || model) in nats per position, and how often both rank the same token \
            first. A continuous measure of what quantization changed, far less noisy than a word \
            error rate over a few hundred words (docs/myqasr-method.md section 9). With --window own \
            each file is encoded over its own frames (the short path's padding and bucket) instead of \
            30 s, as the daemon's self-check and drift measure. Prints no text.

            Example:
              myqasr compare --model me.myq --reference tiny.en test/*.wav
            """
    )

    @Option(name: .shortAndLong, help: "The model to measure: tiny.en, base, a model directory or a .myq file.")
    var model: String

    @Option(help: "The reference model (usually the full-precision model the .myq was made from).")
    var reference = "tiny.en"

    @Option(help: "The window each file is encoded over: whole (30 s) or own (its own frames, as the daemon measures).")
    var window: MeasuredWindow = .whole

    @Option(help: "Worker threads for the network.")
    var threads = 2

    @Argument(help: "WAV files (any sample rate; the first 30 s of each is used).")
    var files: [String]

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one audio file") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let referenceModel = try loadAnyModel(reference)
        let measured = try loadAnyModel(model)
        let vocabulary = referenceModel.weights.dimensions.nVocab
        guard measured.weights.dimensions.nVocab == vocabulary,
              measured.tokenizer.isMultilingual == referenceModel.tokenizer.isMultilingual else {
            throw CLIError("\(model) and \(reference) do not share a vocabulary; compare a model with its source")
        }
        let referenceRecognizer = try SpeechRecognizer(model: referenceModel, threads: threads)
        let measuredRecognizer = try SpeechRecognizer(model: measured, threads: threads)
        var total = NextTokenDivergence()
        for file in files {
            let samples: [Float]
            do { samples = try loadAudio(path: file) } catch { throw CLIError("\(error)") }
            // Positions from the prompt's last token on predict the transcript (and finally its end).
            let reference = try referenceRecognizer.referenceDistributions(samples: samples, window: window)
            total.merge(try measuredRecognizer.divergence(from: reference, samples: samples))
        }
        print(String(format: "%d files, %d positions: KL(reference || model) %.5f nats per position, top-1 agreement %.2f %%",
                      files.count, total.positions, total.meanKL, 100 * total.topOneAgreement))
    }
}
