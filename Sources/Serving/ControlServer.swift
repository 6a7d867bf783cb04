import Audio
import Foundation
import Logging
import NIOCore
import NIOPosix

/// Settings of a `ControlServer`.
public struct ControlServerConfiguration: Sendable {
    /// Connection limits, idle and request timeouts, peer policy and the client memory pool.
    public var connection: ConnectionOptions
    /// Longest request line in bytes (a `transcribe` request carries its audio as base64 on this line).
    public var maxRequestBytes: Int
    /// Longest audio accepted by `transcribe`, in seconds (from the audio's header, before decoding).
    public var maxAudioSeconds: Double
    /// A `listen` client whose queued events stay above `connection.maxQueuedOutboundBytes` for this long is
    /// disconnected. Until then its events wait in its own bounded stream, without holding up anyone else.
    public var listenStallTimeout: TimeAmount

    /// Creates a configuration.
    public init(
        connection: ConnectionOptions = ConnectionOptions(), maxRequestBytes: Int = 16 * 1024 * 1024,
        maxAudioSeconds: Double = 120, listenStallTimeout: TimeAmount = .seconds(10)
    ) {
        self.listenStallTimeout = listenStallTimeout
        self.connection = connection
        self.maxRequestBytes = maxRequestBytes
        self.maxAudioSeconds = maxAudioSeconds
    }
}

/// The daemon's control server: JSON lines over a Unix socket, used by `myqasrctl` (see docs/protocol.md).
public final class ControlServer: Sendable {
    private let core: SocketServerCore

    /// Creates a server; nothing listens until `start()`.
    public init(
        endpoints: [ListenerEndpoint], control: ControlBackend, transcription: TranscriptionBackend,
        configuration: ControlServerConfiguration = ControlServerConfiguration(),
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "myqasr.control")
    ) {
        core = SocketServerCore(
            name: "control", endpoints: endpoints, options: configuration.connection, group: group, logger: logger,
            rejection: { code, message in
                ControlWire.failure(id: .null, code: code.replacingOccurrences(of: "-", with: "_"), message: message)
                    + [UInt8(ascii: "\n")]
            },
            makeHandlers: { connection in
                [
                    ByteToMessageHandler(MeteredDecoder(
                        LineFraming(maxLength: configuration.maxRequestBytes), context: connection,
                        timeout: configuration.connection.requestTimeout)),
                    ControlSessionHandler(
                        control: control, transcription: transcription, configuration: configuration,
                        connection: connection, logger: logger),
                ]
            })
    }

    /// Binds every endpoint. Throws `ServingError` (for example `socketInUse`) and binds nothing on failure.
    public func start() async throws { try await core.start() }

    /// Stops accepting, lets requests in progress finish (up to the grace period), closes all connections
    /// (ending `listen` streams) and removes the socket files this server created.
    public func shutdown() async { await core.shutdown() }

    /// Addresses actually bound.
    public var localAddresses: [SocketAddress] { core.localAddresses }

    /// Connections currently open.
    public var connectionCount: Int { core.connectionCount }
}

/// One control connection: requests are answered in order; after `listen` it only carries pushed events.
///
/// A request is parsed and its audio decoded off the event loop (`Intake`), then carried out in a task that is
/// cancelled if the client goes away. A client that shuts down its sending side gets the answers to what it sent
/// (an unterminated last line included), then the connection closes.
final class ControlSessionHandler: ChannelDuplexHandler {
    typealias InboundIn = Received<ByteBuffer>
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let control: ControlBackend
    private let transcription: TranscriptionBackend
    private let configuration: ControlServerConfiguration
    private let connection: ConnectionContext
    private let logger: Logger

    private var busy = false
    private var queue: [Received<ByteBuffer>] = []
    private var readPending = false
    private var closeWhenIdle = false
    private var closing = false
    private var listenTask: Task<Void, Never>?
    private var requestTask: Task<Void, Never>?
    private var writabilityWaiters: [EventLoopPromise<Bool>] = []

