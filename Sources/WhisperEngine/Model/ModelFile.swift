import CKernels
import Foundation

/// Element type of a variable stored in a CTranslate2 `model.bin`.
///
/// The raw values are the ones CTranslate2 writes (see `docs/ctranslate2-format.md`).
public enum StoredDType: UInt8, Sendable, CustomStringConvertible {
    case float32 = 0
    case int8 = 1
    case int16 = 2
    case int32 = 3
    case float16 = 4
    case bfloat16 = 5

    /// Size of one element in bytes.
    public var byteWidth: Int {
        switch self {
        case .int8: return 1
        case .int16, .float16, .bfloat16: return 2
        case .float32, .int32: return 4
        }
    }

    /// The name CTranslate2 uses for the type.
    public var description: String {
        switch self {
        case .float32: return "float32"
        case .int8: return "int8"
        case .int16: return "int16"
        case .int32: return "int32"
        case .float16: return "float16"
        case .bfloat16: return "bfloat16"
        }
    }
}

/// Why a model file could not be read. Every case names the file.
public enum ModelFileError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case truncated(path: String, offset: Int, needed: Int, what: String)
    case unsupportedVersion(path: String, version: UInt32)
    case wrongSpec(path: String, spec: String)
    case badDType(path: String, variable: String, code: UInt8)
    case sizeMismatch(path: String, variable: String, shape: [Int], dtype: String, bytes: Int)
    case danglingAlias(path: String, alias: String, target: String)
    case trailingBytes(path: String, count: Int)
    case missingVariable(path: String, name: String)
    case unexpectedShape(path: String, variable: String, shape: [Int], expected: [Int])
    case unexpectedDType(path: String, variable: String, dtype: String)
    case badConfig(path: String, reason: String)

    /// The message shown to the user: the file, then what is wrong.
    public var description: String {
        switch self {
        case let .unreadable(path, reason):
            return "\(path): cannot read model file: \(reason)"
        case let .truncated(path, offset, needed, what):
            return "\(path): file is truncated: needed \(needed) bytes for \(what) at offset \(offset)"
        case let .unsupportedVersion(path, version):
            return "\(path): unsupported CTranslate2 binary version \(version) (supported: 5 and 6)"
        case let .wrongSpec(path, spec):
            return "\(path): model spec is '\(spec)', expected 'WhisperSpec'"
        case let .badDType(path, variable, code):
            return "\(path): variable '\(variable)' has unknown dtype code \(code)"
        case let .sizeMismatch(path, variable, shape, dtype, bytes):
            return "\(path): variable '\(variable)' of shape \(shape) and dtype \(dtype) declares \(bytes) bytes"
        case let .danglingAlias(path, alias, target):
            return "\(path): alias '\(alias)' points at missing variable '\(target)'"
        case let .trailingBytes(path, count):
            return "\(path): \(count) unexpected bytes after the alias table"
        case let .missingVariable(path, name):
            return "\(path): required variable '\(name)' is missing"
        case let .unexpectedShape(path, variable, shape, expected):
            return "\(path): variable '\(variable)' has shape \(shape), expected \(expected)"
        case let .unexpectedDType(path, variable, dtype):
            return "\(path): variable '\(variable)' has dtype \(dtype), which this engine cannot use there"
        case let .badConfig(path, reason):
            return "\(path): \(reason)"
        }
    }
}

/// One named array of a CTranslate2 model file. `data` is a view of the file's bytes.
public struct StoredVariable: @unchecked Sendable {
    /// Full name, e.g. `encoder/layer_0/ffn/linear_0/weight`.
    public let name: String
    /// Dimensions, outermost first (row-major). Scalars have an empty shape.
    public let shape: [Int]
    /// Element type as stored.
    public let dtype: StoredDType
    /// Byte range of the values inside the file.
    let range: Range<Int>
    /// The mapped file the values live in.
    let file: Data
    /// Whether `file` is a read-only mapping of the file on disk (its pages can be handed back to the page
    /// cache, `HalfMatrix`), rather than bytes held in memory.
    let fileMapped: Bool

