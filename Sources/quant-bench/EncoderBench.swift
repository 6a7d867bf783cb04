// quant-bench's whole-network modes: the int8 GEMM (`.int8` activations, the default) against
// the float-activation path (`.float`: dequantized tiles of W through sgemm) on one quantized
// model, in one process.
//   --encoder MODEL.myq [--source tiny.en] [--runs N] [--threads T]
//       times `encode` of one 30 s window (jfk.wav) for the float model, the quantized model
//       (int8 activations) and the quantized model with float activations, in turn (medians,
//       ratios), and prints per layer the relative error that rounding the layer's real input
//       to int8 adds (per block of 32, as the kernels do, and per row for comparison).
//   --transcripts MODEL.myq [--manifest M.tsv ...] [--voice V]
//       transcribes a manifest's test utterances (default: the samples in ~/.cache/myqasr/samples)
//       with both activation paths and prints the word error rate of each and every transcript
//       that differs.
import Audio
import CKernels
import Evaluation
import Foundation
import Quantization
import WhisperEngine

/// The value after `name` on the command line.
func option(_ name: String, in args: ArraySlice<String>) -> String? {
    guard let i = args.firstIndex(of: name), args.index(after: i) < args.endIndex else { return nil }
    return args[args.index(after: i)]
}

/// `weights` with every quantized layer's products set to `precision`.
func withActivations(_ weights: WhisperWeights, _ precision: ActivationPrecision) -> WhisperWeights {
    var replacements: [String: any WeightMatrix] = [:]
    for layer in weights.linearLayers {
        if let q = layer.weight as? QuantizedMatrix { replacements[layer.name] = q.withActivationPrecision(precision) }
    }
    return weights.replacing(replacements)
}

/// ‖a - b‖ / ‖b‖.
func relativeError(_ a: UnsafeBufferPointer<Float>, _ b: UnsafeBufferPointer<Float>) -> Double {
    var d = 0.0, n = 0.0
    for i in 0..<a.count {
        d += Double(a[i] - b[i]) * Double(a[i] - b[i])
        n += Double(b[i]) * Double(b[i])
    }
    return (d / max(n, 1e-30)).squareRoot()
}

/// For each quantized layer the network runs, the relative error int8 activations add to the
/// layer's product on its real input: rounded per block of 32 (what the kernels do) and, for
/// comparison, per row (one scale for all of a row's inputs, simulated in float).
final class ActivationRoundingProbe: ActivationObserver {
    let layers: [String: QuantizedMatrix]
    private(set) var rows: [(name: String, perBlock: Double, perRow: Double)] = []

    init(weights: WhisperWeights) {
        var layers: [String: QuantizedMatrix] = [:]
        for l in weights.linearLayers { if let q = l.weight as? QuantizedMatrix { layers[l.name] = q } }
        self.layers = layers
    }

    func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows m: Int) {
        guard let q = layers[layer], m > QuantizedMatrix.gemvRowLimit else { return }
        let n = q.outFeatures, k = q.inFeatures
        var exact = [Float](repeating: 0, count: m * n), perBlock = exact, perRow = exact
        q.withActivationPrecision(.float).multiply(input.baseAddress!, rows: m, threads: 2, into: &exact)
        q.withActivationPrecision(.int8).multiply(input.baseAddress!, rows: m, threads: 2, into: &perBlock)
        // Per row: x' = Rᵀ·round(R·x / s)·s with s = max|R·x| / 127 over the row (R = I unless rotated).
        var x = Array(input)
        if q.rotated { mq_rotate_blocks(x, &x, x.count, 0) }
        for i in 0..<m {
            let row = x[(i * k)..<((i + 1) * k)]
            let s = (row.map(abs).max() ?? 0) / 127
            guard s > 0 else { continue }
            for c in 0..<k { x[i * k + c] = (x[i * k + c] / s).rounded() * s }
        }
        if q.rotated { mq_rotate_blocks(x, &x, x.count, 1) }
        q.withActivationPrecision(.float).multiply(x, rows: m, threads: 2, into: &perRow)
        let e = exact.withUnsafeBufferPointer { ex in
            (perBlock.withUnsafeBufferPointer { relativeError($0, ex) }, perRow.withUnsafeBufferPointer { relativeError($0, ex) })
        }
        rows.append((layer, e.0, e.1))
    }
}

