import CKernels
import WhisperEngine
import XCTest

@testable import Quantization

/// The many-row int8 product (`mq_gemm_q8`, rows of x above `QuantizedMatrix.gemvRowLimit`):
/// every kernel this CPU has, every width and group size, rotated and not, shapes that are
/// multiples of nothing the kernels tile by (16 rows of W per panel, 2-6 rows of x per
/// micro-kernel call, 32 inputs per block, chunks of x and tiles of W).
final class Int8ProductTests: XCTestCase {
    override func tearDown() {
        mq_set_q8_kernel(-1)
        super.tearDown()
    }

    /// Kernels to check: 0 scalar, 1 AVX2, 2 AVX-VNNI, 3 AVX512-VNNI, those this CPU runs.
    private func availableKernels() -> [Int32] {
        let kernels = (Int32(0)...3).filter { k in
            mq_set_q8_kernel(k)
            return mq_q8_kernel() == k
        }
        mq_set_q8_kernel(-1)
        return kernels
    }

    /// A matrix whose products are exact in float: codes random over the whole range, scales
    /// ±2^-4 or ±2^-5 (exact half floats).
    private func exactMatrix(out: Int, in inp: Int, bits: Int, group: Int, rng: inout SeededGenerator) throws -> QuantizedMatrix {
        let groups = (inp + group - 1) / group, rowCodes = groups * group
        let limit = QuantizedMatrix.codeLimit(bits: bits)
        var codes = [Int8](repeating: 0, count: out * rowCodes)
        for r in 0..<out {
            for c in 0..<inp { codes[r * rowCodes + c] = Int8(Int(rng.next() % UInt64(2 * limit)) - limit) }
        }
        // Half bit patterns: 2^-4 is 0x2C00, 2^-5 is 0x2800; bit 15 is the sign.
        let halves = (0..<(out * groups)).map { _ -> UInt16 in
            (rng.next() % 2 == 0 ? 0x2C00 : 0x2800) | (rng.next() % 2 == 0 ? 0 : 0x8000)
        }
        return try QuantizedMatrix(codes: codes, halfScales: halves, outFeatures: out, inFeatures: inp, bits: bits,
                                   groupSize: group)
    }

    /// Activations that int8 quantization keeps exactly: per block of 32 a power-of-two step
    /// 2^e (e in -1...0), one entry ±127 steps (the block maximum) and the rest small
    /// multiples of the step (|v| <= 8 steps), so every product and partial sum is exact.
    private func exactActivations(rows m: Int, in inp: Int, rng: inout SeededGenerator) -> [Float] {
        var x = [Float](repeating: 0, count: m * inp)
        for i in 0..<m {
            for c0 in stride(from: 0, to: inp, by: 32) {
                let step: Float = rng.next() % 2 == 0 ? 0.5 : 1
                let n = min(32, inp - c0), peak = Int(rng.next() % UInt64(n))
                for c in 0..<n {
                    let v = c == peak ? (rng.next() % 2 == 0 ? 127 : -127) : Int(rng.next() % 17) - 8
                    x[i * inp + c0 + c] = Float(v) * step
                }
            }
        }
        return x
    }

    /// The exact product in Double from codes, scales and x (the arithmetic of every kernel
    /// when nothing rounds).
    private func exactProduct(_ q: QuantizedMatrix, x: [Float], rows m: Int) -> [Float] {
        let codes = q.codes(), scales = q.scaleValues(), rowCodes = q.blocksPerRow * 32
        var y = [Float](repeating: 0, count: m * q.outFeatures)
        for i in 0..<m {
            for j in 0..<q.outFeatures {
                var s = 0.0
                for c in 0..<q.inFeatures {
                    s += Double(scales[j * q.groupsPerRow + c / q.groupSize]) * Double(codes[j * rowCodes + c])
                        * Double(x[i * q.inFeatures + c])
                }
                y[i * q.outFeatures + j] = Float(s)
            }
        }
        return y
    }

    /// Where nothing rounds, every kernel, thread count and the GEMV give the exact integer
    /// result bit for bit: a wrong lane order, a lost tail block, a wrong panel or chunk edge
    /// or a wrong offset correction changes some output.
    func testEveryKernelIsExactWhereTheArithmeticIsExact() throws {
        var rng = SeededGenerator(seed: 90)
        // (rows of W, inputs, rows of x): 37 rows = 2 panels + 5; 200 inputs = 6 blocks + 8;
        // 530 rows of W and 263 rows of x cross a tile of W and a chunk of x (at 8 blocks:
        // 512 rows and 252 rows).
        let shapes = [(37, 200, 29), (16, 64, 17), (530, 240, 263)]
        for (out, inp, m) in shapes {
            for bits in QuantizedMatrix.supportedBits {
                for group in QuantizedMatrix.supportedGroupSizes where out < 100 || group == 64 {
                    let q = try exactMatrix(out: out, in: inp, bits: bits, group: group, rng: &rng)
                    let x = exactActivations(rows: m, in: inp, rng: &rng)
                    let expected = exactProduct(q, x: x, rows: m)
                    for kernel in availableKernels() {
                        mq_set_q8_kernel(kernel)
                        for threads in [1, 2] {
                            var y = [Float](repeating: .nan, count: m * out)
                            q.multiply(x, rows: m, threads: threads, into: &y)
                            XCTAssertEqual(y, expected, "\(out)x\(inp), \(m) rows, bits \(bits) group \(group) kernel \(kernel) threads \(threads)")
                        }
                        // The GEMV does the same integer arithmetic on a few rows.
                        var y5 = [Float](repeating: .nan, count: 5 * out)
                        q.multiply(x, rows: 5, threads: 2, into: &y5)
                        XCTAssertEqual(y5, Array(expected[0..<(5 * out)]), "GEMV, bits \(bits) group \(group) kernel \(kernel)")
                    }
                }
            }
        }
    }

