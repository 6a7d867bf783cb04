#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import Logging
import NIOCore
import NIOPosix

/// Errors starting or running a server.
public enum ServingError: Error, Equatable, CustomStringConvertible {
    /// Another process is listening on the socket path; it was left alone.
    case socketInUse(path: String)
    /// The path exists and is not a socket; it was left alone.
    case notASocket(path: String)
    /// The directory that should hold the socket does not exist.
    case runtimeDirectoryMissing(path: String)
    /// The socket path is longer than `sockaddr_un` allows.
    case pathTooLong(path: String, limit: Int)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// The connection carries no peer credentials (not a Unix-domain socket).
    case noPeerCredentials
    /// `start()` was called twice.
    case alreadyStarted

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .socketInUse(let p): return "socket \(p) is in use by a running process; refusing to replace it"
        case .notASocket(let p): return "\(p) exists and is not a socket; refusing to remove it"
        case .runtimeDirectoryMissing(let p): return "runtime directory \(p) does not exist"
        case .pathTooLong(let p, let limit): return "socket path \(p) is longer than \(limit) bytes"
        case .system(let call, let e): return "\(call) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .noPeerCredentials: return "the connection has no peer credentials"
        case .alreadyStarted: return "the server is already started"
        }
    }
}

/// Where a server listens.
public enum ListenerEndpoint: Sendable, Equatable {
    /// A Unix-domain stream socket at this path: a stale socket file is removed first, a live one is refused,
    /// and the file mode is set after binding.
    case unix(path: String)
    /// An already-bound listening stream socket, such as one passed by systemd socket activation.
    case fileDescriptor(Int32)
    /// A TCP socket (no peer-credential check is possible: anyone who can reach it may use it).
    case tcp(host: String, port: Int)
}

/// Per-connection limits and access control shared by both servers.
public struct ConnectionOptions: Sendable {
    /// Most simultaneous connections; further clients get an error and are closed. Root and the server's own
    /// user may open `reservedConnections` more, so an administrator's `myqasrctl status` always gets through.
    public var maxConnections: Int
    /// Most simultaneous connections of one user (by uid; every TCP client counts as one user). Root and the
    /// server's own user are not limited by it.
    public var maxConnectionsPerUser: Int
    /// Connections beyond `maxConnections` kept for root and the server's own user.
    public var reservedConnections: Int
    /// A connection that sends nothing for this long is closed (listeners and busy requests excepted).
    public var idleTimeout: TimeAmount?
    /// A request (a control line, a Wyoming event) must arrive in full within this time of its first byte, or
    /// the connection is closed; the time the server itself holds back reading does not count.
    public var requestTimeout: TimeAmount?
    /// Outbound bytes a connection may have queued before it counts as not reading (write high-water mark).
    public var maxQueuedOutboundBytes: Int
    /// Mode of Unix socket files, set after bind.
    public var socketMode: UInt32
    /// Group given to Unix socket files after bind (before their mode is set), so its members can connect;
    /// nil keeps the group the file was created with. Not applied to sockets passed by systemd.
    public var socketGroup: UInt32?
    /// Who may connect over Unix sockets.
    public var peerPolicy: PeerPolicy
    /// How long `shutdown()` lets requests in progress finish before closing their connections.
    public var shutdownGracePeriod: TimeAmount
    /// The memory every connection's buffers are charged to; share one pool between servers to bound them together.
    public var memory: ClientMemoryPool

    /// Creates options.
    public init(
        maxConnections: Int = 64, maxConnectionsPerUser: Int = 16, reservedConnections: Int = 4,
        idleTimeout: TimeAmount? = .seconds(300), requestTimeout: TimeAmount? = .seconds(60),
        maxQueuedOutboundBytes: Int = 256 * 1024, socketMode: UInt32 = 0o660, socketGroup: UInt32? = nil,
        peerPolicy: PeerPolicy = .ownerOnly, shutdownGracePeriod: TimeAmount = .seconds(5),
        memory: ClientMemoryPool = ClientMemoryPool()
    ) {
        self.maxConnections = maxConnections
        self.maxConnectionsPerUser = maxConnectionsPerUser
        self.reservedConnections = reservedConnections
        self.idleTimeout = idleTimeout
        self.requestTimeout = requestTimeout
        self.maxQueuedOutboundBytes = maxQueuedOutboundBytes
        self.socketMode = socketMode
        self.socketGroup = socketGroup
        self.peerPolicy = peerPolicy
        self.shutdownGracePeriod = shutdownGracePeriod
        self.memory = memory
    }
}

/// Sent through every connection's pipeline when the server shuts down: finish the current request, then close.
struct ServerShuttingDownEvent {}

/// Why a connection is refused before any request is read.
enum Admission: Equatable {
    case admitted
    case serverFull(limit: Int)
    case userFull(uid: UInt32?, limit: Int)
    case shuttingDown
}

/// Listener management shared by the Wyoming and control servers.
final class SocketServerCore: @unchecked Sendable {
    struct State {
        var started = false
        var listeners: [Channel] = []
        var boundPaths: [String] = []
        /// Open connections and the user each counts against (nil: privileged, not counted per user).
        var connections: [ObjectIdentifier: (channel: Channel, user: UInt32?)] = [:]
        var connectionsByUser: [UInt32: Int] = [:]
        var shuttingDown = false
    }

