import CKernels
#if canImport(Glibc)
import Glibc
#endif

/// A failure to keep a build's layers in a file.
public enum LayerFileError: Error, Equatable, CustomStringConvertible {
    /// No file could be made in the directory.
    case cannotOpen(directory: String, reason: String)
    /// Writing a layer or mapping it back failed (a full disk, for example).
    case cannotWrite(directory: String, reason: String)

    /// A message naming what failed and the system's reason.
    public var description: String {
        switch self {
        case let .cannotOpen(directory, reason): return "cannot make a file for the model's layers in \(directory): \(reason)"
        case let .cannotWrite(directory, reason): return "cannot write the model's layers to a file in \(directory): \(reason)"
        }
    }
}

/// Where a build puts its quantized layers instead of anonymous memory: an unnamed file in a directory on disk
/// (`mq_open_unnamed_file`). Each layer's codes and scales are written to it as soon as they are made (a large layer
/// chunk by chunk, `Quantizer`) and mapped back read-only and shared (`ByteStorage.mapping(descriptor:offset:count:)`).
///
/// So a build holds none of the model it makes in its resident set until the model is read (its self-check, then
/// serving), and the model in service is clean page cache once written back, which the kernel may drop under memory
/// pressure and read again, as whisper.cpp and llama.cpp serve a mapped model file. The file has no name: nothing is
/// left in the directory, and its blocks are freed when the model's last mapping goes. The daemon gives its state
/// directory: the weights are made from the user's statistics (aggregates, as `statistics.myqs` is).
///
/// A directory in memory (tmpfs, ramfs) is refused (`open` returns nil): pages written there are memory all the
/// same, only not counted in the process's resident set. Used by one build at a time, from one thread.
public final class LayerFile: @unchecked Sendable {   // unchecked: one build writes it, from one thread
    /// The directory the file was made in (for messages).
    public let directory: String
    private let descriptor: Int32
    /// Bytes reserved so far (a page multiple: every region starts on a page, as a mapping must).
    private var end = 0
    private static let page = Int(sysconf(Int32(_SC_PAGESIZE)))

    private init(directory: String, descriptor: Int32) {
        self.directory = directory
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }   // the mappings keep the file itself

    /// A new unnamed file in `directory`, or nil when the directory is in memory (tmpfs, ramfs).
    public static func open(directory: String) throws -> LayerFile? {
        let fd = mq_open_unnamed_file(directory)
        guard fd >= 0 else { throw LayerFileError.cannotOpen(directory: directory, reason: String(cString: strerror(errno))) }
        let file = LayerFile(directory: directory, descriptor: fd)
        switch mq_is_in_memory_file(fd) {
        case 0: return file
        case 1: return nil
        default: throw LayerFileError.cannotOpen(directory: directory, reason: String(cString: strerror(errno)))
        }
    }

    /// A page-aligned region of `count` bytes at the end of the file: its offset, for `write` and `map`.
    func reserve(_ count: Int) -> Int {
        let offset = end
        end += (count + Self.page - 1) / Self.page * Self.page
        return offset
    }

    /// Writes `bytes` at `offset` (inside a region from `reserve`).
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw LayerFileError.cannotWrite(directory: directory, reason: String(cString: strerror(errno))) }
            done += n
        }
    }

    /// The region at `offset`, `count` bytes, mapped read-only.
    func map(offset: Int, count: Int) throws -> ByteStorage {
        do {
            return try ByteStorage.mapping(descriptor: descriptor, offset: offset, count: count)
        } catch {
            throw LayerFileError.cannotWrite(directory: directory, reason: "\(error)")
        }
    }

    /// A matrix of `outFeatures` rows whose codes and scales `fill` writes into a new region of the file (`packed` at
    /// region offset 0, `scales` right after it, at the offsets `fill` is given), mapped back.
    func matrix(outFeatures: Int, inFeatures: Int, bits: Int, groupSize: Int, rotated: Bool,
                fill: (_ packedOffset: Int, _ scalesOffset: Int) throws -> Void) throws -> QuantizedMatrix {
        let packedCount = QuantizedMatrix.packedByteCount(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits,
                                                          groupSize: groupSize)
        let scalesCount = QuantizedMatrix.scaleByteCount(outFeatures: outFeatures, inFeatures: inFeatures, groupSize: groupSize)
        let offset = reserve(packedCount + scalesCount)
        try fill(offset, offset + packedCount)
        let region = try map(offset: offset, count: packedCount + scalesCount)
        return try QuantizedMatrix(outFeatures: outFeatures, inFeatures: inFeatures, bits: bits, groupSize: groupSize,
                                   packed: region.slice(offset: 0, count: packedCount),
                                   scales: region.slice(offset: packedCount, count: scalesCount), rotated: rotated)
    }

    /// `matrix` with its codes and scales moved into the file (its own storage is freed with it).
    public func place(_ matrix: QuantizedMatrix) throws -> QuantizedMatrix {
        try matrix.packed.withUnsafeBytes { packed in
            try matrix.scales.withUnsafeBytes { scales in
                try self.matrix(outFeatures: matrix.outFeatures, inFeatures: matrix.inFeatures, bits: matrix.bits,
                                groupSize: matrix.groupSize, rotated: matrix.rotated) { packedOffset, scalesOffset in
                    try write(packed, at: packedOffset)
                    try write(scales, at: scalesOffset)
                }
            }
        }.withActivationPrecision(matrix.activationPrecision)
    }
}
