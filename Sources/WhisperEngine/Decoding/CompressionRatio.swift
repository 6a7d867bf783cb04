import CZlib

/// Whisper's repetitiveness measure: UTF-8 length of `text` divided by the length of its zlib
/// compression at the default level (Python's `zlib.compress`). Repetitive, looping output
/// compresses well and scores high; Whisper re-decodes windows that score above 2.4.
/// Returns 0 for empty text, as Python does.
public func compressionRatio(of text: String) -> Double {
    let bytes = Array(text.utf8)
    guard !bytes.isEmpty else { return 0 }
    var capacity = compressBound(uLong(bytes.count))
    var out = [UInt8](repeating: 0, count: Int(capacity))
    let status = out.withUnsafeMutableBufferPointer { dst in
        bytes.withUnsafeBufferPointer { src in
            compress2(dst.baseAddress, &capacity, src.baseAddress, uLong(src.count), Z_DEFAULT_COMPRESSION)
        }
    }
    // compress2 only fails for lack of memory or an undersized buffer; compressBound rules out
    // the latter, and a ratio of 1 (incompressible) is the neutral answer for the former.
    guard status == Z_OK, capacity > 0 else { return 1 }
    return Double(bytes.count) / Double(capacity)
}
