import Units
import XCTest
@testable import Quantization

final class AllocatorTests: XCTestCase {
    /// Six layers of different shapes and sensitivities (network order).
    let layers = [
        AllocationLayer(name: "l0", outFeatures: 64, inFeatures: 64, sensitivity: 0.5),
        AllocationLayer(name: "l1", outFeatures: 128, inFeatures: 64, sensitivity: 0.1),
        AllocationLayer(name: "l2", outFeatures: 64, inFeatures: 128, sensitivity: 2.0),
        AllocationLayer(name: "l3", outFeatures: 32, inFeatures: 64, sensitivity: 0.3),
        AllocationLayer(name: "l4", outFeatures: 64, inFeatures: 64, sensitivity: 1.0),
        AllocationLayer(name: "l5", outFeatures: 256, inFeatures: 64, sensitivity: 0.1),
    ]
    let fixed = 1000

    func allocator(_ order: SensitivityOrder = .ascending) throws -> BitAllocator {
        try BitAllocator(layers: layers, fixedBytes: fixed, groupSize: 64, order: order)
    }

    func levelIndex(_ bits: Int) -> Int { BitAllocator.defaultAllowedBits.firstIndex(of: bits)! }

    func testUniformityConstraintAndStoppingAtEveryBudget() throws {
        let a = try allocator()
        let top = try a.uniformBytes(bits: 8), bottom = try a.uniformBytes(bits: 2)
        var budget = top + 10
        var previousTotal = Int.max
        while budget >= bottom {
            let result = try a.allocate(budget: budget)
            XCTAssertLessThanOrEqual(result.totalBytes, budget)
            let levels = result.bits.map(levelIndex)
            XCTAssertLessThanOrEqual(levels.max()! - levels.min()!, 1, "uniformity at budget \(budget): \(result.bits)")
            // Stops as soon as it fits: undoing the last step would be over budget.
            if result.steps > 0 {
                let before = try replay(a, steps: result.steps - 1)
                XCTAssertGreaterThan(before.total, budget, "budget \(budget): the sweep went one step too far")
                XCTAssertEqual(try replay(a, steps: result.steps).levels, levels)
            }
            XCTAssertLessThanOrEqual(result.totalBytes, previousTotal, "a smaller budget never gives a larger model")
            previousTotal = result.totalBytes
            budget -= 997
        }
    }

    /// Independent re-implementation of "lower `steps` layers in order, wrapping around".
    func replay(_ a: BitAllocator, steps: Int) throws -> (levels: [Int], total: Int) {
        var levels = [Int](repeating: levelIndex(8), count: layers.count)
        let sequence = a.loweringOrder
        var done = 0, k = 0
        while done < steps {
            let i = sequence[k % sequence.count]
            if levels[i] > 0 { levels[i] -= 1; done += 1 }
            k += 1
        }
        let total = fixed + levels.indices.reduce(0) { sum, i in
            sum + BitAllocator.quantizedByteSize(outFeatures: layers[i].outFeatures, inFeatures: layers[i].inFeatures,
                                                 bits: BitAllocator.defaultAllowedBits[levels[i]], groupSize: 64)
        }
        return (levels, total)
    }

    func testStartFitsMeansNoLowering() throws {
        let a = try allocator()
        let result = try a.allocate(budget: try a.uniformBytes(bits: 8))
        XCTAssertEqual(result.bits, [Int](repeating: 8, count: 6))
        XCTAssertEqual(result.steps, 0)
        let fromSix = try a.allocate(budget: 1 << 30, startBits: 6)
        XCTAssertEqual(fromSix.bits, [Int](repeating: 6, count: 6))
    }

    func testDirectionChoosesWhichEndLosesBitsFirst() throws {
        let asc = try allocator(.ascending), desc = try allocator(.descending)
        // Just under the 8-bit size: exactly one layer must drop, the first in the order.
        let budget = try asc.uniformBytes(bits: 8) - 1
        let a = try asc.allocate(budget: budget), d = try desc.allocate(budget: budget)
        XCTAssertEqual(a.steps, 1)
        XCTAssertEqual(d.steps, 1)
        // Ascending: the least sensitive layer (l1 and l5 tie at 0.1; network order breaks it: l1).
        XCTAssertEqual(a.bits, [8, 6, 8, 8, 8, 8])
        // Descending: the most sensitive layer, l2.
        XCTAssertEqual(d.bits, [8, 8, 6, 8, 8, 8])
        XCTAssertEqual(asc.loweringOrder, [1, 5, 3, 0, 4, 2])
        XCTAssertEqual(desc.loweringOrder, [2, 4, 0, 3, 1, 5])
        // 7 is not a width: one step from 8 is 6.
        XCTAssertFalse(a.bits.contains(7))
    }

    func testSecondPassStartsFromTheSameEnd() throws {
        let a = try allocator()
        // Below the all-6 size: a second pass is needed and it starts with l1 again.
        let budget = try a.uniformBytes(bits: 6) - 1
        let result = try a.allocate(budget: budget)
        XCTAssertEqual(result.steps, 7)
        XCTAssertEqual(result.bits, [6, 5, 6, 6, 6, 6])
    }

