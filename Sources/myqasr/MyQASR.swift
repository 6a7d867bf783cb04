import ArgumentParser
import WhisperEngine

/// `myqasr`: the offline tool. Transcribes files with a local Whisper model.
@main
struct MyQASR: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "myqasr",
        abstract: "On-device Whisper speech recognition with personalised quantization.",
        discussion: """
            Models are fetched once with `scripts/fetch-models tiny.en base` and then used offline.
            Nothing you transcribe leaves this machine or is written anywhere.
            """,
        subcommands: [Transcribe.self, Stats.self, Quantize.self, Inspect.self, Eval.self, Compare.self]
    )

    /// ArgumentParser's entry point, once OpenBLAS's kernels for this CPU are chosen (may run the executable again).
    static func main() {
        OpenBLASCore.chooseForThisCPU()
        main(nil)
    }
}
