// quant-bench: measures packed low-bit weights on the real tiny.en network.
//   quant-bench [path/to/model.bin] [--groups] [--all-shapes] [--threads2] [--file]
//   quant-bench --encoder MODEL.myq [--runs N]           (EncoderBench.swift)
//   quant-bench --transcripts MODEL.myq [--manifest M.tsv --voice V]
// Prints (1) error against bytes for every bit width and group size over all layers, as
// stored and rotated (with --groups), (2) GEMV of the 51864x384 embedding projection,
// quantized against FloatMatrix, (3) the encoder's GEMMs (fc1 and fc2, or every shape with
// --all-shapes) per width and int8 kernel against sgemm on the dequantized matrix.
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

// OpenBLAS's kernels for this CPU, as the other executables choose them; products split themselves across
// threads, and OpenBLAS stays single-threaded, as in the network.
OpenBLASCore.chooseForThisCPU()
OpenBLASThreads.keepOnCallingThread()

let args = CommandLine.arguments.dropFirst()
if let myq = option("--encoder", in: args) {
    try runEncoderBench(myq: myq, args: args)
    exit(0)
}
if let myq = option("--transcripts", in: args) {
    try runTranscriptBench(myq: myq, args: args)
    exit(0)
}
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

// The encoder's products (rows of x from the encoder's 1500 frames, 3000 for conv1): sgemm on
// the dequantized matrix (FloatMatrix, OpenBLAS) against the int8 GEMM (mq_gemm_q8) per width
// and kernel, and the float-activation path (dequantized tiles + sgemm).

/// Seconds of CPU time the process has used (all threads): on a machine busy with other
/// work this follows the work done far more closely than the wall clock.
func processCPUTime() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

/// Median CPU time of each variant over `runs` runs taken in turn (so that a busy machine
/// slows every variant alike), after one warm-up run each.
func medians(_ runs: Int, _ variants: [(String, () -> Void)]) -> [String: Double] {
    var times: [String: [Double]] = [:]
    for (_, body) in variants { body() }
    for _ in 0..<runs {
        for (name, body) in variants {
            let t0 = processCPUTime()
            body()
            times[name, default: []].append(processCPUTime() - t0)
        }
    }
    return times.mapValues { $0.sorted()[$0.count / 2] }
}

let kernelNames = ["scalar", "AVX2", "AVX-VNNI", "AVX512-VNNI"]
let gemmThreads = args.contains("--threads2") ? 2 : 1
let block0 = weights.encoderBlocks[0]
let encoderShapes: [(String, Linear, Int)] = [
    ("conv1", weights.conv1, 3000), ("conv2", weights.conv2, 1500), ("qkv", block0.qkv, 1500),
    ("attn out", block0.attentionOut, 1500), ("fc1", block0.mlpUp, 1500), ("fc2", block0.mlpDown, 1500),
]
let shapesToRun = args.contains("--all-shapes") ? encoderShapes : encoderShapes.filter { ["fc1", "fc2"].contains($0.0) }
print("\nGEMM x[m, k] · Wᵀ[k, n], \(gemmThreads) thread(s), group \(group), median CPU time of 9 runs (5 at 4 bits); GOP/s; xR = sgemm time / this time")
for (name, layer, m) in shapesToRun {
    let f = layer.weight as! FloatMatrix
    let k = f.inFeatures, n = f.outFeatures
    let ops = 2.0 * Double(m * n * k)
    let xm = (0..<(m * k)).map { Float(sin(Double($0) * 0.37)) }
    var ym = [Float](repeating: 0, count: m * n)
    for bits in QuantizedMatrix.supportedBits {
        let q = try QuantizedMatrix(quantizing: f.values, outFeatures: n, inFeatures: k, bits: bits, groupSize: group)
        let deq = FloatMatrix(outFeatures: n, inFeatures: k, values: q.dequantized())
        let qf = q.withActivationPrecision(.float)
        var variants: [(String, () -> Void)] = [("sgemm", { deq.multiply(xm, rows: m, threads: gemmThreads, into: &ym) })]
        let kernels: [Int32] = bits == 4 ? [0, 1, 2, 3] : [mq_q8_kernel()]
        for kern in kernels {
            mq_set_q8_kernel(kern)
            guard mq_q8_kernel() == kern else { continue }
            variants.append((kernelNames[Int(kern)], {
                mq_set_q8_kernel(kern)
                q.multiply(xm, rows: m, threads: gemmThreads, into: &ym)
            }))
        }
        mq_set_q8_kernel(-1)
        if bits == 4 { variants.append(("float-act", { qf.multiply(xm, rows: m, threads: gemmThreads, into: &ym) })) }
        let t = medians(bits == 4 ? 5 : 9, variants)
        mq_set_q8_kernel(-1)
        let tf = t["sgemm"]!
        var line = name.padding(toLength: 9, withPad: " ", startingAt: 0)
            + String(format: "[%4d,%4d]x[%4d,%4d] %d-bit  sgemm %6.2f ms %5.1f", m, k, k, n, bits, tf * 1e3, ops / tf / 1e9)
        for (v, _) in variants.dropFirst() {
            line += String(format: " | %@ %6.2f ms %5.1f x%.2f", v, t[v]! * 1e3, ops / t[v]! / 1e9, tf / t[v]!)
        }
        print(line)
    }
}

// Rotated layers rotate x's blocks as they quantize them.
do {
    let f = block0.mlpUp.weight as! FloatMatrix
    let m = 1500, k = f.inFeatures, n = f.outFeatures
    let xm = (0..<(m * k)).map { Float(sin(Double($0) * 0.37)) }
    var ym = [Float](repeating: 0, count: m * n)
    let plain = try QuantizedMatrix(quantizing: f.values, outFeatures: n, inFeatures: k, bits: 4, groupSize: group)
    let rotated = try QuantizedMatrix(quantizing: f.values, outFeatures: n, inFeatures: k, bits: 4, groupSize: group, rotated: true)
    let t = medians(9, [("plain", { plain.multiply(xm, rows: m, threads: gemmThreads, into: &ym) }),
                        ("rotated", { rotated.multiply(xm, rows: m, threads: gemmThreads, into: &ym) })])
    print(String(format: "fc1 4-bit int8: plain %.2f ms, rotated %.2f ms (x%.2f)", t["plain"]! * 1e3, t["rotated"]! * 1e3,
                 t["plain"]! / t["rotated"]!))
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
