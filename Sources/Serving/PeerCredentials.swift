#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NIOCore

/// Credentials of the process at the other end of a Unix-domain socket (Linux `SO_PEERCRED`).
public struct PeerCredentials: Sendable, Equatable {
    /// Process id of the peer when it connected.
    public var pid: Int32
    /// Effective user id of the peer.
    public var uid: UInt32
    /// Effective group id of the peer.
    public var gid: UInt32

    /// Creates credentials.
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// Reads the peer credentials of a connected Unix-domain socket.
    public static func of(socket fd: Int32) throws -> PeerCredentials {
        var raw = RawUcred()
        var length = socklen_t(MemoryLayout<RawUcred>.size)
        guard getsockopt(fd, SOL_SOCKET, soPeerCred, &raw, &length) == 0 else {
            throw ServingError.system(call: "getsockopt(SO_PEERCRED)", errno: errno)
        }
        return PeerCredentials(pid: raw.pid, uid: raw.uid, gid: raw.gid)
    }

    /// Reads the peer credentials of a NIO socket channel; fails for channels without them (such as TCP).
    static func of(channel: Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ServingError.noPeerCredentials)
        }
        let future: EventLoopFuture<RawUcred> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(soPeerCred))
        return future.map { PeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) }
    }
}

/// Glibc's `struct ucred` (hidden from Swift without `_GNU_SOURCE`): pid_t, uid_t, gid_t.
struct RawUcred: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// `SO_PEERCRED` on Linux (asm-generic/socket.h).
let soPeerCred: Int32 = 17

/// Which local users may talk to a server over its Unix socket.
///
/// A peer is allowed if its uid is in `allowedUIDs`, or if `allowedGroup` is set and the peer's primary or
/// supplementary groups (from the user database) include it, or if `trustRootAndSelf` is set and the peer
/// is root or runs as the server's own uid.
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

    /// Whether `peer` may connect.
    public func permits(_ peer: PeerCredentials) -> Bool {
        if trustRootAndSelf && (peer.uid == 0 || peer.uid == getuid()) { return true }
        if allowedUIDs.contains(peer.uid) { return true }
        if let group = allowedGroup {
            if peer.gid == group { return true }
            return PeerPolicy.groups(ofUser: peer.uid).contains(group)
        }
        return false
    }

    /// The primary and supplementary group ids of `uid` according to the user database (empty if unknown).
    public static func groups(ofUser uid: UInt32) -> [UInt32] {
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        guard getpwuid_r(uid, &pwd, &buffer, buffer.count, &result) == 0, result != nil, let name = pwd.pw_name else {
            return []
        }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(name, pwd.pw_gid, &groups, &count) == -1 {
            groups = [gid_t](repeating: 0, count: Int(count))
            guard getgrouplist(name, pwd.pw_gid, &groups, &count) != -1 else { return [pwd.pw_gid] }
        }
        return Array(groups.prefix(Int(count)))
    }
}