    /// Real-valued weights and activations, rotated and not: the int8 GEMM is within the
    /// bound of rounding x to int8, Σ_c |w'_c| · step_c / 2 per output (w' the stored codes
    /// times scales, step_c the step of the block of x holding input c, in the stored basis),
    /// plus float rounding; and every kernel agrees with the scalar one to float rounding.
    func testWithinActivationRoundingBoundOfTheFloatProduct() throws {
        var rng = SeededGenerator(seed: 91)
        for rotated in [false, true] {
            let out = 45, inp = rotated ? 96 : 200, m = 23
            var w = rng.floats(out * inp, scale: 0.1)
            for r in 0..<out { w[r * inp + Int(rng.next() % UInt64(inp))] *= 8 }   // outliers, like real weights
            for bits in QuantizedMatrix.supportedBits {
                for group in QuantizedMatrix.supportedGroupSizes {
                    let q = try QuantizedMatrix(quantizing: w, outFeatures: out, inFeatures: inp, bits: bits,
                                                groupSize: group, rotated: rotated)
                    var x = rng.floats(m * inp, scale: 1)
                    for i in 0..<m { x[i * inp + Int(rng.next() % UInt64(inp))] *= 10 }   // an outlier per row
                    let ref = referenceProduct(x: x, rows: m, w: q.dequantized(), out: out, in: inp)
                    // The bound, in the stored basis (x rotated when the matrix is).
                    var xs = x
                    if rotated { mq_rotate_blocks(x, &xs, x.count, 0) }
                    let codes = q.codes(), scales = q.scaleValues(), rowCodes = q.blocksPerRow * 32
                    var bound = [Float](repeating: 0, count: m * out)
                    for i in 0..<m {
                        let steps = stride(from: 0, to: inp, by: 32).map { c0 in
                            (c0..<min(inp, c0 + 32)).map { abs(xs[i * inp + $0]) }.max()! / 127
                        }
                        for j in 0..<out {
                            var b: Float = 0
                            for c in 0..<inp {
                                b += abs(scales[j * q.groupsPerRow + c / group] * Float(codes[j * rowCodes + c])) * steps[c / 32] / 2
                            }
                            bound[i * out + j] = b * 1.001 + 1e-4
                        }
                    }
                    var scalar = [Float]()
                    for kernel in availableKernels() {
                        mq_set_q8_kernel(kernel)
                        var y = [Float](repeating: .nan, count: m * out)
                        q.multiply(x, rows: m, threads: 2, into: &y)
                        for e in y.indices {
                            XCTAssertLessThanOrEqual(abs(y[e] - ref[e]), bound[e],
                                                     "rotated \(rotated) bits \(bits) group \(group) kernel \(kernel) [\(e / out), \(e % out)]")
                        }
                        if kernel == 0 { scalar = y } else {
                            XCTAssertLessThan(maxAbsDifference(y, scalar), 1e-4, "kernel \(kernel) against scalar, bits \(bits)")
                        }
                    }
                }
            }
        }
    }

    /// The largest byte products: 8-bit code -128 and the 6-bit extremes -32 and 31 (the
    /// unsigned form's codes 0 and 63) against activations ±127 steps everywhere (x = ±63.5,
    /// step 0.5: exact). No kernel may saturate (the AVX2 form's int16 sums reach 32512).
    func testExtremeCodesDoNotSaturate() throws {
        let inp = 64, out = 20, m = 19
        let q8 = try QuantizedMatrix(quantizing: [Float](repeating: -1, count: out * inp), outFeatures: out, inFeatures: inp,
                                     bits: 8, groupSize: 32)
        XCTAssertTrue(q8.codes().allSatisfy { $0 == -128 })
        XCTAssertEqual(q8.scaleValues()[0], 1.0 / 128)
        var cases: [(QuantizedMatrix, Float)] = [(q8, -1)]   // matrix, code · scale
        for code: Int8 in [-32, 31] {
            let q6 = try QuantizedMatrix(codes: [Int8](repeating: code, count: out * inp),
                                         halfScales: [UInt16](repeating: 0x2800, count: out * 2),   // 2^-5
                                         outFeatures: out, inFeatures: inp, bits: 6, groupSize: 32)
            cases.append((q6, Float(code) / 32))
        }
        for (q, w) in cases {
            for kernel in availableKernels() {
                mq_set_q8_kernel(kernel)
                for x: Float in [63.5, -63.5] {
                    var y = [Float](repeating: .nan, count: m * out)
                    q.multiply([Float](repeating: x, count: m * inp), rows: m, threads: 2, into: &y)
                    XCTAssertEqual(y, [Float](repeating: w * x * Float(inp), count: m * out), "bits \(q.bits) w \(w) kernel \(kernel)")
                }
            }
        }
    }
}
