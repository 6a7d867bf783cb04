import Foundation
import Units

/// Which end of the sensitivity ranking loses bits first.
///
/// Sensitivity is the median |output| of a layer (see `LayerActivationStatistics`). The
/// myQASR paper and its code disagree on the direction, so it is a setting. The default is
/// `descending`, chosen by measurement on tiny.en with two voices (docs/myqasr-method.md).
public enum SensitivityOrder: String, Sendable, CaseIterable, Codable {
    /// Layers with the smallest median |output| are lowered first.
    case ascending
    /// Layers with the largest median |output| are lowered first.
    case descending
}

/// One layer as the allocator sees it.
public struct AllocationLayer: Sendable, Equatable {
    /// Layer name (`Linear.name`).
    public var name: String
    /// Output features (rows of W).
    public var outFeatures: Int
    /// Input features (columns of W).
    public var inFeatures: Int
    /// The layer's sensitivity (median |output|); only its rank matters.
    public var sensitivity: Double

    /// Creates a layer description.
    public init(name: String, outFeatures: Int, inFeatures: Int, sensitivity: Double) {
        self.name = name
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.sensitivity = sensitivity
    }
}

/// The allocator's answer: a width per layer and what it costs.
public struct BitAllocation: Sendable, Equatable {
    /// Layer names, in the order the layers were given.
    public var names: [String]
    /// Bits per layer, parallel to `names`.
    public var bits: [Int]
    /// Bytes per layer's weight matrix at its width (codes plus scales), parallel to `names`.
    public var layerBytes: [Int]
    /// Bytes of everything that is not quantized (norms, biases, position tables).
    public var fixedBytes: Int
    /// Steps taken by the sweep (one per layer lowered); 0 in uniform mode or when the start fits.
    public var steps: Int

    /// `fixedBytes` plus every layer's bytes: the model's resident weight bytes.
    public var totalBytes: Int { fixedBytes + layerBytes.reduce(0, +) }

    /// Bits of the layer called `name`, if it is part of the allocation.
    public func bits(of name: String) -> Int? { names.firstIndex(of: name).map { bits[$0] } }
}

/// Errors of the bit allocator.
public enum BitAllocationError: Error, Equatable, CustomStringConvertible {
    /// Even with every layer at the lowest width the model is larger than the budget.
    case budgetTooSmall(budget: Int, smallest: Int, lowestBits: Int)
    /// A width outside the allowed list was asked for.
    case unsupportedBits(Int, allowed: [Int])
    /// The allowed list is empty or has a duplicate.
    case badAllowedBits([Int])
    /// The budget is not positive.
    case nonPositiveBudget(Int)

    /// A one-line explanation.
    public var description: String {
        switch self {
        case let .budgetTooSmall(budget, smallest, lowestBits):
            return "budget \(ByteSize.formatExact(budget)) cannot be met: the smallest reachable size, with every layer at "
                + "\(lowestBits) bits, is \(ByteSize.formatExact(smallest))"
        case let .unsupportedBits(bits, allowed):
            return "\(bits) bits is not a supported width; use one of \(allowed.map(String.init).joined(separator: ", "))"
        case let .badAllowedBits(list):
            return "the allowed widths \(list) must be a non-empty list without repeats"
        case let .nonPositiveBudget(budget):
            return "the budget must be positive, got \(budget) bytes"
        }
    }
}

/// myQASR's memory-driven bit allocation under the uniformity constraint.
///
/// Every layer starts at `startBits`. While the model is over budget, the layers are
/// visited in sensitivity order (see `SensitivityOrder`) and each is lowered by one step of
/// the allowed list (8 → 6 → 5 → 4 → 3 → 2: 7 is not a width); the sweep stops as soon as
/// the total fits. A pass that ends over budget is followed by another from the same end.
/// So at every point the layers sit on at most two adjacent widths.
public struct BitAllocator: Sendable {
    /// The widths the quantized matrices support, in increasing order.
    public static let defaultAllowedBits = [2, 3, 4, 5, 6, 8]