    /// Number of elements (1 for a scalar).
    public var count: Int { shape.reduce(1, *) }

    /// The values converted to `Float` (float16/bfloat16/ints widened).
    public func floats() -> [Float] {
        var out = [Float](repeating: 0, count: count)
        file.withUnsafeBytes { raw in
            let base = raw.baseAddress!.advanced(by: range.lowerBound)
            out.withUnsafeMutableBufferPointer { dst in
                switch dtype {
                case .float32:
                    memcpy(dst.baseAddress!, base, count * 4)
                case .float16:
                    mq_f16_to_f32(base.assumingMemoryBound(to: UInt16.self), dst.baseAddress!, count)
                case .bfloat16:
                    let src = base.assumingMemoryBound(to: UInt16.self)
                    for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src[i]) << 16) }
                case .int8:
                    let src = base.assumingMemoryBound(to: Int8.self)
                    for i in 0..<count { dst[i] = Float(src[i]) }
                case .int16:
                    let src = base.assumingMemoryBound(to: Int16.self)
                    for i in 0..<count { dst[i] = Float(src[i]) }
                case .int32:
                    let src = base.assumingMemoryBound(to: Int32.self)
                    for i in 0..<count { dst[i] = Float(src[i]) }
                }
            }
        }
        return out
    }

    /// The value of a scalar (or the first element) as an integer.
    public func intValue() -> Int {
        file.withUnsafeBytes { raw in
            let base = raw.baseAddress!.advanced(by: range.lowerBound)
            switch dtype {
            case .int8: return Int(base.load(as: Int8.self))
            case .int16: return Int(base.loadUnaligned(as: Int16.self))
            case .int32: return Int(base.loadUnaligned(as: Int32.self))
            case .float32: return Int(base.loadUnaligned(as: Float.self))
            case .float16: return Int(Float(Float16(bitPattern: base.loadUnaligned(as: UInt16.self))))
            case .bfloat16: return Int(Float(bitPattern: UInt32(base.loadUnaligned(as: UInt16.self)) << 16))
            }
        }
    }
}

/// A parsed CTranslate2 `model.bin`: the spec name and its variables, aliases resolved.
///
/// The file is memory-mapped; variables are views into it until converted.
public struct ModelFile: @unchecked Sendable {
    /// Path the file was read from (used in error messages).
    public let path: String
    /// Binary format version (5 or 6).
    public let binaryVersion: UInt32
    /// Spec name, `WhisperSpec` for Whisper models.
    public let specName: String
    /// Spec revision.
    public let specRevision: UInt32
    /// Variables by name, aliases included (an alias maps to the target's variable).
    public let variables: [String: StoredVariable]
    /// Alias name -> target name, as stored.
    public let aliases: [String: String]
    /// Whether the bytes are a read-only mapping of the file (one file read with `init(path:)`), not a copy.
    public let isFileMapped: Bool

    /// Reads and validates the file at `path`. Several paths are concatenated in order
    /// (a model split into parts).
    public init(path: String, parts: [String]? = nil) throws {
        let data: Data
        let mapped = !(parts.map { $0.count > 1 } ?? false)
        do {
            if !mapped, let parts {
                var joined = Data()
                for p in parts { joined.append(try Data(contentsOf: URL(fileURLWithPath: p))) }
                data = joined
            } else {
                data = try Data(contentsOf: URL(fileURLWithPath: parts?.first ?? path), options: .alwaysMapped)
            }
        } catch {
            throw ModelFileError.unreadable(path: path, reason: (error as NSError).localizedDescription)
        }
        try self.init(data: data, path: path, fileMapped: mapped)
    }

    /// Parses a model held in memory; `path` is used for messages only.
    public init(data: Data, path: String) throws {
        try self.init(data: data, path: path, fileMapped: false)
    }