    let name: String
    let endpoints: [ListenerEndpoint]
    let options: ConnectionOptions
    let group: EventLoopGroup
    let logger: Logger
    /// Builds the protocol handlers for an accepted connection; called on its event loop.
    let makeHandlers: (ConnectionContext) -> [ChannelHandler]
    /// Encodes a refusal (code, message) in the protocol's own error format.
    let rejection: @Sendable (String, String) -> [UInt8]
    private let state = Locked(State())

    init(
        name: String, endpoints: [ListenerEndpoint], options: ConnectionOptions, group: EventLoopGroup,
        logger: Logger, rejection: @escaping @Sendable (String, String) -> [UInt8],
        makeHandlers: @escaping (ConnectionContext) -> [ChannelHandler]
    ) {
        self.name = name
        self.endpoints = endpoints
        self.options = options
        self.group = group
        self.logger = logger
        self.rejection = rejection
        self.makeHandlers = makeHandlers
    }

    var localAddresses: [SocketAddress] {
        state.withLockedValue { $0.listeners.compactMap { $0.localAddress } }
    }

    var connectionCount: Int { state.withLockedValue { $0.connections.count } }

    /// A number for a new connection, unique in the process.
    static func nextConnectionID() -> UInt64 { connectionIDs.withLockedValue { $0 += 1; return $0 } }
    private static let connectionIDs = Locked<UInt64>(0)

    func start() async throws {
        try state.withLockedValue { s in
            if s.started { throw ServingError.alreadyStarted }
            s.started = true
        }
        do {
            for endpoint in endpoints {
                let channel = try await bind(endpoint)
                state.withLockedValue { $0.listeners.append(channel) }
                logger.info("\(name) listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
            }
        } catch {
            await closeListeners()
            throw error
        }
    }

    private func bootstrap() -> ServerBootstrap {
        let high = max(options.maxQueuedOutboundBytes, 2)
        return ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 128)
            .childChannelOption(ChannelOptions.autoRead, value: false)
            // A client that shuts down its sending side still gets the answers to what it sent.
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(
                ChannelOptions.writeBufferWaterMark, value: .init(low: high / 2, high: high))
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ConnectionGate(core: self))
                }
            }
    }

    private func bind(_ endpoint: ListenerEndpoint) async throws -> Channel {
        switch endpoint {
        case .unix(let path):
            try Self.prepareSocketPath(path)
            let channel = try await bootstrap().bind(unixDomainSocketPath: path).get()
            state.withLockedValue { $0.boundPaths.append(path) }
            if let group = options.socketGroup, chown(path, uid_t.max, gid_t(group)) != 0 {
                let e = errno
                try? await channel.close()
                throw ServingError.system(call: "chown(\(path), group \(group))", errno: e)
            }
            if chmod(path, mode_t(options.socketMode)) != 0 {
                let e = errno
                try? await channel.close()
                throw ServingError.system(call: "chmod(\(path))", errno: e)
            }
            return channel
        case .fileDescriptor(let fd):
            // Already listening when it comes from systemd; listen() again is harmless and covers bound-only sockets.
            if listen(fd, 128) != 0 { throw ServingError.system(call: "listen(fd \(fd))", errno: errno) }
            return try await bootstrap().withBoundSocket(fd).get()
        case .tcp(let host, let port):
            return try await bootstrap()
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .bind(host: host, port: port).get()
        }
    }

    /// Removes a stale socket file at `path`; refuses a live socket or a non-socket.
    static func prepareSocketPath(_ path: String) throws {
        let limit = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
        if path.utf8.count > limit { throw ServingError.pathTooLong(path: path, limit: limit) }
        let directory = (path as NSString).deletingLastPathComponent
        var st = stat()
        if !directory.isEmpty, stat(directory, &st) != 0 {
            throw ServingError.runtimeDirectoryMissing(path: directory)
        }
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw ServingError.system(call: "lstat(\(path))", errno: errno)
        }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw ServingError.notASocket(path: path) }
        switch probeUnixSocket(path) {
        case 0: throw ServingError.socketInUse(path: path)
        case ECONNREFUSED, ENOENT:
            if unlink(path) != 0 && errno != ENOENT { throw ServingError.system(call: "unlink(\(path))", errno: errno) }
        case let e: throw ServingError.system(call: "connect(\(path))", errno: e)
        }
    }

    /// Tries to connect to a Unix stream socket: 0 if something accepts, otherwise the errno.
    static func probeUnixSocket(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        return result == 0 ? 0 : errno
    }

    // Connection accounting, called by ConnectionGate on the connection's event loop.

    /// Counts a connection in, or says why not. `user` is the peer's uid (nil over TCP); privileged peers (root,
    /// this server's user) may use the reserved connections and are not held to the per-user limit.
    func admit(_ channel: Channel, user: UInt32?, privileged: Bool) -> Admission {
        state.withLockedValue { s in
            if s.shuttingDown { return .shuttingDown }
            if privileged {
                let limit = options.maxConnections + options.reservedConnections
                guard s.connections.count < limit else { return .serverFull(limit: limit) }
                s.connections[ObjectIdentifier(channel)] = (channel, nil)
                return .admitted
            }
            guard s.connections.count < options.maxConnections else { return .serverFull(limit: options.maxConnections) }
            let key = user ?? UInt32.max  // every TCP client counts as one user
            let mine = s.connectionsByUser[key, default: 0]
            guard mine < options.maxConnectionsPerUser else { return .userFull(uid: user, limit: options.maxConnectionsPerUser) }
            s.connectionsByUser[key] = mine + 1
            s.connections[ObjectIdentifier(channel)] = (channel, key)
            return .admitted
        }
    }

    func release(_ channel: Channel) {
        state.withLockedValue { s in
            guard let entry = s.connections.removeValue(forKey: ObjectIdentifier(channel)), let user = entry.user else { return }
            let left = s.connectionsByUser[user, default: 1] - 1
            s.connectionsByUser[user] = left > 0 ? left : nil
        }
    }

    private func closeListeners() async {
        let (listeners, paths) = state.withLockedValue { s -> ([Channel], [String]) in
            defer { s.listeners = []; s.boundPaths = [] }
            return (s.listeners, s.boundPaths)
        }
        for channel in listeners { try? await channel.close() }
        for path in paths { unlink(path) }
    }

    /// Stops accepting, lets requests in progress finish within the grace period, then closes everything.
    func shutdown() async {
        state.withLockedValue { $0.shuttingDown = true }
        await closeListeners()
        let connections = state.withLockedValue { $0.connections.values.map(\.channel) }
        guard !connections.isEmpty else { return }
        for channel in connections {
            channel.pipeline.fireUserInboundEventTriggered(ServerShuttingDownEvent())
        }
        let loop = group.next()
        let all = EventLoopFuture.andAllComplete(connections.map { $0.closeFuture }, on: loop)
        let deadline = loop.scheduleTask(in: options.shutdownGracePeriod) {
            for channel in connections { channel.close(promise: nil) }
        }
        try? await all.get()
        deadline.cancel()
    }
}