    init(
        control: ControlBackend, transcription: TranscriptionBackend, configuration: ControlServerConfiguration,
        connection: ConnectionContext, logger: Logger
    ) {
        self.control = control
        self.transcription = transcription
        self.configuration = configuration
        self.connection = connection
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let received = unwrapInboundIn(data)
        if listenTask != nil || closing { return }  // a listening connection carries only events
        if busy { queue.append(received) } else { handle(received, context: context) }
    }

    func read(context: ChannelHandlerContext) {
        // Backpressure: no more reads while a request is being worked on, or while the client is not reading
        // what we already sent.
        if busy || !context.channel.isWritable {
            readPending = true
            connection.activity.holdingReads = true
        } else {
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        listenTask?.cancel()
        requestTask?.cancel()  // the client is gone: its request need not be carried out
        queue.removeAll()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        listenTask?.cancel()
        requestTask?.cancel()
        resolveWaiters(false)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { resolveWaiters(true) }
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        if readPending && !busy && context.channel.isWritable {
            readPending = false
            connection.activity.holdingReads = false
            context.read()
        }
    }

    private func resolveWaiters(_ value: Bool) {
        let waiters = writabilityWaiters
        writabilityWaiters = []
        for waiter in waiters { waiter.succeed(value) }
    }

    /// Succeeds with true once the channel can take more output, or false after the stall timeout.
    private func whenWritable(context: ChannelHandlerContext) -> EventLoopFuture<Bool> {
        if context.channel.isWritable { return context.eventLoop.makeSucceededFuture(true) }
        guard context.channel.isActive else { return context.eventLoop.makeSucceededFuture(false) }
        let promise = context.eventLoop.makePromise(of: Bool.self)
        writabilityWaiters.append(promise)
        let timeout = context.eventLoop.scheduleTask(in: configuration.listenStallTimeout) { [weak self] in
            guard let self, let index = self.writabilityWaiters.firstIndex(where: { $0.futureResult === promise.futureResult })
            else { return }
            self.writabilityWaiters.remove(at: index)
            promise.succeed(false)
        }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        return promise.futureResult
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !closing else { return }
        if let tooLong = error as? LineFraming.LineTooLong {
            write(ControlWire.failure(id: .null, code: "request_too_large", message: tooLong.description),
                  context: context)
        } else if let refused = error as? ClientMemoryError {
            let failure = ControlSessionHandler.failure(refused)
            write(ControlWire.failure(id: .null, code: failure.code, message: failure.message), context: context)
        } else {
            logger.debug("control connection error: \(error)")
        }
        closeAfterFlush(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if !busy && listenTask == nil { context.close(promise: nil) }
        } else if event is ServerShuttingDownEvent {
            if busy { closeWhenIdle = true } else { context.close(promise: nil) }
        } else if let deadline = event as? RequestDeadlineEvent {
            guard !closing else { return }
            write(ControlWire.failure(id: .null, code: "request_timeout", message: deadline.description), context: context)
            closeAfterFlush(context: context)
        } else if let channelEvent = event as? ChannelEvent, channelEvent == .inputClosed {
            // The client has sent everything it will: answer what it sent, then close.
            if listenTask != nil || (!busy && queue.isEmpty) { closeAfterFlush(context: context) } else { closeWhenIdle = true }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    private func write(_ line: [UInt8], context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: line.count + 1)
        buffer.writeBytes(line)
        buffer.writeInteger(UInt8(ascii: "\n"))
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Closes once everything written so far has gone out.
    private func closeAfterFlush(context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        queue.removeAll()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }

    private func handle(_ received: Received<ByteBuffer>, context: ChannelHandlerContext) {
        let line = received.request
        if line.readableBytesView.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { return }
        busy = true
        let services = Services(control: control, transcription: transcription, configuration: configuration,
                                memory: connection.memory, origin: connection.origin)
        let charge = received.charge
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        requestTask = Task {
            let outcome = await Self.respond(to: line, charge: charge, services: services)
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.finished(outcome, context: context)
            }
        }
    }

    private func finished(_ outcome: Outcome, context: ChannelHandlerContext) {
        requestTask = nil
        switch outcome {
        case .reply(let response): write(response, context: context)
        case .listen(let id): startListening(id: id, context: context)
        }
        busy = false
        if closeWhenIdle && listenTask == nil && queue.isEmpty {
            closeAfterFlush(context: context)
            return
        }
        while !busy, listenTask == nil, !queue.isEmpty, context.channel.isActive, !closing {
            handle(queue.removeFirst(), context: context)
        }
        if closeWhenIdle && !busy && listenTask == nil { closeAfterFlush(context: context) }
        resumeReadingIfPossible(context: context)
    }

    private func startListening(id: JSONValue, context: ChannelHandlerContext) {
        queue.removeAll()
        let stream = control.liveTranscripts()
        write(ControlWire.success(id: id, result: ["listening": true]), context: context)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        listenTask = Task {
            for await transcript in stream {
                if Task.isCancelled { break }
                // Per-connection backpressure: take the next transcript only when this client has room.
                let writable = try? await eventLoop.flatSubmit {
                    let (handler, context) = loopBound.value
                    return handler.whenWritable(context: context)
                }.get()
                guard writable == true else { break }
                eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.push(transcript, context: context)
                }
            }
            eventLoop.execute {
                let (handler, context) = loopBound.value
                if context.channel.isActive && !context.channel.isWritable {
                    handler.logger.notice("control: dropping a listen client that stopped reading")
                }
                // Stalled client dropped, or the daemon ended the stream (for example, shutting down).
                context.close(promise: nil)
            }
        }
    }

    private func push(_ transcript: LiveTranscript, context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        write(ControlWire.event(transcript), context: context)
    }

    // MARK: - Requests (off the event loop)

    /// What a request needs besides its line.
    struct Services: Sendable {
        var control: ControlBackend
        var transcription: TranscriptionBackend
        var configuration: ControlServerConfiguration
        var memory: ClientMemoryAccount
        var origin: RequestOrigin
    }

    enum Outcome: Sendable {
        /// A response line (without the newline).
        case reply([UInt8])
        /// `listen`: acknowledged and started on the event loop.
        case listen(id: JSONValue)
    }

    /// A request read from its line.
    struct Request: Sendable {
        var id: JSONValue
        var command: ControlCommand
        var fields: [String: JSONValue]
    }

    /// Parses `line` and carries it out. `charge` holds the line's bytes; it is given back once the line and
    /// anything made from it (the parsed audio string, the decoded audio bytes) are gone.
    static func respond(to line: ByteBuffer, charge: ClientMemoryCharge, services: Services) async -> Outcome {
        var id: JSONValue = .null
        // Given back before the answer goes out, whatever the outcome: a client that has its answer holds nothing.
        defer { charge.release() }
        do {
            // Parsing copies the line's strings, decoding base64 audio makes its bytes: charged before both.
            try charge.grow(by: 2 * line.readableBytes)
            let request = try await Intake.run { try parse(line) }
            id = request.id
            if request.command == .listen {
                charge.release()
                return .listen(id: id)
            }
            let result = try await execute(request, lineCharge: charge, services: services)
            return .reply(ControlWire.success(id: id, result: result))
        } catch let error as ControlError {
            return .reply(ControlWire.failure(id: id, code: error.code, message: error.message))
        } catch let error as IdentifiedError {
            return .reply(ControlWire.failure(id: error.id, code: error.error.code, message: error.error.message))
        } catch let error as ClientMemoryError {
            let failure = Self.failure(error)
            return .reply(ControlWire.failure(id: id, code: failure.code, message: failure.message))
        } catch {
            return .reply(ControlWire.failure(id: id, code: "internal", message: "\(error)"))
        }
    }

    /// The control error for memory a request could not be given: too large for any connection, or busy.
    static func failure(_ error: ClientMemoryError) -> ControlError {
        switch error {
        case .connectionLimit: return ControlError(code: "request_too_large", message: error.description)
        case .poolExhausted: return ControlError(code: "busy", message: error.description)
        }
    }

    /// Reads a request line: a JSON object with a known string `command`.
    static func parse(_ line: ByteBuffer) throws -> Request {
        let value: JSONValue
        do { value = try JSONValue.parse(line.readableBytesView) } catch let error as JSONParseError {
            throw ControlError(code: "bad_request", message: "request is not valid JSON: \(error)")
        }
        guard case .object(let fields) = value else {
            throw ControlError(code: "bad_request", message: "request is not a JSON object")
        }
        let id = fields["id"] ?? .null
        guard let name = fields["command"]?.stringValue else {
            throw IdentifiedError(id: id, error: ControlError(code: "bad_request", message: "request has no string \"command\""))
        }
        guard let command = ControlCommand(rawValue: name) else {
            let known = ControlCommand.allCases.map(\.rawValue).joined(separator: ", ")
            throw IdentifiedError(id: id, error: ControlError(
                code: "unknown_command", message: "unknown command \"\(name)\" (known: \(known))"))
        }
        return Request(id: id, command: command, fields: fields)
    }

    private static func execute(_ request: Request, lineCharge: ClientMemoryCharge, services: Services) async throws
        -> JSONValue
    {
        let control = services.control
        switch request.command {
        case .status:
            lineCharge.release()
            var status = await control.status()
            let pool = services.configuration.connection.memory
            status.clientBuffers = ClientBufferStatus(
                usedBytes: pool.usedBytes, peakBytes: pool.peakBytes, limitBytes: pool.limit)
            return try JSONValue(encoding: status)
        case .budget:
            lineCharge.release()
            if request.fields["unlimited"]?.boolValue == true {
                try await control.setBudget(bytes: nil)
                return ["unlimited": true]
            }
            let bytes = try budgetBytes(request.fields["bytes"])
            try await control.setBudget(bytes: bytes)
            return ["budget_bytes": .number(Double(bytes))]
        case .reload:
            lineCharge.release()
            try await control.reload()
            return [:]
        case .forget:
            lineCharge.release()
            try await control.forget()
            return [:]
        case .transcribe:
            let language = request.fields["language"]?.stringValue
            let audio = try await Intake.run {
                try IntakeAudio.decode(request.fields, configuration: services.configuration, memory: services.memory)
            }
            // The line, its parsed copy and the decoded bytes are gone: only the samples stay, under their charge.
            lineCharge.release()
            defer { audio.charge.release() }
            let result = try await services.transcription.transcribe(samples: audio.samples, language: language,
                                                                    origin: services.origin)
            return try JSONValue(encoding: result)
        case .listen:
            return [:]  // handled on the event loop
        }
    }

    /// The `bytes` of a `budget` request: a whole number of bytes, positive and below 2^53.
    static func budgetBytes(_ value: JSONValue?) throws -> Int {
        guard case .number(let n)? = value, n > 0, n.rounded() == n else {
            throw ControlError(code: "bad_request",
                               message: "budget needs a positive integer \"bytes\" or \"unlimited\": true")
        }
        guard n < 9.0e15, let bytes = Int(exactly: n) else {
            throw ControlError(code: "bad_request", message: "budget \"bytes\" is out of range (at most 9000000000000000)")
        }
        return bytes
    }
}

/// A failure of a request whose `id` is known (so the answer can carry it).
struct IdentifiedError: Error {
    var id: JSONValue
    var error: ControlError
}

/// Decoding the audio of a control `transcribe` request, with its cost computed from the header first.
enum IntakeAudio {
    /// 16 kHz mono samples and the charge that holds their memory.
    struct Decoded: @unchecked Sendable {
        var samples: [Float]
        var charge: ClientMemoryCharge
    }