    func testImpossibleBudgetStatesTheSmallestSize() throws {
        let a = try allocator()
        let smallest = try a.uniformBytes(bits: 2)
        XCTAssertThrowsError(try a.allocate(budget: smallest - 1)) { error in
            XCTAssertEqual(error as? BitAllocationError,
                           .budgetTooSmall(budget: smallest - 1, smallest: smallest, lowestBits: 2))
            let message = "\(error)"
            XCTAssertTrue(message.contains("\(smallest) bytes"), message)
            XCTAssertTrue(message.contains(ByteSize.formatExact(smallest)), message)
        }
        XCTAssertEqual(try a.allocate(budget: smallest).bits, [Int](repeating: 2, count: 6))
        XCTAssertThrowsError(try a.allocate(budget: 1 << 30, startBits: 7))
        XCTAssertThrowsError(try a.uniform(bits: 7)) { error in
            XCTAssertTrue("\(error)".contains("2, 3, 4, 5, 6, 8"))
        }
    }

    func testAccountingEqualsRealQuantizedMatrixSizes() throws {
        let a = try allocator()
        let result = try a.allocate(budget: try a.uniformBytes(bits: 4) + 3000)
        var real = fixed
        for (i, l) in layers.enumerated() {
            let values = (0..<(l.outFeatures * l.inFeatures)).map { Float(($0 * 37) % 11) - 5 }
            let q = try QuantizedMatrix(quantizing: values, outFeatures: l.outFeatures, inFeatures: l.inFeatures,
                                        bits: result.bits[i], groupSize: 64)
            XCTAssertEqual(q.byteSize, result.layerBytes[i], l.name)
            real += q.byteSize
        }
        XCTAssertEqual(result.totalBytes, real)
        // Odd shapes: the padded last group is counted too.
        for bits in BitAllocator.defaultAllowedBits {
            let q = try QuantizedMatrix(quantizing: [Float](repeating: 0.5, count: 3 * 100), outFeatures: 3,
                                        inFeatures: 100, bits: bits, groupSize: 32)
            XCTAssertEqual(BitAllocator.quantizedByteSize(outFeatures: 3, inFeatures: 100, bits: bits, groupSize: 32),
                           q.byteSize)
        }
    }

    // MARK: widths by expected error

    /// Errors of the form the estimate gives: a constant per layer times 4^(1 − bits).
    func errors(_ constants: [Double]) -> [[Double]] {
        constants.map { c in BitAllocator.defaultAllowedBits.map { c * pow(4, Double(1 - $0)) } }
    }

    func testExpectedErrorUnderTheUniformityConstraintRaisesTheMostErrorPerByte() throws {
        let a = try allocator()
        let constants: [Double] = [5, 1, 40, 0.2, 3, 8]
        let u4 = try a.uniformBytes(bits: 4), u5 = try a.uniformBytes(bits: 5)
        for budget in stride(from: u4, through: u5 + 10, by: (u5 - u4) / 7) {
            let result = try a.allocate(budget: budget, errors: errors(constants), adjacentWidths: true)
            XCTAssertLessThanOrEqual(result.totalBytes, budget)
            XCTAssertTrue(result.bits.allSatisfy { $0 == 4 || $0 == 5 } || budget >= u5, "\(result.bits)")
            // Every layer left at 4 bits either would not fit or removes less error per byte than every raised one.
            let cost = { (i: Int, bits: Int) in BitAllocator.quantizedByteSize(outFeatures: self.layers[i].outFeatures,
                                                                             inFeatures: self.layers[i].inFeatures, bits: bits, groupSize: 64) }
            let gain = { (i: Int) in constants[i] * (pow(4, -3) - pow(4, -4)) / Double(cost(i, 5) - cost(i, 4)) }
            let raised = result.bits.indices.filter { result.bits[$0] == 5 }
            for i in result.bits.indices where result.bits[i] == 4 {
                let fits = result.totalBytes + cost(i, 5) - cost(i, 4) <= budget
                XCTAssertTrue(!fits || raised.allSatisfy { gain($0) >= gain(i) }, "budget \(budget): \(result.bits)")
            }
        }
        // Nothing to raise when every layer at the start width fits; a budget below 2 bits everywhere is refused.
        XCTAssertEqual(try a.allocate(budget: try a.uniformBytes(bits: 8), errors: errors(constants), adjacentWidths: true).bits,
                       [Int](repeating: 8, count: layers.count))
        XCTAssertThrowsError(try a.allocate(budget: try a.uniformBytes(bits: 2) - 1, errors: errors(constants), adjacentWidths: true))
    }

    func testExpectedErrorWithAnyWidthsSpendsTheBytesWhereTheErrorIs() throws {
        let a = try allocator()
        let constants: [Double] = [1, 1, 1e6, 1, 1, 1]
        let budget = try a.uniformBytes(bits: 3) + 2000
        let result = try a.allocate(budget: budget, errors: errors(constants), adjacentWidths: false)
        XCTAssertLessThanOrEqual(result.totalBytes, budget)
        XCTAssertEqual(result.bits[2], 8, "the layer with a million times the error gets the widest width")
        XCTAssertGreaterThan(Set(result.bits).count, 2, "more than two widths: \(result.bits)")
        // With the constraint the same budget keeps two adjacent widths.
        let constrained = try a.allocate(budget: budget, errors: errors(constants), adjacentWidths: true)
        XCTAssertLessThanOrEqual(Set(constrained.bits).count, 2)
        XCTAssertEqual(constrained.bits[2], 4)
    }
}
