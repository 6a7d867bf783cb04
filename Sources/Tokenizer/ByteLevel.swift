/// GPT-2's reversible mapping between bytes and printable Unicode scalars.
///
/// Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space,
/// DEL, NBSP, soft hyphen...) map in increasing order to U+0100, U+0101, ...
/// so that every byte string becomes a string of visible characters (space is `Ġ`).
public enum ByteLevel {
    /// The scalar standing for each byte, indexed by byte value.
    public static let scalarForByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            let printable = (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte)
                || (0xAE...0xFF).contains(byte)
            if printable {
                table[byte] = Unicode.Scalar(UInt32(byte))!
            } else {
                table[byte] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The byte a scalar stands for, or nil when the scalar is not a byte-level symbol.
    public static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        byteForScalar[scalar.value]
    }

    private static let byteForScalar: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (byte, scalar) in scalarForByte.enumerated() { map[scalar.value] = UInt8(byte) }
        return map
    }()

    /// The byte-level string for raw bytes (e.g. `[0x20, 0x61]` -> `"Ġa"`).
    public static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var scalars = String.UnicodeScalarView()
        for b in bytes { scalars.append(scalarForByte[Int(b)]) }
        return String(scalars)
    }

    /// The raw bytes of a byte-level string. Scalars outside the mapping (as in special
    /// tokens such as `<|en|>`, which are plain ASCII and do map) are encoded as UTF-8.
    public static func decode(_ symbol: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(symbol.unicodeScalars.count)
        for scalar in symbol.unicodeScalars {
            if let b = byteForScalar[scalar.value] {
                out.append(b)
            } else {
                out.append(contentsOf: Array(String(scalar).utf8))
            }
        }
        return out
    }
}
