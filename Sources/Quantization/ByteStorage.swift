import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failure to map a file into memory.
public enum ByteStorageError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened, inspected or mapped; `reason` is the system's message.
    case cannotMap(path: String, reason: String)
    /// A slice reaches past the end of its storage.
    case sliceOutOfBounds(offset: Int, count: Int, storageCount: Int)

    /// A message naming what failed.
    public var description: String {
        switch self {
        case let .cannotMap(path, reason):
            return "\(path): cannot map the file into memory: \(reason)"
        case let .sliceOutOfBounds(offset, count, storageCount):
            return "byte range \(offset)..<\(offset + count) lies outside storage of \(storageCount) bytes"
        }
    }
}

/// Read-only bytes that stay put in memory for their whole lifetime: either an owned
/// allocation (64-byte aligned) or a range of a read-only memory mapping of a file, so
/// that packed weights can be used straight from a model file without a copy.
/// Slices share their owner and keep it alive.
public final class ByteStorage: @unchecked Sendable {
    /// First byte (64-byte aligned for allocations, the file offset's alignment for mappings).
    public let baseAddress: UnsafeRawPointer
    /// Number of bytes.
    public let count: Int
    private let owner: Owner

    private final class Allocation {
        let pointer: UnsafeMutableRawPointer
        init(pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
        deinit { pointer.deallocate() }
    }

    private final class Mapping {
        let pointer: UnsafeMutableRawPointer?
        let length: Int
        init(pointer: UnsafeMutableRawPointer?, length: Int) {
            self.pointer = pointer
            self.length = length
        }
        deinit { if let pointer, length > 0 { munmap(pointer, length) } }
    }

    private enum Owner {
        case allocation(Allocation)
        case mapping(Mapping)
        case empty
    }

    private init(baseAddress: UnsafeRawPointer, count: Int, owner: Owner) {
        self.baseAddress = baseAddress
        self.count = count
        self.owner = owner
    }

    /// Allocates `count` bytes (zeroed) and lets `initialize` fill them once.
    public convenience init(count: Int, initialize: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        precondition(count >= 0, "ByteStorage: negative count")
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(count, 1), alignment: 64)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Swift.max(count, 1))
        let allocation = Allocation(pointer: pointer)
        try initialize(UnsafeMutableRawBufferPointer(start: pointer, count: count))
        self.init(baseAddress: UnsafeRawPointer(pointer), count: count, owner: .allocation(allocation))
    }

    /// An owned copy of `bytes`.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count) { dst in
            if bytes.count > 0 { dst.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        }
    }

    /// An owned copy of `bytes`.
    public convenience init(_ bytes: [UInt8]) {
        self.init(count: bytes.count) { dst in
            bytes.withUnsafeBytes { src in
                if src.count > 0 { dst.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: src.count) }
            }
        }
    }

    /// Maps the whole file at `path` read-only (private mapping; the file may be closed or
    /// renamed afterwards, but must not be truncated or rewritten in place while mapped).
    public static func mapping(file path: String) throws -> ByteStorage {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ByteStorageError.cannotMap(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw ByteStorageError.cannotMap(path: path, reason: String(cString: strerror(errno)))
        }
        let length = Int(info.st_size)
        if length == 0 {
            let dummy = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 64)
            return ByteStorage(baseAddress: UnsafeRawPointer(dummy), count: 0,
                               owner: .allocation(Allocation(pointer: dummy)))
        }
        guard let pointer = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0), pointer != MAP_FAILED else {
            throw ByteStorageError.cannotMap(path: path, reason: String(cString: strerror(errno)))
        }
        return ByteStorage(baseAddress: UnsafeRawPointer(pointer), count: length,
                           owner: .mapping(Mapping(pointer: pointer, length: length)))
    }

    /// Maps `count` bytes of the open file `descriptor` from `offset` (a multiple of the page size) read-only and
    /// shared: the pages are the page cache's, clean once written back, so the kernel may drop them under memory
    /// pressure and read them again. The descriptor may be closed afterwards.
    public static func mapping(descriptor: Int32, offset: Int, count: Int) throws -> ByteStorage {
        precondition(count > 0 && offset % Int(sysconf(Int32(_SC_PAGESIZE))) == 0, "ByteStorage: unaligned mapping")
        guard let pointer = mmap(nil, count, PROT_READ, MAP_SHARED, descriptor, off_t(offset)), pointer != MAP_FAILED else {
            throw ByteStorageError.cannotMap(path: "descriptor \(descriptor)", reason: String(cString: strerror(errno)))
        }
        return ByteStorage(baseAddress: UnsafeRawPointer(pointer), count: count,
                           owner: .mapping(Mapping(pointer: pointer, length: count)))
    }

    /// True when the bytes live in a file mapping rather than an allocation of their own.
    public var isMemoryMapped: Bool {
        if case .mapping = owner { return true }
        return false
    }

    /// Takes the pages of these bytes out of the process's resident set when they are a file's, with the rest of
    /// their spans of the mapping (`mq_release_mapped_pages`: the page cache keeps them and the next read maps them
    /// again); allocations keep theirs. For weights read once in a while (a candidate's encoder after its
    /// self-check) and statistics read once per use.
    public func releaseResidentPages() {
        guard case let .mapping(mapping) = owner, let start = mapping.pointer, count > 0 else { return }
        mq_release_mapped_pages(baseAddress, count, start, mapping.length)
    }

    /// Bytes `offset..<offset+count` of this storage, sharing (and keeping alive) its memory.
    public func slice(offset: Int, count: Int) throws -> ByteStorage {
        guard offset >= 0, count >= 0, offset <= self.count, count <= self.count - offset else {
            throw ByteStorageError.sliceOutOfBounds(offset: offset, count: count, storageCount: self.count)
        }
        return ByteStorage(baseAddress: baseAddress + offset, count: count, owner: owner)
    }

    /// The bytes, for reading.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: baseAddress, count: count) }

    /// Calls `body` with the bytes; they stay valid while this storage is alive.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(bytes) }
    }
}
