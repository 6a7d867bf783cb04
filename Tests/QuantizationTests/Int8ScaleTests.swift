import CKernels
import Foundation
import WhisperEngine
import XCTest

@testable import Quantization

/// Packed matrices whose group scales are int8 codes of a per-row half float (`ScaleEncoding.int8`).
final class Int8ScaleTests: XCTestCase {
    private let outF = 37, inF = 200

    private func randomMatrix(_ out: Int, _ inp: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        var v = rng.floats(out * inp, scale: 0.1)
        for r in 0..<out { v[r * inp + Int(rng.next() % UInt64(inp))] *= 8 }   // an outlier per row
        return v
    }

    override func tearDown() {
        mq_set_q8_kernel(-1)
        super.tearDown()
    }

    /// The row's grid step d and group codes, read back from the storage as documented.
    private func stored(_ q: QuantizedMatrix) -> (rows: [Float], codes: [Int8]) {
        let base = q.scales.baseAddress
        var rows = [Float](repeating: 0, count: q.outFeatures)
        mq_f16_to_f32(base.assumingMemoryBound(to: UInt16.self), &rows, q.outFeatures)
        rows = rows.map { $0 * (1 / 127 as Float) }   // the step: the row's largest |scale| / 127
        let codes = (0..<(q.outFeatures * q.groupsPerRow)).map {
            (base + q.outFeatures * 2).assumingMemoryBound(to: Int8.self)[$0]
        }
        return (rows, codes)
    }

