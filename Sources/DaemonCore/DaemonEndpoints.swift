import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Serving
import SystemdSupport

/// Where the daemon's servers listen: the sockets systemd passed (each recognised by name), or its own Unix
/// sockets in the runtime directory (and the optional Wyoming TCP listener).
struct DaemonEndpoints {
    var control: [ListenerEndpoint] = []
    var wyoming: [ListenerEndpoint] = []
    /// Socket files the daemon creates itself (empty under socket activation).
    var ownPaths: [String] = []

    init(configuration config: DaemonConfiguration, environment: [String: String], logger: Logger) throws {
        let activated: [ActivatedSocket]
        do {
            activated = try SocketActivation.sockets()
        } catch {
            throw DaemonError.sockets(reason: "\(error)")
        }
        if activated.isEmpty {
            try Daemon.ensureDirectory(config.resolvedRuntimeDirectory(environment: environment), mode: 0o755,
                                       purpose: "runtime directory")
            let controlPath = config.controlSocketPath(environment: environment)
            control.append(.unix(path: controlPath))
            ownPaths.append(controlPath)
            if let wyomingPath = config.wyomingSocketPath(environment: environment) {
                wyoming.append(.unix(path: wyomingPath))
                ownPaths.append(wyomingPath)
            }
            if config.wyomingTCPEnabled {
                wyoming.append(.tcp(host: config.wyomingTCPAddress, port: config.wyomingTCPPort))
            }
            return
        }
        for socket in activated {
            guard socket.isStreamListener else {
                throw DaemonError.sockets(reason: "activated socket \"\(socket.name)\" (fd \(socket.fileDescriptor)) is not a listening stream socket")
            }
            switch Self.role(of: socket, configuration: config) {
            case .control: control.append(.fileDescriptor(socket.fileDescriptor))
            case .wyoming: wyoming.append(.fileDescriptor(socket.fileDescriptor))
            case nil:
                throw DaemonError.sockets(reason: "activated socket \"\(socket.name)\" (fd \(socket.fileDescriptor)) is neither \(config.controlSocketName) nor \(config.wyomingSocketName) nor TCP, and its FileDescriptorName= is not control, wyoming or wyoming-tcp")
            }
        }
        guard !control.isEmpty else {
            throw DaemonError.sockets(reason: "socket activation passed no socket named \"control\" (have: \(activated.map(\.name).joined(separator: ", ")))")
        }
        logger.info("using \(activated.count) socket(s) from systemd")
    }

    private enum SocketRole { case control, wyoming }

    /// Which server an activated socket belongs to. systemd gives every socket of one .socket unit the same
    /// FileDescriptorName=, so a Unix socket is recognised by its file name (sockets.control / sockets.wyoming)
    /// and a TCP socket serves Wyoming; names control, wyoming and wyoming-tcp (separate units) also work.
    private static func role(of socket: ActivatedSocket, configuration: DaemonConfiguration) -> SocketRole? {
        switch socket.name {
        case "control": return .control
        case "wyoming", "wyoming-tcp": return .wyoming
        default: break
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket.fileDescriptor, $0, &length) == 0 }
        }
        guard ok else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET, AF_INET6:
            return .wyoming
        case AF_UNIX:
            let path = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { address in
                    withUnsafeBytes(of: address.pointee.sun_path) { raw in
                        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                    }
                }
            }
            let name = (path as NSString).lastPathComponent
            if name == configuration.controlSocketName { return .control }
            if !configuration.wyomingSocketName.isEmpty && name == configuration.wyomingSocketName { return .wyoming }
            return nil
        default:
            return nil
        }
    }
}
