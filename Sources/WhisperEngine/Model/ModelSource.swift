import Foundation

/// What a model name or path refers to, told by content rather than by name: a CTranslate2
/// Whisper model directory (float weights), or a myqasr quantized model file, recognised by its
/// first eight bytes whatever it is called (`me.myq`, `u4.q`). Every program decides a model's
/// kind here (`ModelLocator.source(for:)`) and loads it through `load()` (Quantization).
public enum ModelSource: Sendable, Equatable {
    /// A CTranslate2 Whisper model directory: `model.bin` (float16 or float32 weights), its
    /// configuration and vocabulary.
    case float(ModelDirectory)
    /// A quantized model file (docs/quantized-model-format.md) at `path`.
    case quantized(path: String)

    /// The 8 bytes every quantized model file starts with.
    public static let quantizedMagic: [UInt8] = Array("MYQMODEL".utf8)

    /// Whether the regular file at `path` starts with `quantizedMagic`.
    public static func isQuantizedModelFile(atPath path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        guard let head = try? handle.read(upToCount: quantizedMagic.count) else { return false }
        return Array(head) == quantizedMagic
    }

    /// Whether this is a quantized model file.
    public var isQuantized: Bool {
        if case .quantized = self { return true }
        return false
    }
}
