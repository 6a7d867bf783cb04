#if canImport(Glibc)
import Glibc
#endif

/// A socket call failed in a test client.
public struct TestSocketError: Error, CustomStringConvertible {
    /// What failed and the system's reason.
    public var description: String

    /// Creates an error with its message.
    public init(description: String) { self.description = description }
}

/// Blocking stream connections for the tests that drive the servers and the daemon byte by byte
/// (used by tests only).
public enum TestSocket {
    /// Connects to the Unix stream socket at `path`; returns the descriptor.
    public static func connect(unixPath path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSocketError(description: "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        return try connected(fd, r, "connect(\(path))")
    }

    /// Connects to `127.0.0.1:port` over TCP; returns the descriptor.
    public static func connect(tcpPort port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSocketError(description: "socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return try connected(fd, r, "connect(127.0.0.1:\(port))")
    }

    private static func connected(_ fd: Int32, _ result: Int32, _ what: String) throws -> Int32 {
        guard result == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TestSocketError(description: "\(what): \(String(cString: strerror(e)))")
        }
        return fd
    }
}