    /// The layers to allocate, in network order.
    public let layers: [AllocationLayer]
    /// Bytes of everything not quantized.
    public let fixedBytes: Int
    /// Allowed widths, increasing.
    public let allowedBits: [Int]
    /// The lowering order.
    public let order: SensitivityOrder
    /// Byte cost of layer `i` at each allowed width: `costs[i][w]` for `allowedBits[w]`.
    private let costs: [[Int]]

    /// An allocator over `layers`; `cost(layer, bits)` gives a layer's bytes at a width.
    public init(layers: [AllocationLayer], fixedBytes: Int, order: SensitivityOrder = .descending,
                allowedBits: [Int] = BitAllocator.defaultAllowedBits,
                cost: (AllocationLayer, Int) -> Int) throws {
        let sorted = allowedBits.sorted()
        guard !sorted.isEmpty, Set(sorted).count == sorted.count else { throw BitAllocationError.badAllowedBits(allowedBits) }
        self.layers = layers
        self.fixedBytes = fixedBytes
        self.order = order
        self.allowedBits = sorted
        costs = layers.map { l in sorted.map { cost(l, $0) } }
    }

    /// An allocator whose costs are the exact `QuantizedMatrix` sizes (codes plus half-float
    /// scales) at `groupSize`.
    public init(layers: [AllocationLayer], fixedBytes: Int, groupSize: Int, order: SensitivityOrder = .descending,
                allowedBits: [Int] = BitAllocator.defaultAllowedBits) throws {
        try self.init(layers: layers, fixedBytes: fixedBytes, order: order, allowedBits: allowedBits) { l, bits in
            BitAllocator.quantizedByteSize(outFeatures: l.outFeatures, inFeatures: l.inFeatures,
                                           bits: bits, groupSize: groupSize)
        }
    }

    /// Bytes of a `QuantizedMatrix` of this shape: packed codes plus scales; 32 bits means
    /// float (4 bytes per weight).
    public static func quantizedByteSize(outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int) -> Int {
        if bits == 32 { return outFeatures * inFeatures * MemoryLayout<Float>.size }
        return QuantizedMatrix.packedByteCount(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits,
                                               groupSize: groupSize)
            + QuantizedMatrix.scaleByteCount(outFeatures: outFeatures, inFeatures: inFeatures, groupSize: groupSize)
    }

    /// Layer indices in the order they lose bits: by sensitivity in `order`, ties in network order.
    public var loweringOrder: [Int] {
        layers.indices.sorted { a, b in
            let sa = layers[a].sensitivity, sb = layers[b].sensitivity
            if sa != sb { return order == .ascending ? sa < sb : sa > sb }
            return a < b
        }
    }

    /// The total bytes with every layer at `bits` (an allowed width).
    public func uniformBytes(bits: Int) throws -> Int {
        try uniform(bits: bits).totalBytes
    }

    /// Every layer at one width (`--uniform`).
    public func uniform(bits: Int) throws -> BitAllocation {
        guard let w = allowedBits.firstIndex(of: bits) else {
            throw BitAllocationError.unsupportedBits(bits, allowed: allowedBits)
        }
        return allocation(levels: [Int](repeating: w, count: layers.count), steps: 0)
    }

    /// The myQASR sweep: the first configuration, starting from `startBits` everywhere and
    /// lowering layers one step at a time in sensitivity order, whose total fits `budget`.
    public func allocate(budget: Int, startBits: Int = 8) throws -> BitAllocation {
        guard budget > 0 else { throw BitAllocationError.nonPositiveBudget(budget) }
        guard let start = allowedBits.firstIndex(of: startBits) else {
            throw BitAllocationError.unsupportedBits(startBits, allowed: allowedBits)
        }
        let smallest = fixedBytes + costs.reduce(0) { $0 + $1[0] }
        guard smallest <= budget else {
            throw BitAllocationError.budgetTooSmall(budget: budget, smallest: smallest, lowestBits: allowedBits[0])
        }
        var levels = [Int](repeating: start, count: layers.count)
        var total = fixedBytes + costs.reduce(0) { $0 + $1[start] }
        var steps = 0
        let sequence = loweringOrder
        // Each pass lowers every layer from level L to L - 1; it ends early once the total fits.
        // Terminates: the level-0 total fits (checked above).
        while total > budget {
            for i in sequence {
                let from = levels[i]
                guard from > 0 else { continue }
                levels[i] = from - 1
                total += costs[i][from - 1] - costs[i][from]
                steps += 1
                if total <= budget { break }
            }
        }
        return allocation(levels: levels, steps: steps)
    }

