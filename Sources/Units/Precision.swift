/// How a model's precision is named to people: each layer's width in bits (32 is float),
/// summed up as "float", "4-bit" or "mixed 3-4-bit". The daemon's log and status and
/// `myqasrctl` all say it this way.
public enum Precision {
    /// "float" for 32 bits, else "4-bit".
    public static func name(bits: Int) -> String {
        bits == 32 ? "float" : "\(bits)-bit"
    }

    /// "float", "4-bit" (every layer at one width) or "mixed 3-4-bit" (the lowest and highest of
    /// several); "unknown precision" when no layer is given.
    public static func describe(_ layerBits: [String: Int]) -> String {
        let widths = Set(layerBits.values)
        guard let low = widths.min(), let high = widths.max() else { return "unknown precision" }
        return low == high ? name(bits: low) : "mixed \(low)-\(high)-bit"
    }
}
