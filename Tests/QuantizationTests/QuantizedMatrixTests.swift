import CKernels
import Foundation
import WhisperEngine
import XCTest

@testable import Quantization

final class QuantizedMatrixTests: XCTestCase {
    // Shapes chosen so that no side is a multiple of anything convenient.
    private let outF = 37, inF = 200

    private func randomMatrix(_ out: Int, _ inp: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        // A few large outliers per row, like real weights.
        var v = rng.floats(out * inp, scale: 0.1)
        for r in 0..<out { v[r * inp + Int(rng.next() % UInt64(inp))] *= 8 }
        return v
    }

    override func tearDown() {
        mq_set_q8_kernel(-1)
        super.tearDown()
    }

    func testDequantizedWithinHalfScaleForEveryWidthAndGroup() throws {
        let w = randomMatrix(outF, inF, seed: 1)
        for bits in QuantizedMatrix.supportedBits {
            for group in QuantizedMatrix.supportedGroupSizes {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: group)
                let deq = q.dequantized(), scales = q.scaleValues(), codes = q.codes()
                let limit = QuantizedMatrix.codeLimit(bits: bits)
                XCTAssertEqual(limit, 1 << (bits - 1))
                XCTAssertEqual(deq.count, outF * inF)
                for r in 0..<outF {
                    for c in 0..<inF {
                        let s = scales[r * q.groupsPerRow + c / group]
                        let x = w[r * inF + c]
                        let err = abs(deq[r * inF + c] - x)
                        let code = Int(codes[r * q.blocksPerRow * 32 + c])
                        XCTAssertTrue((-limit...(limit - 1)).contains(code), "bits \(bits): code \(code) in range")
                        XCTAssertEqual(deq[r * inF + c], s * Float(code), "dequantized = scale · code")
                        if x / s <= Float(limit) - 0.5 {
                            XCTAssertLessThanOrEqual(err, abs(s) / 2 * 1.0001 + 1e-9, "bits \(bits) group \(group) [\(r), \(c)]")
                        } else {
                            // Beyond the short side of the grid (the side opposite the extreme).
                            XCTAssertEqual(code, limit - 1)
                            XCTAssertLessThanOrEqual(err, abs(s) * 1.0001 + 1e-9)
                        }
                    }
                    for c in inF..<(q.blocksPerRow * 32) {
                        XCTAssertEqual(codes[r * q.blocksPerRow * 32 + c], 0, "padding codes are zero")
                    }
                }
                // Each group's extreme weight lands on -limit (half-float rounding of the
                // scale may move it by one), and at 2-4 bits every one of the 2^bits codes occurs.
                for r in 0..<outF {
                    for g in 0..<q.groupsPerRow {
                        let c0 = r * q.blocksPerRow * 32 + g * group
                        let m = (c0..<(c0 + min(group, inF - g * group))).map { Int(codes[$0]) }.min()!
                        XCTAssertLessThanOrEqual(m, -limit + 1, "bits \(bits) group \(group) row \(r)")
                    }
                }
                if bits <= 4 {
                    let used = Set(codes.enumerated().filter { $0.offset % (q.blocksPerRow * 32) < inF }.map(\.element))
                    XCTAssertEqual(used.count, 1 << bits, "bits \(bits) group \(group): no code wasted")
                }
            }
        }
    }

    func testClippedValuesSitAtTheClipBound() throws {
        let w = randomMatrix(outF, inF, seed: 2)
        for bits in [2, 4, 6, 8] {
            let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: 64, clipRatio: 0.5)
            let deq = q.dequantized(), scales = q.scaleValues()
            let limit = Float(QuantizedMatrix.codeLimit(bits: bits))
            var clipped = 0
            for r in 0..<outF {
                for c in 0..<inF {
                    let s = scales[r * q.groupsPerRow + c / 64]
                    let x = w[r * inF + c], y = deq[r * inF + c]
                    let t = x / s   // position on the grid in codes
                    if t < -limit - 0.5 || t > limit - 0.5 {
                        clipped += 1
                        XCTAssertEqual(y, t < 0 ? -limit * s : (limit - 1) * s, "bits \(bits) [\(r), \(c)] clipped to the bound")
                    } else {
                        XCTAssertLessThanOrEqual(abs(x - y), abs(s) / 2 * 1.0001 + 1e-9)
                    }
                }
            }
            XCTAssertGreaterThan(clipped, outF, "clip ratio 0.5 must clip every row's outlier at \(bits) bits")
        }
    }

    func testPerGroupClipRatiosSetEachScale() throws {
        let w = randomMatrix(outF, inF, seed: 3)
        let groups = (inF + 31) / 32
        let ratios = (0..<(outF * groups)).map { Float(0.5) + Float($0 % 5) * 0.1 }
        let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: 4, groupSize: 32, clipRatios: ratios)
        let scales = q.scaleValues()
        for r in 0..<outF {
            for g in 0..<groups {
                let cols = g * 32..<min(inF, g * 32 + 32)
                let extreme = w[r * inF + cols.max { abs(w[r * inF + $0]) < abs(w[r * inF + $1]) }!]
                let expected = -ratios[r * groups + g] * extreme / 8   // 4 bits: the extreme maps to code -8
                XCTAssertEqual(scales[r * groups + g], expected, accuracy: abs(expected) * 1e-3, "half-float scale")
            }
        }
    }

    func testFloatActivationProductsMatchDequantizedReference() throws {
        let w = randomMatrix(outF, inF, seed: 4)
        var rng = SeededGenerator(seed: 40)
        for bits in QuantizedMatrix.supportedBits {
            for group in QuantizedMatrix.supportedGroupSizes {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: group)
                    .withActivationPrecision(.float)
                let deq = q.dequantized()
                // 1 and 3: GEMV over packed codes; 17 and 33: tiled GEMM.
                for m in [1, 3, 17, 33] {
                    let x = rng.floats(m * inF, scale: 1)
                    var y = [Float](repeating: .nan, count: m * outF)
                    q.multiply(x, rows: m, threads: 2, into: &y)
                    let ref = referenceProduct(x: x, rows: m, w: deq, out: outF, in: inF)
                    XCTAssertLessThan(maxAbsDifference(y, ref), 1e-4, "bits \(bits) group \(group) rows \(m)")
                }
            }
        }
    }

    /// The int8 path quantizes x per block of 32 to step d = max|x_block| / 127, so each
    /// activation moves by at most d/2 and each output by at most Σ_c |w_c| · d_c / 2.
    /// That bound (plus float rounding) is the stated tolerance.
    func testInt8ActivationsWithinRoundingBoundOfFloatPath() throws {
        let w = randomMatrix(outF, inF, seed: 5)
        var rng = SeededGenerator(seed: 50)
        for bits in QuantizedMatrix.supportedBits {
            for group in [32, 128] {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: group)
                XCTAssertEqual(q.activationPrecision, .int8)
                let deq = q.dequantized()
                for m in [1, 2, 5, 16] {
                    let x = rng.floats(m * inF, scale: 1)
                    var y = [Float](repeating: .nan, count: m * outF)
                    q.multiply(x, rows: m, threads: 2, into: &y)
                    let ref = referenceProduct(x: x, rows: m, w: deq, out: outF, in: inF)
                    var sumSq = 0.0, refSq = 0.0
                    for i in 0..<m {
                        let steps = stride(from: 0, to: inF, by: 32).map { c0 -> Float in
                            (c0..<min(inF, c0 + 32)).map { abs(x[i * inF + $0]) }.max()! / 127
                        }
                        for j in 0..<outF {
                            var bound: Float = 1e-4
                            for c in 0..<inF { bound += abs(deq[j * inF + c]) * steps[c / 32] / 2 }
                            let e = abs(y[i * outF + j] - ref[i * outF + j])
                            XCTAssertLessThanOrEqual(e, bound, "bits \(bits) group \(group) rows \(m) [\(i), \(j)]")
                            sumSq += Double(e * e)
                            refSq += Double(ref[i * outF + j] * ref[i * outF + j])
                        }
                    }
                    XCTAssertLessThan((sumSq / refSq).squareRoot(), 0.01, "relative RMS error of int8 activations")
                }
            }
        }
    }

    /// Code -128 (8 bits) times activation ±127 in every position is the extreme of the
    /// unsigned × signed byte products: each kernel must give the exact sum, no saturation.
    func testMostNegativeCodeDoesNotSaturateAnyKernel() throws {
        let inp = 64
        let w = [Float](repeating: -1, count: 2 * inp)
        let q = try QuantizedMatrix(quantizing: w, outFeatures: 2, inFeatures: inp, bits: 8, groupSize: 32)
        XCTAssertTrue(q.codes().allSatisfy { $0 == -128 })
        for kernel: Int32 in [0, 1, 2, 3] {
            mq_set_q8_kernel(kernel)
            for sign: Float in [1, -1] {
                var y = [Float](repeating: .nan, count: 2)
                q.multiply([Float](repeating: sign, count: inp), rows: 1, threads: 2, into: &y)
                XCTAssertEqual(y[0], -sign * Float(inp), accuracy: 1e-3, "kernel \(mq_q8_kernel())")
                XCTAssertEqual(y[1], -sign * Float(inp), accuracy: 1e-3, "kernel \(mq_q8_kernel())")
            }
        }
    }

    func testEveryInt8KernelAgreesWithScalar() throws {
        let out = 75, inp = 384
        let w = randomMatrix(out, inp, seed: 6)
        var rng = SeededGenerator(seed: 60)
        let x = rng.floats(5 * inp, scale: 1)
        for bits in QuantizedMatrix.supportedBits {
            let q = try QuantizedMatrix(quantizing: w, outFeatures: out, inFeatures: inp, bits: bits, groupSize: 64)
            mq_set_q8_kernel(0)
            XCTAssertEqual(mq_q8_kernel(), 0)
            var scalar = [Float](repeating: 0, count: 5 * out)
            q.multiply(x, rows: 5, threads: 2, into: &scalar)
            var floatPath = [Float](repeating: 0, count: 5 * out)
            q.withActivationPrecision(.float).multiply(x, rows: 5, threads: 2, into: &floatPath)
            let ref = referenceProduct(x: x, rows: 5, w: q.dequantized(), out: out, in: inp)
            XCTAssertLessThan(maxAbsDifference(floatPath, ref), 1e-4, "scalar float GEMV, bits \(bits)")
            for kernel in 1...3 {
                mq_set_q8_kernel(Int32(kernel))
                guard mq_q8_kernel() == Int32(kernel) else { continue }   // not on this CPU
                var y = [Float](repeating: 0, count: 5 * out)
                q.multiply(x, rows: 5, threads: 2, into: &y)
                XCTAssertLessThan(maxAbsDifference(y, scalar), 1e-4, "kernel \(kernel) bits \(bits)")
            }
            mq_set_q8_kernel(-1)
        }
    }

    func testLargeProductSplitAcrossThreadsMatchesSingleThread() throws {
        let out = 1000, inp = 384
        let w = randomMatrix(out, inp, seed: 7)
        var rng = SeededGenerator(seed: 70)
        let x = rng.floats(inp, scale: 1)
        let q = try QuantizedMatrix(quantizing: w, outFeatures: out, inFeatures: inp, bits: 4, groupSize: 32)
        XCTAssertGreaterThanOrEqual(out * inp, QuantizedMatrix.parallelWork)
        var two = [Float](repeating: 0, count: out), one = two
        q.multiply(x, rows: 1, threads: 2, into: &two)
        q.multiply(x, rows: 1, threads: 1, into: &one)
        XCTAssertEqual(one, two)
    }

    func testTiledProductSplitAcrossThreadsMatchesSingleThread() throws {
        // The float GEMM (dequantized tiles through sgemm). 1100 rows of W: two threads take 560 and 540 rows, in tiles of 512 and the rest,
        // while one thread takes tiles of 512, 512 and 76.
        let out = 1100, inp = 384, m = QuantizedMatrix.gemvRowLimit + 24
        var rng = SeededGenerator(seed: 71)
        let x = rng.floats(m * inp, scale: 1)
        for rotated in [false, true] {
            let q = try QuantizedMatrix(quantizing: randomMatrix(out, inp, seed: 9), outFeatures: out, inFeatures: inp,
                                        bits: 3, groupSize: 32, rotated: rotated).withActivationPrecision(.float)
            var two = [Float](repeating: .nan, count: m * out), one = two
            q.multiply(x, rows: m, threads: 2, into: &two)
            q.multiply(x, rows: m, threads: 1, into: &one)
            let ref = referenceProduct(x: x, rows: m, w: q.dequantized(), out: out, in: inp)
            XCTAssertLessThan(maxAbsDifference(two, ref), 1e-3, "two threads, rotated \(rotated)")
            XCTAssertLessThan(maxAbsDifference(one, two), 1e-4, "one against two threads, rotated \(rotated)")
        }
    }

    func testCopyRowIsTheDequantizedRow() throws {
        let w = randomMatrix(outF, inF, seed: 8)
        for bits in QuantizedMatrix.supportedBits {
            let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: 128)
            let deq = q.dequantized()
            var row = [Float](repeating: .nan, count: inF + 1)
            for r in [0, 17, outF - 1] {
                q.copyRow(r, into: &row)
                XCTAssertEqual(Array(row[0..<inF]), Array(deq[r * inF..<(r + 1) * inF]))
                XCTAssertTrue(row[inF].isNaN, "copyRow writes exactly inFeatures values")
            }
        }
    }

    func testByteSizeIsTheAllocatedPackedBytesPlusScales() throws {
        let w = randomMatrix(outF, inF, seed: 9)
        for bits in QuantizedMatrix.supportedBits {
            for group in QuantizedMatrix.supportedGroupSizes {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: group)
                let groups = (inF + group - 1) / group
                let packedBytes = outF * groups * group * bits / 8
                let scaleBytes = outF * groups * 2
                XCTAssertEqual(q.packed.count, packedBytes)
                XCTAssertEqual(q.scales.count, scaleBytes)
                XCTAssertEqual(q.byteSize, packedBytes + scaleBytes)
                XCTAssertFalse(q.packed.isMemoryMapped)
            }
        }
        // 4 bits, group 32: 0.5625 bytes per weight against 4 for float.
        let big = try QuantizedMatrix(quantizing: [Float](repeating: 0.5, count: 256 * 512), outFeatures: 256,
                                      inFeatures: 512, bits: 4, groupSize: 32)
        XCTAssertEqual(big.byteSize, 256 * 512 * 9 / 16)
    }

    func testRawStorageInitSharesBytesAndGivesSameProducts() throws {
        let w = randomMatrix(outF, inF, seed: 10)
        let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: 5, groupSize: 64)
        let raw = try QuantizedMatrix(outFeatures: outF, inFeatures: inF, bits: 5, groupSize: 64,
                                      packed: ByteStorage(copying: q.packed.bytes), scales: ByteStorage(copying: q.scales.bytes))
        XCTAssertEqual(raw.dequantized(), q.dequantized())
        let slice = try q.packed.slice(offset: 0, count: q.packed.count)
        XCTAssertEqual(slice.baseAddress, q.packed.baseAddress, "a slice shares memory")
        XCTAssertThrowsError(try QuantizedMatrix(outFeatures: outF, inFeatures: inF, bits: 5, groupSize: 64,
                                                 packed: q.packed.slice(offset: 1, count: q.packed.count - 1), scales: q.scales)) {
            XCTAssertEqual($0 as? QuantizedMatrixError,
                           .storageSize(what: "packed codes", expected: q.packed.count, actual: q.packed.count - 1))
        }
        XCTAssertThrowsError(try QuantizedMatrix(outFeatures: outF, inFeatures: inF, bits: 5, groupSize: 32,
                                                 packed: q.packed, scales: q.scales)) {
            XCTAssertNotNil($0 as? QuantizedMatrixError)
        }
        XCTAssertThrowsError(try q.packed.slice(offset: 10, count: q.packed.count)) {
            XCTAssertEqual($0 as? ByteStorageError, .sliceOutOfBounds(offset: 10, count: q.packed.count, storageCount: q.packed.count))
        }
    }

    func testInvalidArgumentsThrowClearErrors() {
        let w = [Float](repeating: 1, count: 64)
        func expect(_ error: QuantizedMatrixError, _ body: () throws -> QuantizedMatrix) {
            XCTAssertThrowsError(try body()) { XCTAssertEqual($0 as? QuantizedMatrixError, error) }
        }
        expect(.unsupportedBits(7)) { try QuantizedMatrix(quantizing: w, outFeatures: 2, inFeatures: 32, bits: 7, groupSize: 32) }
        expect(.unsupportedGroupSize(48)) { try QuantizedMatrix(quantizing: w, outFeatures: 2, inFeatures: 32, bits: 4, groupSize: 48) }
        expect(.valueCount(expected: 66, actual: 64)) { try QuantizedMatrix(quantizing: w, outFeatures: 2, inFeatures: 33, bits: 4, groupSize: 32) }
        expect(.badShape(outFeatures: 0, inFeatures: 32)) { try QuantizedMatrix(quantizing: [], outFeatures: 0, inFeatures: 32, bits: 4, groupSize: 32) }
        expect(.badClipRatio(index: 0, value: 0)) { try QuantizedMatrix(quantizing: w, outFeatures: 2, inFeatures: 32, bits: 4, groupSize: 32, clipRatio: 0) }
        expect(.clipCount(expected: 2, actual: 1)) { try QuantizedMatrix(quantizing: w, outFeatures: 2, inFeatures: 32, bits: 4, groupSize: 32, clipRatios: [1]) }
        var nan = w
        nan[40] = .nan
        expect(.nonFiniteWeight(row: 1, column: 8)) { try QuantizedMatrix(quantizing: nan, outFeatures: 2, inFeatures: 32, bits: 4, groupSize: 32) }
        XCTAssertTrue(QuantizedMatrixError.unsupportedBits(7).description.contains("2, 3, 4, 5, 6, 8"))
    }

    func testZeroGroupsAndTinyMatrices() throws {
        // An all-zero group has scale 0 and dequantizes to exact zeros; a 1x1 matrix works.
        var w = [Float](repeating: 0, count: 3 * 70)
        w[70 + 69] = 0.25
        let q = try QuantizedMatrix(quantizing: w, outFeatures: 3, inFeatures: 70, bits: 3, groupSize: 32)
        let deq = q.dequantized()
        XCTAssertEqual(deq.enumerated().filter { $0.element != 0 }.map(\.offset), [139], "zero groups stay exactly zero")
        XCTAssertEqual(q.scaleValues().filter { $0 != 0 }.count, 1)
        var y = [Float](repeating: .nan, count: 3)
        q.multiply([Float](repeating: 1, count: 70), rows: 1, threads: 2, into: &y)
        XCTAssertEqual(y[0], 0)
        XCTAssertEqual(y[1], 0.25, accuracy: 1e-3)
        let one = try QuantizedMatrix(quantizing: [-2], outFeatures: 1, inFeatures: 1, bits: 8, groupSize: 32)
        var z: Float = 0
        one.withActivationPrecision(.float).multiply([3], rows: 1, threads: 2, into: &z)
        XCTAssertEqual(z, -6, accuracy: 6 * 1e-3, "half-float scale 2/128, code -128")
        XCTAssertEqual(one.codes()[0], -128)
        XCTAssertEqual(one.scaleValues()[0], 2.0 / 128)
    }

    func testWholeNetworkQuantizedThroughReplacingRuns() throws {
        var rng = SeededGenerator(seed: 11)
        let weights = RandomWhisper.make(rng: &rng)
        let reference = RandomWhisper.run(weights)
        func quantize(_ bitsFor: (Int) -> Int) throws -> WhisperWeights {
            var replacements: [String: any WeightMatrix] = [:]
            for (i, layer) in weights.linearLayers.enumerated() {
                let f = layer.weight as! FloatMatrix
                replacements[layer.name] = try QuantizedMatrix(quantizing: f.values, outFeatures: f.outFeatures,
                                                               inFeatures: f.inFeatures, bits: bitsFor(i), groupSize: 32)
            }
            return weights.replacing(replacements)
        }
        func relativeError(_ out: [Float]) -> Double {
            var num = 0.0, den = 0.0
            for i in out.indices {
                num += Double((out[i] - reference[i]) * (out[i] - reference[i]))
                den += Double(reference[i] * reference[i])
            }
            return (num / den).squareRoot()
        }
        let mixed = try quantize { [8, 6, 5, 4, 3, 2][$0 % 6] }
        XCTAssertTrue(mixed.linearLayers.allSatisfy { $0.weight is QuantizedMatrix })
        XCTAssertLessThan(mixed.byteSize, weights.byteSize / 3)
        let out = RandomWhisper.run(mixed)
        XCTAssertEqual(out.count, reference.count)
        XCTAssertTrue(out.allSatisfy { $0.isFinite })
        XCTAssertLessThan(relativeError(out), 0.5, "2-8 bit network still tracks the float one")
        XCTAssertGreaterThan(relativeError(out), 0)
        let eight = RandomWhisper.run(try quantize { _ in 8 })
        XCTAssertLessThan(relativeError(eight), 0.02, "8-bit network is close to the float one")
    }
}
