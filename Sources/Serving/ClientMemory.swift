import Foundation

/// Memory the servers hold for clients, accounted before it is allocated.
///
/// Two things are charged, to the connection and to the pool shared by every connection of both servers:
/// - bytes received and not yet processed (a request line or a Wyoming event being read, events waiting),
///   charged twice over because a receive buffer that grows by doubling can take up to twice what it holds;
/// - the audio of a request as 16 kHz float samples (4 bytes each) plus the converter's filter table,
///   charged from the request's header (control `transcribe`) or chunk by chunk at the declared rate
///   (Wyoming) before the samples are made, and held until the request is answered.
///
/// A charge beyond the connection's limit fails with `ClientMemoryError.connectionLimit` (the request can never
/// fit); one beyond what the pool has left fails with `poolExhausted` (try again later). Users other than root and
/// the daemon's own user may each hold at most half of the pool, so one user cannot take all of it.
public final class ClientMemoryPool: @unchecked Sendable {
    /// Most bytes all connections together may hold.
    public let limit: Int
    /// Most bytes one connection may hold.
    public let connectionLimit: Int

    private struct State {
        var used = 0
        var peak = 0
        var byUser: [UInt32: Int] = [:]
    }
    private let state = Locked(State())

    /// Creates a pool.
    public init(limit: Int = 512 << 20, connectionLimit: Int = 48 << 20) {
        self.limit = limit
        self.connectionLimit = connectionLimit
    }

    /// Bytes charged now.
    public var usedBytes: Int { state.withLockedValue { $0.used } }

    /// The most bytes charged at any time so far.
    public var peakBytes: Int { state.withLockedValue { $0.peak } }

    /// A new account for one connection. `user` is the peer's uid (nil over TCP: all TCP clients share one
    /// share); `privileged` users (root, the daemon's own) are not held to a share.
    func account(user: UInt32?, privileged: Bool) -> ClientMemoryAccount {
        ClientMemoryAccount(pool: self, user: privileged ? nil : (user ?? UInt32.max))
    }

    fileprivate func take(_ bytes: Int, account: ClientMemoryAccount) throws {
        try state.withLockedValue { s in
            let connectionHeld = account.heldLocked
            if connectionHeld + bytes > connectionLimit {
                throw ClientMemoryError.connectionLimit(needed: connectionHeld + bytes, limit: connectionLimit)
            }
            if s.used + bytes > limit {
                throw ClientMemoryError.poolExhausted(needed: bytes, used: s.used, limit: limit)
            }
            if let user = account.user {
                let share = limit / 2
                let userHeld = s.byUser[user, default: 0]
                if userHeld + bytes > share {
                    throw ClientMemoryError.poolExhausted(needed: bytes, used: userHeld, limit: share)
                }
                s.byUser[user] = userHeld + bytes
            }
            s.used += bytes
            s.peak = max(s.peak, s.used)
            account.heldLocked += bytes
        }
    }

    fileprivate func give(_ bytes: Int, account: ClientMemoryAccount) {
        guard bytes > 0 else { return }
        state.withLockedValue { s in
            s.used -= bytes
            account.heldLocked -= bytes
            if let user = account.user {
                let left = s.byUser[user, default: 0] - bytes
                s.byUser[user] = left > 0 ? left : nil
            }
        }
    }
}

/// Why memory for a client could not be charged.
public enum ClientMemoryError: Error, Equatable, CustomStringConvertible {
    /// The connection would hold more than one connection may.
    case connectionLimit(needed: Int, limit: Int)
    /// Every connection together (or this user's share) would hold more than the pool allows.
    case poolExhausted(needed: Int, used: Int, limit: Int)

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case let .connectionLimit(needed, limit):
            return "the request needs \(needed) bytes of buffers, more than the \(limit) one connection may hold"
        case let .poolExhausted(needed, used, limit):
            return "the daemon's client buffers are full (\(used) of \(limit) bytes in use, \(needed) more needed); try again shortly"
        }
    }
}

/// One connection's memory account. Its charges may outlive the connection (a request still being answered);
/// each is given back exactly once, by its owner or when it is deallocated.
final class ClientMemoryAccount: @unchecked Sendable {
    let pool: ClientMemoryPool
    /// The user whose share this account draws on; nil for privileged users.
    let user: UInt32?
    /// Bytes charged to this connection; guarded by the pool's lock.
    fileprivate var heldLocked = 0

    fileprivate init(pool: ClientMemoryPool, user: UInt32?) {
        self.pool = pool
        self.user = user
    }

    /// A new, empty charge on this account.
    func charge() -> ClientMemoryCharge { ClientMemoryCharge(account: self) }

    /// A charge of `bytes`, or an error and nothing charged.
    func charge(_ bytes: Int) throws -> ClientMemoryCharge {
        let c = ClientMemoryCharge(account: self)
        try c.grow(by: bytes)
        return c
    }
}

/// Bytes charged for one purpose (a request's audio, bytes received): grown before memory is allocated, given
/// back when the memory is gone. Given back on deinit at the latest.
final class ClientMemoryCharge: @unchecked Sendable {
    private let account: ClientMemoryAccount
    private let lock = NSLock()
    private var bytes = 0

    fileprivate init(account: ClientMemoryAccount) { self.account = account }

    deinit { account.pool.give(bytes, account: account) }

    /// Bytes held by this charge.
    var held: Int { lock.withLock { bytes } }

    /// Charges `more` bytes, or throws and charges nothing.
    func grow(by more: Int) throws {
        guard more > 0 else { return }
        try lock.withLock {
            try account.pool.take(more, account: account)
            bytes += more
        }
    }

    /// Gives back `amount` bytes (at most what is held).
    func shrink(by amount: Int) {
        lock.withLock {
            let n = min(max(amount, 0), bytes)
            bytes -= n
            account.pool.give(n, account: account)
        }
    }

    /// Gives back everything held.
    func release() {
        lock.withLock {
            account.pool.give(bytes, account: account)
            bytes = 0
        }
    }

    /// Moves `amount` bytes (at most what is held) into a new charge on the same account.
    func split(_ amount: Int) -> ClientMemoryCharge {
        let other = ClientMemoryCharge(account: account)
        lock.withLock {
            let n = min(max(amount, 0), bytes)
            bytes -= n
            other.bytes = n
        }
        return other
    }
}