    /// Decodes `audio` (base64; `format` wav or s16le with `rate` and `channels`). The format and the length come
    /// from the header: a rate or channel count outside what the daemon accepts, or audio longer than
    /// `maxAudioSeconds`, is refused before anything is decoded, and the samples are charged to `memory` before
    /// they are made.
    static func decode(_ fields: [String: JSONValue], configuration: ControlServerConfiguration,
                       memory: ClientMemoryAccount) throws -> Decoded {
        guard let base64 = fields["audio"]?.stringValue, let data = Data(base64Encoded: base64) else {
            throw ControlError(code: "bad_request", message: "transcribe needs base64 \"audio\"")
        }
        let format: PCMFormat
        let samples: Range<Int>
        switch fields["format"]?.stringValue ?? "wav" {
        case "wav":
            do {
                let layout = try WAVDecoder.layout(data: data, name: "request")
                format = PCMFormat(encoding: layout.format.encoding, channelCount: layout.format.channelCount,
                                   sampleRate: layout.format.sampleRate)
                samples = layout.samples
            } catch let error as AudioError {
                if case .unsupportedEncoding = error {
                    throw ControlError(code: "unsupported_format", message: "\(error)")
                }
                throw ControlError(code: "bad_audio", message: "cannot decode WAV: \(error)")
            }
        case "s16le":
            guard case .number(let rate)? = fields["rate"], let rateValue = Int(exactly: rate) else {
                throw ControlError(code: "bad_request", message: "s16le audio needs an integer \"rate\"")
            }
            let channels: Int
            switch fields["channels"] {
            case nil, .null?: channels = 1
            case .number(let n)? where Int(exactly: n) != nil: channels = Int(exactly: n)!
            default: throw ControlError(code: "bad_request", message: "\"channels\" must be an integer")
            }
            format = PCMFormat(encoding: .integer(bits: 16), channelCount: channels, sampleRate: rateValue)
            samples = 0..<data.count
        case let other:
            throw ControlError(code: "unsupported_format", message: "unknown audio format \"\(other)\" (use wav or s16le)")
        }
        do { try format.checkAccepted() } catch {
            throw ControlError(code: "unsupported_format", message: "\(error)")
        }
        let frames = samples.count / format.bytesPerFrame
        let seconds = format.seconds(frames: frames)
        guard seconds <= configuration.maxAudioSeconds else {
            throw ControlError(code: "audio_too_long", message: String(
                format: "audio of %.1f seconds is longer than the %g seconds allowed", seconds, configuration.maxAudioSeconds))
        }
        let converter: PCMConverter
        do { converter = try PCMConverter(format: format) } catch {
            throw ControlError(code: "unsupported_format", message: "\(error)")
        }
        let count = converter.outputCount(frames: frames)
        let charge: ClientMemoryCharge
        do {
            charge = try memory.charge(count * MemoryLayout<Float>.size + converter.workingBytes)
        } catch let error as ClientMemoryError {
            throw ControlSessionHandler.failure(error)
        }
        var output: [Float] = []
        output.reserveCapacity(count)
        data.withUnsafeBytes { raw in
            let payload = UnsafeRawBufferPointer(rebasing: raw[samples])
            var offset = 0
            while offset < payload.count {
                let end = min(payload.count, offset + Intake.pieceBytes)
                converter.convert(UnsafeRawBufferPointer(rebasing: payload[offset..<end]), appendingTo: &output)
                offset = end
            }
        }
        converter.finish(appendingTo: &output)
        charge.shrink(by: converter.workingBytes)
        return Decoded(samples: output, charge: charge)
    }
}