func runEncoderBench(myq: String, args: ArraySlice<String>) throws {
    let runs = Int(option("--runs", in: args) ?? "") ?? 7
    let threads = Int(option("--threads", in: args) ?? "") ?? 2
    let quantized = try QuantizedModelFile.loadModel(path: myq)
    let float = try WhisperModel.load(option("--source", in: args) ?? "tiny.en")
    let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
    let samples = try loadAudio(path: "\(home)/.cache/myqasr/samples/jfk.wav")
    let mel = try LogMelFrontEnd(nMels: float.weights.dimensions.nMels)
        .compute(samples: samples, paddingSamples: WhisperAudio.nSamples).window(atFrame: 0).values
    let qWeights = quantized.weights, fWeights = withActivations(quantized.weights, .float)
    let quantizedLayers = qWeights.linearLayers.filter { $0.weight is QuantizedMatrix }.count
    print("encoder of \(myq): \(quantizedLayers) of \(qWeights.linearLayers.count) layers quantized, "
        + "\(qWeights.byteSize / 1_000_000) MB; float model \(float.weights.byteSize / 1_000_000) MB; \(threads) threads")

    let nets: [(String, WhisperNetwork)] = [
        ("float model", WhisperNetwork(weights: float.weights, threads: threads)),
        ("quantized, int8 activations", WhisperNetwork(weights: qWeights, threads: threads)),
        ("quantized, float activations", WhisperNetwork(weights: fWeights, threads: threads)),
    ]
    var outputs: [String: [Float]] = [:]
    for (name, net) in nets { outputs[name] = net.encode(mel: mel).values }
    let t = medians(runs, nets.map { (name, net) in (name, { _ = net.encode(mel: mel) }) })
    let base = t["float model"]!
    print("median CPU time of \(runs) encodes each, taken in turn")
    for (name, _) in nets {
        print(name.padding(toLength: 30, withPad: " ", startingAt: 0)
            + String(format: "%7.1f ms  (float model / this: x%.2f)", t[name]! * 1e3, base / t[name]!))
    }
    print(String(format: "int8 against float activations: x%.2f faster", t["quantized, float activations"]! / t["quantized, int8 activations"]!))
    func rel(_ a: String, _ b: String) -> Double {
        outputs[a]!.withUnsafeBufferPointer { x in outputs[b]!.withUnsafeBufferPointer { relativeError(x, $0) } }
    }
    print(String(format: "encoder output, relative difference: int8 vs float activations %.4f; "
        + "float activations vs float model %.4f; int8 vs float model %.4f",
                 rel("quantized, int8 activations", "quantized, float activations"),
                 rel("quantized, float activations", "float model"), rel("quantized, int8 activations", "float model")))

    let probe = ActivationRoundingProbe(weights: fWeights)
    _ = WhisperNetwork(weights: fWeights, threads: threads, observer: probe).encode(mel: mel)
    print("\nper layer, relative error int8 activations add to the product on the layer's real input")
    print("layer                                       bits  rotated  per block of 32  per row")
    for r in probe.rows {
        let q = probe.layers[r.name]!
        print(r.name.padding(toLength: 44, withPad: " ", startingAt: 0)
            + String(format: "%4d  %7@  %15.5f  %7.5f", q.bits, q.rotated ? "yes" : "no", r.perBlock, r.perRow))
    }
}

func runTranscriptBench(myq: String, args: ArraySlice<String>) throws {
    let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
    var manifests = args.indices.filter { args[$0] == "--manifest" && $0 + 1 < args.endIndex }.map { args[$0 + 1] }
    if manifests.isEmpty {
        manifests = ["manifest.tsv", "manifest-long.tsv"].map { "\(home)/.cache/myqasr/samples/\($0)" }
    }
    let voice = option("--voice", in: args)
    var entries: [ManifestEntry] = []
    for m in manifests {
        let all = try Manifest(contentsOf: URL(fileURLWithPath: m))
        entries += all.filtered(voices: voice.map { [$0] }, conditions: ["clean"], splits: ["test"]).entries
    }
    let quantized = try QuantizedModelFile.loadModel(path: myq)
    let paths: [(String, SpeechRecognizer)] = try [
        ("int8", SpeechRecognizer(model: quantized, threads: 2)),
        ("float", SpeechRecognizer(model: quantized.withWeights(withActivations(quantized.weights, .float)), threads: 2)),
    ]
    let normalizer = EnglishTextNormalizer()
    var totals: [String: WordErrorCounts] = [:], identical = 0
    for e in entries {
        let samples = try loadAudio(path: e.audioURL.path)
        var texts: [String: String] = [:]
        for (name, recognizer) in paths {
            let text = try recognizer.transcribe(samples: samples, options: TranscriptionOptions()).text
            texts[name] = text
            totals[name, default: .zero] += WordErrorRate.counts(reference: e.text, hypothesis: text, normalizer: normalizer)
        }
        if texts["int8"] == texts["float"] {
            identical += 1
        } else {
            print("\(e.uttID) differs:\n  int8:  \(texts["int8"]!)\n  float: \(texts["float"]!)")
        }
    }
    print("\(entries.count) utterances (\(manifests.joined(separator: ", "))\(voice.map { ", voice \($0)" } ?? "")): "
        + "\(identical) transcripts identical")
    for (name, _) in paths {
        let c = totals[name]!
        print(String(format: "%@ activations: WER %.2f%% (%d errors / %d words)", name, c.wordErrorRate * 100, c.errors,
                     c.referenceWords))
    }
}
