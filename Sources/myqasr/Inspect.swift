import ArgumentParser
import Foundation
import Quantization
import Units
import WhisperEngine

/// `myqasr inspect`: what a quantized model holds, layer by layer.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a quantized model's per-layer widths, sizes and sensitivities.",
        discussion: """
            For each layer: its width with a bar (one block per bit), its size, and the median \
            |output| the allocation ranked it by, and whether it is stored rotated (a signed \
            Hadamard transform per 32 input features); then the totals against the same network in \
            float32, and where the model came from.

            Example:
              myqasr inspect me.myq
            """
    )

    @Argument(help: "A quantized model (.myq) written by `myqasr quantize`.")
    var file: String

    func run() throws {
        let loaded: (weights: WhisperWeights, metadata: QuantizedModelMetadata)
        do { loaded = try QuantizedModelFile.load(path: file) } catch { throw CLIError("\(error)") }
        let (weights, meta) = loaded
        let layers = weights.linearLayers
        let floatLayerBytes = layers.reduce(0) { $0 + $1.outFeatures * $1.inFeatures * MemoryLayout<Float>.size }
        let layerBytes = layers.reduce(0) { $0 + $1.weight.byteSize }
        let rest = weights.byteSize - layerBytes
        print("\(file)")
        print("source \(meta.sourceModelName): \(meta.sourceModelDigest), \(meta.sourceVocabularyDigest ?? "no vocabulary digest")")
        print("statistics \(meta.statisticsDigest), group size \(meta.groupSize), rounding \(meta.rounding?.rawValue ?? "not recorded"), "
              + "made \(ISO8601DateFormatter().string(from: meta.createdAt))")
        print(pad("layer", 40) + lpad("shape", 12) + "  " + pad("bits", 13) + lpad("KiB", 9) + lpad("median|y|", 11) + lpad("rotated", 9))
        for l in layers {
            let q = l.weight as? QuantizedMatrix
            let bits = q?.bits ?? 32
            let bar = bits == 32 ? "float32" : String(repeating: "█", count: bits) + String(repeating: "·", count: 8 - bits)
            let sens = meta.sensitivities[l.name].map { String(format: "%.4g", $0) } ?? "-"
            print(pad(l.name, 40) + lpad("\(l.outFeatures)x\(l.inFeatures)", 12) + "  "
                  + pad("\(lpad("\(bits)", 2)) \(bar)", 13)
                  + lpad(String(format: "%.1f", Double(l.weight.byteSize) / 1024), 9) + lpad(sens, 11)
                  + lpad(q?.rotated == true ? "yes" : "-", 9))
        }
        let weightCount = layers.reduce(0) { $0 + $1.outFeatures * $1.inFeatures }
        print(String(format: "layers: %@ (%.2f bits per weight, scales included) vs %@ in float32",
                     ByteSize.format(layerBytes), Double(layerBytes * 8) / Double(weightCount),
                     ByteSize.format(floatLayerBytes)))
        print("float rest (norms, biases, positions): \(ByteSize.format(rest))")
        print("total \(ByteSize.formatExact(weights.byteSize)) vs \(ByteSize.formatExact(floatLayerBytes + rest)) in float32 "
              + String(format: "(%.2fx smaller)", Double(floatLayerBytes + rest) / Double(weights.byteSize)))
    }
}
