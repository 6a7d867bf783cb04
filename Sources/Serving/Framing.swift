import NIOCore

/// What the handlers of one accepted connection share: who is at the other end, its memory account, and the
/// state the request deadline needs.
struct ConnectionContext {
    /// The peer's credentials (nil over TCP).
    var peer: PeerCredentials?
    /// Who sends this connection's requests (the daemon queues fairly across them).
    var origin: RequestOrigin
    /// The connection's memory account.
    var memory: ClientMemoryAccount
    /// Event-loop state shared by the decoder and the session handler.
    var activity: ConnectionActivity
}

/// Connection state touched only on the connection's event loop.
final class ConnectionActivity {
    /// The session has stopped reading (a request is being worked on, or the client does not read its answers):
    /// a request the client has only half sent is then not the client's fault, and its deadline waits.
    var holdingReads = false
    private var deadline: Scheduled<Void>?

    /// Starts the deadline of a request whose first bytes have arrived (if it is not already running).
    func startDeadline(_ timeout: TimeAmount, context: ChannelHandlerContext) {
        guard deadline == nil else { return }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            let (activity, context) = bound.value
            activity.deadline = nil
            if activity.holdingReads {
                activity.startDeadline(timeout, context: context)
            } else {
                context.fireUserInboundEventTriggered(RequestDeadlineEvent(timeout: timeout))
            }
        }
    }

    /// Stops the deadline: the request is complete, or the connection is going away.
    func cancelDeadline() {
        deadline?.cancel()
        deadline = nil
    }
}

/// Sent through the pipeline when a request has not arrived in full within the request timeout of its first byte.
struct RequestDeadlineEvent {
    let timeout: TimeAmount

    var description: String {
        "the request did not arrive in full within \(Double(timeout.nanoseconds) / 1e9) seconds of its first byte"
    }
}

/// One protocol's framing: whole requests out of the bytes received so far.
protocol RequestFraming {
    associatedtype Request
    /// The next whole request in `buffer` (consumed from it), or nil when more bytes are needed (bytes that only
    /// separate requests may still be consumed).
    mutating func next(_ buffer: inout ByteBuffer) throws -> Request?
    /// At the end of the input, a last request made of the bytes left, if the protocol has one.
    mutating func last(_ buffer: inout ByteBuffer) throws -> Request?
}

/// A request with the memory charge for its bytes, which the session gives back once it has processed them.
struct Received<Request> {
    var request: Request
    var charge: ClientMemoryCharge
}

/// Frames requests and accounts for the bytes received: every byte buffered is charged (twice, see
/// `ClientMemoryPool`) before the next request is looked for, so a connection cannot buffer beyond its account;
/// a request whose first byte arrived more than `timeout` ago and is still incomplete ends the connection
/// (slow clients hold no slot for longer than that per request).
struct MeteredDecoder<Framing: RequestFraming>: ByteToMessageDecoder {
    typealias InboundOut = Received<Framing.Request>

    private var framing: Framing
    private let inbound: ClientMemoryCharge
    private let timeout: TimeAmount?
    private let activity: ConnectionActivity

    init(_ framing: Framing, context: ConnectionContext, timeout: TimeAmount?) {
        self.framing = framing
        self.inbound = context.memory.charge()
        self.timeout = timeout
        self.activity = context.activity
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        try meter(buffer)
        let before = buffer.readableBytes
        let request = try framing.next(&buffer)
        return emit(request, consumed: before - buffer.readableBytes, remaining: buffer.readableBytes, context: context)
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if seenEOF {
            let before = buffer.readableBytes
            let request = try framing.last(&buffer)
            _ = emit(request, consumed: before - buffer.readableBytes, remaining: 0, context: context)
        }
        activity.cancelDeadline()
        return .needMoreData
    }

    mutating func decoderRemoved(context: ChannelHandlerContext) {
        activity.cancelDeadline()
        inbound.release()
    }

    /// Makes the charge twice the bytes held (growing it may fail: then nothing more is read).
    private func meter(_ buffer: ByteBuffer) throws {
        let target = 2 * buffer.readableBytes
        let held = inbound.held
        if target > held { try inbound.grow(by: target - held) } else if target < held { inbound.shrink(by: held - target) }
    }

    private func emit(_ request: Framing.Request?, consumed: Int, remaining: Int, context: ChannelHandlerContext)
        -> DecodingState
    {
        if let request {
            activity.cancelDeadline()
            context.fireChannelRead(Self.wrapInboundOut(Received(request: request, charge: inbound.split(2 * consumed))))
            return .continue
        }
        inbound.shrink(by: 2 * consumed)
        if remaining > 0, let timeout { activity.startDeadline(timeout, context: context) }
        return .needMoreData
    }
}