    func testScalesAreTheRowScaleTimesAnInt8CodeCloseToTheHalfScale() throws {
        let w = randomMatrix(outF, inF, seed: 1)
        for bits in QuantizedMatrix.supportedBits {
            for group in QuantizedMatrix.supportedGroupSizes {
                let half = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: group)
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: bits, groupSize: group,
                                            clipRatio: 1, scaleEncoding: .int8)
                XCTAssertEqual(q.scaleEncoding, .int8)
                let (rows, codes) = stored(q)
                let scales = q.scaleValues(), halfScales = half.scaleValues()
                let deq = q.dequantized(), qc = q.codes()
                let groups = q.groupsPerRow
                for r in 0..<outF {
                    let rowCodes = codes[(r * groups)..<((r + 1) * groups)].map { Int($0) }
                    XCTAssertEqual(rowCodes.map(abs).max(), 127, "bits \(bits) group \(group) row \(r): the largest scale is code ±127")
                    for g in 0..<groups {
                        XCTAssertEqual(scales[r * groups + g], rows[r] * Float(rowCodes[g]), "scale = d · code")
                        // Rounded away from zero on the int8 grid: never smaller, by less than one step d
                        // (plus the half rounding of both).
                        let h = halfScales[r * groups + g], e = scales[r * groups + g]
                        XCTAssertGreaterThanOrEqual(abs(e), abs(h) * (1 - 2e-3))
                        XCTAssertLessThanOrEqual(abs(e), abs(h) * (1 + 2e-3) + rows[r])
                        XCTAssertEqual(e.sign, h.sign)
                    }
                    for c in 0..<inF {
                        let s = scales[r * groups + c / group]
                        XCTAssertEqual(deq[r * inF + c], s * Float(qc[r * q.blocksPerRow * 32 + c]), "dequantized = scale · code")
                        // Codes are rounded against the stored scale, which still reaches the extreme.
                        let x = w[r * inF + c], err = abs(deq[r * inF + c] - x)
                        if x / s <= Float(QuantizedMatrix.codeLimit(bits: bits)) - 0.5 {
                            XCTAssertLessThanOrEqual(err, abs(s) / 2 * 1.0001 + 1e-9, "bits \(bits) group \(group) [\(r), \(c)]")
                        } else {   // beyond the short side of the grid
                            XCTAssertLessThanOrEqual(err, abs(s) * 1.0001 + 1e-9)
                        }
                    }
                }
            }
        }
    }

    func testProductsMatchTheDequantizedReferenceInEveryKernel() throws {
        let out = 75, inp = 384
        let w = randomMatrix(out, inp, seed: 2)
        var rng = SeededGenerator(seed: 20)
        for bits in QuantizedMatrix.supportedBits {
            for group in QuantizedMatrix.supportedGroupSizes {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: out, inFeatures: inp, bits: bits, groupSize: group,
                                            clipRatio: 1, scaleEncoding: .int8)
                let deq = q.dequantized()
                for m in [1, 3, 17, 33] {   // GEMV over the codes (1, 3) and the tiled GEMM (17, 33)
                    let x = rng.floats(m * inp, scale: 1)
                    let ref = referenceProduct(x: x, rows: m, w: deq, out: out, in: inp)
                    var y = [Float](repeating: .nan, count: m * out)
                    q.withActivationPrecision(.float).multiply(x, rows: m, threads: 2, into: &y)
                    XCTAssertLessThan(maxAbsDifference(y, ref), 1e-4, "float path, bits \(bits) group \(group) rows \(m)")
                    guard m <= QuantizedMatrix.gemvRowLimit else { continue }
                    mq_set_q8_kernel(0)
                    var scalar = [Float](repeating: .nan, count: m * out)
                    q.multiply(x, rows: m, threads: 2, into: &scalar)
                    // int8 activations: within 1 % RMS of the float reference.
                    var err = 0.0, norm = 0.0
                    for (a, b) in zip(scalar, ref) {
                        err += Double((a - b) * (a - b))
                        norm += Double(b * b)
                    }
                    XCTAssertLessThan((err / norm).squareRoot(), 0.01, "scalar int8 kernel, bits \(bits) group \(group)")
                    for kernel: Int32 in 1...3 {
                        mq_set_q8_kernel(kernel)
                        guard mq_q8_kernel() == kernel else { continue }   // not on this CPU
                        var yk = [Float](repeating: .nan, count: m * out)
                        q.multiply(x, rows: m, threads: 2, into: &yk)
                        XCTAssertLessThan(maxAbsDifference(yk, scalar), 1e-4, "kernel \(kernel) bits \(bits) group \(group)")
                    }
                    mq_set_q8_kernel(-1)
                }
            }
        }
    }

    func testStorageIsHalfRowScalesThenInt8CodesAndCostsWhatGroup64HalvesCost() throws {
        let w = randomMatrix(outF, 256, seed: 3)
        for bits in QuantizedMatrix.supportedBits {
            for group in QuantizedMatrix.supportedGroupSizes {
                let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: 256, bits: bits, groupSize: group,
                                            clipRatio: 1, scaleEncoding: .int8)
                let groups = 256 / group
                XCTAssertEqual(q.scales.count, outF * 2 + outF * groups)
                XCTAssertEqual(q.scales.count, QuantizedMatrix.scaleByteCount(outFeatures: outF, inFeatures: 256,
                                                                              groupSize: group, encoding: .int8))
                XCTAssertEqual(q.byteSize, q.packed.count + q.scales.count)
                XCTAssertEqual(q.byteSize, BitAllocator.quantizedByteSize(outFeatures: outF, inFeatures: 256, bits: bits,
                                                                          groupSize: group, scaleEncoding: .int8))
            }
        }
        // Group 32 in int8 costs group 64 in halves plus the row scales (2 bytes a row).
        let g32 = QuantizedMatrix.scaleByteCount(outFeatures: 384, inFeatures: 1536, groupSize: 32, encoding: .int8)
        let g64 = QuantizedMatrix.scaleByteCount(outFeatures: 384, inFeatures: 1536, groupSize: 64, encoding: .half)
        XCTAssertEqual(g32, g64 + 384 * 2)
    }

    func testRawStorageKeepsTheEncodingAndRefusesTheWrongSize() throws {
        let w = randomMatrix(outF, inF, seed: 4)
        let q = try QuantizedMatrix(quantizing: w, outFeatures: outF, inFeatures: inF, bits: 3, groupSize: 64,
                                    clipRatio: 1, scaleEncoding: .int8)
        let raw = try QuantizedMatrix(outFeatures: outF, inFeatures: inF, bits: 3, groupSize: 64,
                                      packed: ByteStorage(copying: q.packed.bytes), scales: ByteStorage(copying: q.scales.bytes),
                                      scaleEncoding: .int8)
        XCTAssertEqual(raw.dequantized(), q.dequantized())
        // The same bytes read as half scales have the wrong size: refused, not misread.
        XCTAssertThrowsError(try QuantizedMatrix(outFeatures: outF, inFeatures: inF, bits: 3, groupSize: 64,
                                                 packed: q.packed, scales: q.scales)) {
            XCTAssertEqual($0 as? QuantizedMatrixError,
                           .storageSize(what: "scales", expected: outF * 4 * 2, actual: outF * 2 + outF * 4))
        }
        XCTAssertThrowsError(try QuantizedMatrix(codes: q.codes(), halfScales: [UInt16](repeating: 0, count: outF),
                                                 scaleCodes: [Int8](repeating: 1, count: outF * 4 - 1),
                                                 outFeatures: outF, inFeatures: inF, bits: 3, groupSize: 64)) {
            XCTAssertEqual($0 as? QuantizedMatrixError, .storageSize(what: "scales", expected: outF * 6, actual: outF * 6 - 1))
        }
    }

    func testZeroRowsAndTinyScalesStayFinite() throws {
        // A zero row (all scales 0), a row whose groups differ by far more than 127 steps, and a
        // normal row: the zero row stays zero and a tiny nonzero group keeps code ±1, never 0.
        let inp = 128
        var w = [Float](repeating: 0, count: 3 * inp)
        for c in 0..<inp { w[inp + c] = c < 32 ? 1 : 1e-4; w[2 * inp + c] = Float(c % 7) - 3 }
        let q = try QuantizedMatrix(quantizing: w, outFeatures: 3, inFeatures: inp, bits: 4, groupSize: 32,
                                    clipRatio: 1, scaleEncoding: .int8)
        let (rows, codes) = stored(q)
        XCTAssertEqual(rows[0], 0)
        XCTAssertEqual(Array(codes[0..<4]), [0, 0, 0, 0])
        XCTAssertEqual(codes[4].magnitude, 127)
        XCTAssertEqual(Array(codes[5..<8].map(\.magnitude)), [1, 1, 1], "tiny groups keep the smallest step")
        let deq = q.dequantized()
        XCTAssertTrue(deq.allSatisfy(\.isFinite))
        XCTAssertEqual(Array(deq[0..<inp]), [Float](repeating: 0, count: inp))
        XCTAssertEqual(deq[inp], 1, accuracy: 0.07)
    }
}