/// First handler of every connection: reads the peer's credentials (Unix sockets), applies the peer policy and
/// the connection limits, then installs the protocol handlers and starts reading.
final class ConnectionGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = ByteBuffer

    private let core: SocketServerCore
    private var admitted = false

    init(core: SocketServerCore) { self.core = core }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        guard channel.localAddress?.protocol == .unix else {
            admit(context: context, peer: nil)
            return
        }
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        PeerCredentials.of(channel: channel).hop(to: context.eventLoop).whenComplete { [self] result in
            let context = loopBoundContext.value
            switch result {
            case .success(let peer) where core.options.peerPolicy.permits(peer):
                admit(context: context, peer: peer)
            case .success(let peer):
                core.logger.notice("\(core.name): refused peer", metadata: ["uid": "\(peer.uid)", "pid": "\(peer.pid)"])
                reject(context: context, code: "permission-denied",
                       message: "user id \(peer.uid) is not allowed to use this socket")
            case .failure(let error):
                reject(context: context, code: "permission-denied", message: "cannot read peer credentials: \(error)")
            }
        }
    }

    private func admit(context: ChannelHandlerContext, peer: PeerCredentials?) {
        let privileged = peer?.isPrivileged ?? false
        switch core.admit(context.channel, user: peer?.uid, privileged: privileged) {
        case .admitted:
            admitted = true
            accept(context: context, peer: peer, privileged: privileged)
        case .serverFull(let limit):
            reject(context: context, code: "too-many-connections",
                   message: "the server already has \(limit) connections; try again later")
        case .userFull(let uid, let limit):
            let who = uid.map { "user id \($0)" } ?? "TCP clients"
            reject(context: context, code: "too-many-connections",
                   message: "\(who) already has \(limit) connections, the most one user may have")
        case .shuttingDown:
            reject(context: context, code: "shutting-down", message: "the server is shutting down")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if admitted { core.release(context.channel) }
        context.fireChannelInactive()
    }

    private func accept(context: ChannelHandlerContext, peer: PeerCredentials?, privileged: Bool) {
        let connection = ConnectionContext(
            peer: peer, origin: RequestOrigin(uid: peer?.uid, connection: SocketServerCore.nextConnectionID()),
            memory: core.options.memory.account(user: peer?.uid, privileged: privileged), activity: ConnectionActivity())
        do {
            var handlers: [ChannelHandler] = []
            if let idle = core.options.idleTimeout { handlers.append(IdleStateHandler(readTimeout: idle)) }
            handlers += core.makeHandlers(connection)
            try context.pipeline.syncOperations.addHandlers(handlers)
        } catch {
            core.logger.error("\(core.name): cannot set up connection: \(error)")
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        context.read()
    }

    private func reject(context: ChannelHandlerContext, code: String, message: String) {
        let bytes = core.rejection(code, message)
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        let loopBoundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
            loopBoundContext.value.close(promise: nil)
        }
    }
}