    private init(data: Data, path: String, fileMapped: Bool) throws {
        self.path = path
        isFileMapped = fileMapped
        var reader = ByteReader(data: data, path: path)
        let version = try reader.u32("binary version")
        guard version == 5 || version == 6 else {
            throw ModelFileError.unsupportedVersion(path: path, version: version)
        }
        binaryVersion = version
        specName = try reader.string("spec name")
        guard specName == "WhisperSpec" else { throw ModelFileError.wrongSpec(path: path, spec: specName) }
        specRevision = try reader.u32("spec revision")
        let count = try reader.u32("variable count")
        var vars: [String: StoredVariable] = [:]
        for index in 0..<Int(count) {
            let name = try reader.string("name of variable \(index)")
            let rank = Int(try reader.u8("rank of '\(name)'"))
            var shape: [Int] = []
            for _ in 0..<rank { shape.append(Int(try reader.u32("shape of '\(name)'"))) }
            let code = try reader.u8("dtype of '\(name)'")
            guard let dtype = StoredDType(rawValue: code) else {
                throw ModelFileError.badDType(path: path, variable: name, code: code)
            }
            let bytes = Int(try reader.u32("size of '\(name)'"))
            guard bytes == shape.reduce(1, *) * dtype.byteWidth else {
                throw ModelFileError.sizeMismatch(path: path, variable: name, shape: shape,
                                                  dtype: dtype.description, bytes: bytes)
            }
            let range = try reader.skip(bytes, "values of '\(name)'")
            vars[name] = StoredVariable(name: name, shape: shape, dtype: dtype, range: range, file: data,
                                        fileMapped: fileMapped)
        }
        var aliasTable: [String: String] = [:]
        let aliasCount = try reader.u32("alias count")
        for _ in 0..<Int(aliasCount) {
            let alias = try reader.string("alias name")
            let target = try reader.string("target of alias '\(alias)'")
            guard let variable = vars[target] else {
                throw ModelFileError.danglingAlias(path: path, alias: alias, target: target)
            }
            aliasTable[alias] = target
            vars[alias] = variable
        }
        if reader.remaining > 0 { throw ModelFileError.trailingBytes(path: path, count: reader.remaining) }
        variables = vars
        aliases = aliasTable
    }

    /// The variable called `name`, or a `missingVariable` error.
    public func variable(_ name: String) throws -> StoredVariable {
        guard let v = variables[name] else { throw ModelFileError.missingVariable(path: path, name: name) }
        return v
    }

    /// The variable's values as floats after checking its shape.
    public func floats(_ name: String, shape expected: [Int]) throws -> [Float] {
        let v = try variable(name)
        guard v.shape == expected else {
            throw ModelFileError.unexpectedShape(path: path, variable: name, shape: v.shape, expected: expected)
        }
        switch v.dtype {
        case .float32, .float16, .bfloat16: return v.floats()
        default: throw ModelFileError.unexpectedDType(path: path, variable: name, dtype: v.dtype.description)
        }
    }
}

/// Little-endian cursor over the file with bounds checks that name what was being read.
private struct ByteReader {
    let data: Data
    let path: String
    var offset = 0

    var remaining: Int { data.count - offset }

    mutating func skip(_ n: Int, _ what: String) throws -> Range<Int> {
        guard n >= 0, remaining >= n else {
            throw ModelFileError.truncated(path: path, offset: offset, needed: n, what: what)
        }
        let start = data.startIndex + offset
        offset += n
        return (start - data.startIndex)..<(start - data.startIndex + n)
    }

    mutating func u8(_ what: String) throws -> UInt8 {
        let r = try skip(1, what)
        return data[data.startIndex + r.lowerBound]
    }

    mutating func u16(_ what: String) throws -> UInt16 {
        let r = try skip(2, what)
        return data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: r.lowerBound, as: UInt16.self) }
    }

    mutating func u32(_ what: String) throws -> UInt32 {
        let r = try skip(4, what)
        return data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: r.lowerBound, as: UInt32.self) }
    }

    /// A string stored as u16 length (including a terminating NUL) and its bytes.
    mutating func string(_ what: String) throws -> String {
        let n = Int(try u16("length of \(what)"))
        let r = try skip(n, what)
        let bytes = data[(data.startIndex + r.lowerBound)..<(data.startIndex + r.upperBound)]
        let trimmed = bytes.last == 0 ? bytes.dropLast() : bytes[...]
        return String(decoding: trimmed, as: UTF8.self)
    }
}
