// quant-bench: measures packed low-bit weights on the real tiny.en network.
//   quant-bench [path/to/model.bin] [--groups]
// Prints (1) error against bytes for every bit width and group size over all layers, as
// stored and rotated (with --groups), (2) GEMV of the 51864x384 embedding projection and
// the encoder-size GEMM 1500x384 · (1536x384)ᵀ, quantized at 4 bits against FloatMatrix,
// plain and rotated.
import CKernels
import COpenBLAS
import Foundation
import Quantization
import WhisperEngine

func bestTime(_ runs: Int, _ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    for _ in 0..<runs {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    return best
}

// Products split themselves across threads; OpenBLAS stays single-threaded, as in the network.
openblas_set_num_threads(1)

let args = CommandLine.arguments.dropFirst()
let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
let modelPath = args.first { !$0.hasPrefix("--") } ?? "\(home)/.local/share/myqasr/models/tiny.en/model.bin"
let weights = try WhisperWeights(file: ModelFile(path: modelPath))
print("model \(modelPath): \(weights.linearLayers.count) layers, \(weights.byteSize / 1_000_000) MB float")

if args.contains("--groups") {
    print("\nerror vs bytes over all linear layers (relative Frobenius error ‖W-Ŵ‖/‖W‖, bits per weight incl. scales;")
    print("rotated: every layer with whole 32-blocks of inputs, i.e. all but conv1)")
    print("bits group  bits/weight  rel.error  rotated")
    for bits in QuantizedMatrix.supportedBits {
        for group in QuantizedMatrix.supportedGroupSizes {
            var err = [0.0, 0.0], norm = 0.0, bytes = 0, count = 0
            for layer in weights.linearLayers {
                let f = layer.weight as! FloatMatrix
                for rotated in [false, true] {
                    let q = try QuantizedMatrix(quantizing: f.values, outFeatures: f.outFeatures, inFeatures: f.inFeatures,
                                                bits: bits, groupSize: group,
                                                rotated: rotated && QuantizedMatrix.canRotate(inFeatures: f.inFeatures))
                    let d = q.dequantized()
                    for i in d.indices {
                        let e = Double(d[i] - f.values[i])
                        err[rotated ? 1 : 0] += e * e
                    }
                    if !rotated { bytes += q.byteSize }
                }
                for v in f.values { norm += Double(v) * Double(v) }
                count += f.values.count
            }
            print(String(format: "%4d %5d  %11.3f  %9.5f  %7.5f", bits, group, Double(bytes * 8) / Double(count),
                         (err[0] / norm).squareRoot(), (err[1] / norm).squareRoot()))
        }
    }
}

let group = QuantizedMatrix.defaultGroupSize
let emb = weights.tokenEmbedding.weight as! FloatMatrix
let n = emb.outFeatures, k = emb.inFeatures
print("\nGEMV \(n)x\(k) (the logits projection), best of 20, group \(group)")
var x = (0..<k).map { Float(sin(Double($0))) }
var y = [Float](repeating: 0, count: n * 5)
let tFloat = bestTime(20) { emb.multiply(x, rows: 1, threads: 1, into: &y) }
print(String(format: "float32 OpenBLAS sgemv      %7.3f ms  %6.1f GB/s  %5.1f GFLOP/s", tFloat * 1e3,
             Double(emb.byteSize) / tFloat / 1e9, 2.0 * Double(n * k) / tFloat / 1e9))
for bits in QuantizedMatrix.supportedBits {
    let q = try QuantizedMatrix(quantizing: emb.values, outFeatures: n, inFeatures: k, bits: bits, groupSize: group)
    for threads in [1, 2] {
        let kernels: [Int32] = bits == 4 ? [0, 1, 2, 3] : [3]
        for kern in kernels {
            mq_set_q8_kernel(kern)
            if mq_q8_kernel() != kern { continue }
            let t = bestTime(bits == 4 && kern == 0 ? 3 : 20) { q.multiply(x, rows: 1, threads: threads, into: &y) }
            print(String(format: "%d-bit int8-act kernel %d, %d thr %7.3f ms  %6.1f GB/s  %5.1f GFLOP/s  x%.2f vs float", bits, kern, threads,
                         t * 1e3, Double(q.byteSize) / t / 1e9, 2.0 * Double(n * k) / t / 1e9, tFloat / t))
        }
        mq_set_q8_kernel(-1)
        if bits == 4 {
            let qf = q.withActivationPrecision(.float)
            let t = bestTime(20) { qf.multiply(x, rows: 1, threads: threads, into: &y) }
            print(String(format: "%d-bit float-act, %d thr       %7.3f ms  %6.1f GB/s  %5.1f GFLOP/s  x%.2f vs float", bits, threads,
                         t * 1e3, Double(q.byteSize) / t / 1e9, 2.0 * Double(n * k) / t / 1e9, tFloat / t))
        }
    }
}
do {
    let q = try QuantizedMatrix(quantizing: emb.values, outFeatures: n, inFeatures: k, bits: 4, groupSize: group, rotated: true)
    let t = bestTime(20) { q.multiply(x, rows: 1, threads: 2, into: &y) }
    print(String(format: "4-bit rotated, int8-act, 2 thr %7.3f ms  x%.2f vs float", t * 1e3, tFloat / t))
}
do {
    let x5 = (0..<(5 * k)).map { Float(cos(Double($0))) }
    let q = try QuantizedMatrix(quantizing: emb.values, outFeatures: n, inFeatures: k, bits: 4, groupSize: group)
    let tf = bestTime(10) { emb.multiply(x5, rows: 5, threads: 2, into: &y) }
    let tq = bestTime(10) { q.multiply(x5, rows: 5, threads: 2, into: &y) }
    print(String(format: "5 rows (beam): float %.3f ms, 4-bit %.3f ms, x%.2f", tf * 1e3, tq * 1e3, tf / tq))
}

let up = weights.encoderBlocks[0].mlpUp.weight as! FloatMatrix
let m = 1500
print("\nGEMM \(m)x\(up.inFeatures) · (\(up.outFeatures)x\(up.inFeatures))ᵀ, best of 10")
let xm = (0..<(m * up.inFeatures)).map { Float(sin(Double($0) * 0.37)) }
var ym = [Float](repeating: 0, count: m * up.outFeatures)
let flops = 2.0 * Double(m * up.outFeatures * up.inFeatures)
let tgf = bestTime(30) { up.multiply(xm, rows: m, threads: 2, into: &ym) }
print(String(format: "float32 OpenBLAS  %7.3f ms  %6.1f GFLOP/s", tgf * 1e3, flops / tgf / 1e9))
for bits in [4, 8] {
    let q = try QuantizedMatrix(quantizing: up.values, outFeatures: up.outFeatures, inFeatures: up.inFeatures, bits: bits, groupSize: group)
    let t = bestTime(30) { q.multiply(xm, rows: m, threads: 2, into: &ym) }
    let td = bestTime(30) { _ = q.dequantized() }
    print(String(format: "%d-bit tiled      %7.3f ms  %6.1f GFLOP/s  x%.2f vs float (dequantizing all of W alone: %.3f ms)",
                 bits, t * 1e3, flops / t / 1e9, tgf / t, td * 1e3))
}
do {
    let q = try QuantizedMatrix(quantizing: up.values, outFeatures: up.outFeatures, inFeatures: up.inFeatures, bits: 4,
                                groupSize: group, rotated: true)
    let t = bestTime(30) { q.multiply(xm, rows: m, threads: 2, into: &ym) }
    print(String(format: "4-bit rotated    %7.3f ms  %6.1f GFLOP/s  x%.2f vs float", t * 1e3, flops / t / 1e9, tgf / t))
}
for rows in [8, 16, 17, 32] {
    let q = try QuantizedMatrix(quantizing: up.values, outFeatures: up.outFeatures, inFeatures: up.inFeatures, bits: 4, groupSize: group)
    let tq = bestTime(20) { q.multiply(xm, rows: rows, threads: 2, into: &ym) }
    let tf = bestTime(20) { up.multiply(xm, rows: rows, threads: 2, into: &ym) }
    print(String(format: "rows %2d: 4-bit %.3f ms, float %.3f ms", rows, tq * 1e3, tf * 1e3))
}

if args.contains("--file") {
    // Whole tiny.en at 4 bits (group 32) through a .myq file: size, write and load times.
    var replacements: [String: any WeightMatrix] = [:]
    for layer in weights.linearLayers {
        let f = layer.weight as! FloatMatrix
        replacements[layer.name] = try QuantizedMatrix(quantizing: f.values, outFeatures: f.outFeatures,
                                                       inFeatures: f.inFeatures, bits: 4, groupSize: 32)
    }
    let q = weights.replacing(replacements)
    let path = NSTemporaryDirectory() + "/quant-bench-\(getpid()).myq"
    defer { unlink(path) }
    let meta = QuantizedModelMetadata(sourceModelName: "tiny.en", sourceModelDigest: "unknown",
                                      statisticsDigest: "none", groupSize: 32)
    let tw = bestTime(1) { try! QuantizedModelFile.write(weights: q, metadata: meta, to: path) }
    var loaded: WhisperWeights?
    let tl = bestTime(3) { loaded = try! QuantizedModelFile.load(path: path).weights }
    let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    print(String(format: "\n.myq 4-bit g32: %.1f MB on disk, weights %.1f MB (float %.1f MB); write %.0f ms, load+CRC %.0f ms",
                 Double(size) / 1e6, Double(loaded!.byteSize) / 1e6, Double(weights.byteSize) / 1e6, tw * 1e3, tl * 1e3))
}
