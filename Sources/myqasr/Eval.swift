import ArgumentParser
import Audio
import Evaluation
import Foundation
import Quantization
import WhisperEngine

/// `myqasr eval`: word error rate of a model (or of transcripts made elsewhere) on a corpus manifest.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure word error rate on a corpus manifest, per voice.",
        discussion: """
            Transcribes the manifest's utterances (filtered by voice, split and condition) and \
            scores them against the reference text after Whisper's English normalisation. With \
            --hypotheses, scores transcripts produced elsewhere instead (the JSON written by \
            scripts/faster-whisper-ref: {"results":[{"file":..., "utt_id":..., "text":...}]}), \
            matched to the manifest by utt_id, else by file.

            Examples:
              myqasr eval --model tiny.en --manifest corpus/manifest.tsv --voice piper_joe
              myqasr eval --model me.myq --manifest corpus/manifest.tsv --split test
              myqasr eval --manifest corpus/manifest.tsv --hypotheses fw.json
            """
    )

    @Option(name: .shortAndLong, help: "Model: tiny.en, base, a CTranslate2 model directory, or a .myq file.")
    var model = "tiny.en"

    @Option(help: "The corpus manifest (TSV with voice, condition, file, text, utt_id, split columns).")
    var manifest: String

    @Option(help: "Only this voice (repeat for several; default: every voice).")
    var voice: [String] = []

    @Option(help: "Only this split: test, calib, or all.")
    var split = "test"

    @Option(help: "Only this condition: clean, reverb, noise, room, or all.")
    var condition = "clean"

    @Option(help: "Beam width; 1 decodes greedily (as the faster-whisper reference does).")
    var beamSize = 1

    @Option(help: "Worker threads for the network.")
    var threads = 2

    @Flag(help: "Encode every window whole (30 s), as Whisper does, instead of short windows with a full-window guard.")
    var fullWindow = false

    @Option(help: "Short windows: mel frames of silence encoded after the audio, at least (default: the policy's).")
    var shortPadding: Int?

    @Flag(help: "Short windows: the decoder attends to the encoded frames only, not to a silent window's positions after them.")
    var noSilentTail = false

    @Flag(help: "Short windows: keep every short result (no guard, no full-window retry).")
    var noGuard = false

    @Option(help: "Score these transcripts (JSON from scripts/faster-whisper-ref) instead of running a model.")
    var hypotheses: String?

    @Flag(help: "Print each utterance's reference and hypothesis (normalised) with its errors.")
    var verbose = false

    func validate() throws {
        guard beamSize >= 1 else { throw ValidationError("--beam-size must be at least 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if let shortPadding, shortPadding < 0 { throw ValidationError("--short-padding must not be negative") }
    }

    /// The JSON of scripts/faster-whisper-ref.
    struct HypothesisFile: Decodable {
        struct Result: Decodable {
            let file: String?
            let uttID: String?
            let text: String
            enum CodingKeys: String, CodingKey { case file, text, uttID = "utt_id" }
        }
        let results: [Result]
    }

    func run() throws {
        let all: Manifest
        do { all = try Manifest(contentsOf: URL(fileURLWithPath: manifest)) } catch { throw CLIError("\(error)") }
        let selected = all.filtered(voices: voice.isEmpty ? nil : Set(voice),
                                    conditions: condition == "all" ? nil : [condition],
                                    splits: split == "all" ? nil : [split])
        guard !selected.entries.isEmpty else {
            throw CLIError("no utterances in \(manifest) match voice \(voice.isEmpty ? "any" : voice.joined(separator: ",")), "
                + "split \(split), condition \(condition) (voices: \(all.voices.joined(separator: ", ")))")
        }
        let normalizer = EnglishTextNormalizer()
        var perVoice: [String: WordErrorCounts] = [:], utterances: [String: Int] = [:]
        var audioSeconds = 0.0, wallSeconds = 0.0
        var shortWindows = 0, fullWindowRetries = 0
        var transcribe: (ManifestEntry) throws -> String
        if let hypotheses {
            let data: Data
            do { data = try Data(contentsOf: URL(fileURLWithPath: hypotheses)) } catch {
                throw CLIError("cannot read hypotheses \(hypotheses): \(error.localizedDescription)")
            }
            let parsed: HypothesisFile
            do { parsed = try JSONDecoder().decode(HypothesisFile.self, from: data) } catch {
                throw CLIError("\(hypotheses) is not a faster-whisper-ref JSON ({\"results\":[{\"file\",\"utt_id\",\"text\"}]}): \(error)")
            }
            var byID: [String: String] = [:], byFile: [String: String] = [:]
            for r in parsed.results {
                if let id = r.uttID { byID[id] = r.text }
                if let f = r.file { byFile[f] = r.text; byFile[URL(fileURLWithPath: f).lastPathComponent] = r.text }
            }
            transcribe = { e in
                if let t = byID[e.uttID] ?? byFile[e.file] ?? byFile[e.audioURL.path] ?? byFile[e.audioURL.lastPathComponent] {
                    return t
                }
                throw CLIError("\(hypotheses) has no transcript for \(e.uttID) (\(e.file))")
            }
        } else {
            let whisper = try loadAnyModel(model)
            let recognizer = try SpeechRecognizer(model: whisper, threads: threads)
            var options = TranscriptionOptions()
            options.decoding.beamSize = beamSize
            if fullWindow { options.shortWindow = nil }
            if let shortPadding { options.shortWindow?.paddingFrames = shortPadding }
            if noSilentTail { options.shortWindow?.silentTail = false }
            if noGuard {   // every limit off; the token cap is the decoder's own (nTextCtx / 2)
                options.shortWindow?.minAvgLogProb = nil
                options.shortWindow?.maxCompressionRatio = nil
                options.shortWindow?.maxTimestampOverrun = nil
                options.shortWindow?.baseTokens = 1 << 20
            }
            transcribe = { e in
                let samples: [Float]
                do { samples = try loadAudio(path: e.audioURL.path) } catch { throw CLIError("\(error)") }
                let start = Date()
                let transcript = try recognizer.transcribe(samples: samples, options: options)
                let text = transcript.text
                shortWindows += transcript.shortWindows
                fullWindowRetries += transcript.fullWindowRetries
                wallSeconds += Date().timeIntervalSince(start)
                audioSeconds += Double(samples.count) / Double(WhisperAudio.sampleRate)
                return text
            }
        }
        for e in selected.entries {
            let hypothesis = try transcribe(e)
            let counts = WordErrorRate.counts(reference: e.text, hypothesis: hypothesis, normalizer: normalizer)
            perVoice[e.voice, default: .zero] += counts
            utterances[e.voice, default: 0] += 1
            if verbose {
                print("\(e.uttID)\t\(counts.errors)/\(counts.referenceWords)\n  ref: \(normalizer(e.text))\n  hyp: \(normalizer(hypothesis))")
            }
        }
        let label = hypotheses.map { "hypotheses \($0)" } ?? "model \(model), beam \(beamSize)"
        print("\(label); split \(split), condition \(condition)")
        print(pad("voice", 20) + lpad("utts", 6) + lpad("words", 7) + lpad("WER", 9) + lpad("sub", 6) + lpad("del", 6) + lpad("ins", 6))
        var total = WordErrorCounts.zero
        for v in selected.voices {
            let c = perVoice[v]!
            total += c
            print(row(v, utterances[v]!, c))
        }
        if selected.voices.count > 1 { print(row("all", selected.entries.count, total)) }
        if audioSeconds > 0 {
            print(String(format: "%.1f s of audio in %.1f s (real-time factor %.3f)", audioSeconds, wallSeconds,
                         wallSeconds / audioSeconds))
            print(fullWindow ? "every window encoded whole"
                : "\(shortWindows) windows encoded short, \(fullWindowRetries) more retried whole by the guard")
        }
    }

    func row(_ name: String, _ n: Int, _ c: WordErrorCounts) -> String {
        pad(name, 20) + lpad("\(n)", 6) + lpad("\(c.referenceWords)", 7)
            + lpad(String(format: "%.2f%%", c.wordErrorRate * 100), 9)
            + lpad("\(c.substitutions)", 6) + lpad("\(c.deletions)", 6) + lpad("\(c.insertions)", 6)
    }
}

/// `s` padded with spaces on the right to `width`.
func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }

/// `s` padded with spaces on the left to `width`.
func lpad(_ s: String, _ width: Int) -> String { s.count >= width ? " " + s : String(repeating: " ", count: width - s.count) + s }
