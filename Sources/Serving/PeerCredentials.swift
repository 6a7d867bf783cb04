#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLinux
import NIOCore

/// Credentials of the process at the other end of a Unix-domain socket, as the kernel recorded them when it
/// connected (Linux `SO_PEERCRED` and `SO_PEERGROUPS`: no user-database lookup is involved).
public struct PeerCredentials: Sendable, Equatable {
    /// Process id of the peer when it connected.
    public var pid: Int32
    /// Effective user id of the peer.
    public var uid: UInt32
    /// Effective group id of the peer.
    public var gid: UInt32
    /// Supplementary group ids of the peer (group 0 is not listed; a peer with more than 256 groups, or a kernel
    /// before 4.13, gives none).
    public var groups: [UInt32]

    /// Creates credentials.
    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    /// Reads the peer credentials of a connected Unix-domain socket.
    public static func of(socket fd: Int32) throws -> PeerCredentials {
        var raw = myqasr_ucred()
        var length = socklen_t(MemoryLayout<myqasr_ucred>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &raw, &length) == 0 else {
            throw ServingError.system(call: "getsockopt(SO_PEERCRED)", errno: errno)
        }
        var groups = myqasr_peer_groups()
        var groupsLength = socklen_t(MemoryLayout<myqasr_peer_groups>.size)
        let list: [UInt32]
        if getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, &groups, &groupsLength) == 0 {
            list = withUnsafeBytes(of: groups.gids) { Array($0.bindMemory(to: UInt32.self).prefix(Int(groupsLength) / 4)) }
        } else {
            list = []
        }
        return PeerCredentials(pid: raw.pid, uid: raw.uid, gid: raw.gid, groups: list.filter { $0 != 0 })
    }

    /// Reads the peer credentials of a NIO socket channel (on its event loop: two getsockopt calls); fails for
    /// channels without them (such as TCP).
    static func of(channel: Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ServingError.noPeerCredentials)
        }
        let credentials: EventLoopFuture<myqasr_ucred> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        // NIO does not return the option's length: unused entries stay 0, so group 0 cannot be told from them.
        let groups: EventLoopFuture<myqasr_peer_groups> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERGROUPS))
        return credentials.and(groups.map(Optional.some).recover { _ in nil }).map { raw, groups in
            let list = groups.map { g in withUnsafeBytes(of: g.gids) { Array($0.bindMemory(to: UInt32.self)) } } ?? []
            return PeerCredentials(pid: raw.pid, uid: raw.uid, gid: raw.gid, groups: list.filter { $0 != 0 })
        }
    }

    /// Root or the server's own user: always allowed, and given the reserved connections.
    public var isPrivileged: Bool { uid == 0 || uid == getuid() }
}

/// Which local users may talk to a server over its Unix socket.
///
/// A peer is allowed if its uid is in `allowedUIDs`, or if `allowedGroup` is set and the peer's effective or
/// supplementary groups (as the kernel holds them for the connecting process) include it, or if
/// `trustRootAndSelf` is set and the peer is root or runs as the server's own uid.
public struct PeerPolicy: Sendable, Equatable {
    /// User ids allowed explicitly.
    public var allowedUIDs: Set<UInt32>
    /// A group whose members are allowed (for example the `myqasr` group), or nil.
    public var allowedGroup: UInt32?
    /// Always allow uid 0 and the server's own uid. Turn off only to test refusal.
    public var trustRootAndSelf: Bool

    /// Creates a policy.
    public init(allowedUIDs: Set<UInt32> = [], allowedGroup: UInt32? = nil, trustRootAndSelf: Bool = true) {
        self.allowedUIDs = allowedUIDs
        self.allowedGroup = allowedGroup
        self.trustRootAndSelf = trustRootAndSelf
    }

    /// Only root and the server's own user.
    public static let ownerOnly = PeerPolicy()

    /// Whether `peer` may connect. Reads nothing but `peer`: no user database, so it is safe on an event loop.
    public func permits(_ peer: PeerCredentials) -> Bool {
        if trustRootAndSelf && peer.isPrivileged { return true }
        if allowedUIDs.contains(peer.uid) { return true }
        if let group = allowedGroup { return peer.gid == group || peer.groups.contains(group) }
        return false
    }
}