    /// The widths that minimise the summed expected error of the layers under `budget`, each layer at
    /// most at `startBits`; `errors[i][w]` is layer `i`'s expected error at `allowedBits[w]` (decreasing
    /// in `w`). A greedy on error removed per byte:
    ///
    /// - `adjacentWidths` (the uniformity constraint): every layer at the widest width `N` whose uniform
    ///   model fits, then layers raised to the next width in order of `(error at N − error at N + 1) /
    ///   extra bytes` while they fit (a layer that does not fit is passed over, the next tried).
    /// - otherwise: every layer at the lowest width, then repeatedly the one step (one layer, one width
    ///   up) that removes the most error per extra byte among those that fit.
    ///
    /// `steps` counts the layers raised.
    public func allocate(budget: Int, errors: [[Double]], adjacentWidths: Bool, startBits: Int = 8) throws -> BitAllocation {
        guard budget > 0 else { throw BitAllocationError.nonPositiveBudget(budget) }
        guard let top = allowedBits.firstIndex(of: startBits) else {
            throw BitAllocationError.unsupportedBits(startBits, allowed: allowedBits)
        }
        precondition(errors.count == layers.count && errors.allSatisfy { $0.count == allowedBits.count },
                     "BitAllocator: one error per layer and width")
        func total(_ levels: [Int]) -> Int { fixedBytes + levels.indices.reduce(0) { $0 + costs[$1][levels[$1]] } }
        let smallest = total([Int](repeating: 0, count: layers.count))
        guard smallest <= budget else {
            throw BitAllocationError.budgetTooSmall(budget: budget, smallest: smallest, lowestBits: allowedBits[0])
        }
        var steps = 0
        if adjacentWidths {
            var base = top
            while base > 0 && total([Int](repeating: base, count: layers.count)) > budget { base -= 1 }
            var levels = [Int](repeating: base, count: layers.count)
            guard base < top else { return allocation(levels: levels, steps: 0) }
            var spare = budget - total(levels)
            let gain = layers.indices.map { i in
                (errors[i][base] - errors[i][base + 1]) / Double(max(1, costs[i][base + 1] - costs[i][base]))
            }
            for i in layers.indices.sorted(by: { gain[$0] != gain[$1] ? gain[$0] > gain[$1] : $0 < $1 }) {
                let extra = costs[i][base + 1] - costs[i][base]
                guard extra <= spare else { continue }
                levels[i] = base + 1
                spare -= extra
                steps += 1
            }
            return allocation(levels: levels, steps: steps)
        }
        var levels = [Int](repeating: 0, count: layers.count)
        var spare = budget - smallest
        while true {
            var best: (layer: Int, gain: Double)?
            for i in layers.indices where levels[i] < top {
                let extra = costs[i][levels[i] + 1] - costs[i][levels[i]]
                guard extra <= spare else { continue }
                let gain = (errors[i][levels[i]] - errors[i][levels[i] + 1]) / Double(max(1, extra))
                if best == nil || gain > best!.gain { best = (i, gain) }
            }
            guard let (i, _) = best else { break }
            spare -= costs[i][levels[i] + 1] - costs[i][levels[i]]
            levels[i] += 1
            steps += 1
        }
        return allocation(levels: levels, steps: steps)
    }

    private func allocation(levels: [Int], steps: Int) -> BitAllocation {
        BitAllocation(names: layers.map(\.name), bits: levels.map { allowedBits[$0] },
                      layerBytes: levels.indices.map { costs[$0][levels[$0]] },
                      fixedBytes: fixedBytes, steps: steps)
    }
}
