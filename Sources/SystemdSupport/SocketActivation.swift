#if canImport(Glibc)
import Glibc
#endif
import CSystemd

/// A socket passed by systemd socket activation.
public struct ActivatedSocket: Sendable, Equatable {
    /// The file descriptor (3 and up).
    public var fileDescriptor: Int32
    /// Its name from `FileDescriptorName=` (systemd's default is the socket unit name, or "unknown").
    public var name: String
    /// Whether it is a listening Unix-domain stream socket.
    public var isUnixStreamListener: Bool
    /// Whether it is a listening stream socket of any family (Unix, IPv4, IPv6).
    public var isStreamListener: Bool

    /// Creates a description of an activated socket.
    public init(fileDescriptor: Int32, name: String, isUnixStreamListener: Bool, isStreamListener: Bool) {
        self.fileDescriptor = fileDescriptor
        self.name = name
        self.isUnixStreamListener = isUnixStreamListener
        self.isStreamListener = isStreamListener
    }
}

/// Errors taking activated sockets.
public enum SocketActivationError: Error, Equatable, CustomStringConvertible {
    /// `sd_listen_fds_with_names` failed.
    case systemd(SystemdError)
    /// No activated socket has the requested name.
    case notFound(name: String, available: [String])

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .systemd(let e): return e.description
        case .notFound(let name, let available):
            return "no activated socket named \"\(name)\" (have: \(available.isEmpty ? "none" : available.joined(separator: ", ")))"
        }
    }
}

/// Takes the sockets systemd passed to this process (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).
public enum SocketActivation {
    /// The activated sockets, empty when the process was not socket-activated. With `unsetEnvironment`
    /// the variables are removed so child processes do not inherit them. The descriptors get FD_CLOEXEC.
    public static func sockets(unsetEnvironment: Bool = true) throws -> [ActivatedSocket] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(unsetEnvironment ? 1 : 0, &names)
        if count < 0 { throw SocketActivationError.systemd(SystemdError(function: "sd_listen_fds_with_names", returnValue: count)) }
        defer {
            if let names {
                var i = 0
                while let name = names[i] {
                    free(name)
                    i += 1
                }
                free(names)
            }
        }
        var result: [ActivatedSocket] = []
        for i in 0..<Int(count) {
            let fd = SD_LISTEN_FDS_START + Int32(i)
            let name = names?[i].map { String(cString: $0) } ?? "unknown"
            result.append(ActivatedSocket(
                fileDescriptor: fd, name: name,
                isUnixStreamListener: sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0,
                isStreamListener: sd_is_socket(fd, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1) > 0))
        }
        return result
    }

    /// The activated socket called `name` among `sockets`.
    public static func socket(named name: String, in sockets: [ActivatedSocket]) throws -> ActivatedSocket {
        guard let found = sockets.first(where: { $0.name == name }) else {
            throw SocketActivationError.notFound(name: name, available: sockets.map(\.name))
        }
        return found
    }
}
