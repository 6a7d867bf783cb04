import Foundation
import Logging
import NIOCore
import NIOPosix

/// Settings of a `ControlServer`.
public struct ControlServerConfiguration: Sendable {
    /// Connection limits, idle timeout and peer policy.
    public var connection: ConnectionOptions
    /// Longest request line in bytes (a `transcribe` request carries its audio as base64 on this line).
    public var maxRequestBytes: Int
    /// Longest audio accepted by `transcribe`, in seconds.
    public var maxAudioSeconds: Double
    /// Converts `s16le` audio at other rates to 16 kHz.
    public var resampler: Resampler
    /// Decodes `wav` audio to 16 kHz mono; nil makes `format: "wav"` an `unsupported_format` error.
    public var wavDecoder: AudioFileDecoder?
    /// A `listen` client whose queued events stay above `connection.maxQueuedOutboundBytes` for this long is
    /// disconnected. Until then its events wait in its own bounded stream, without holding up anyone else.
    public var listenStallTimeout: TimeAmount

    /// Creates a configuration.
    public init(
        connection: ConnectionOptions = ConnectionOptions(), maxRequestBytes: Int = 16 * 1024 * 1024,
        maxAudioSeconds: Double = 120, resampler: @escaping Resampler = { AudioConversion.resampleTo16k($0, rate: $1) },
        wavDecoder: AudioFileDecoder? = nil, listenStallTimeout: TimeAmount = .seconds(10)
    ) {
        self.listenStallTimeout = listenStallTimeout
        self.connection = connection
        self.maxRequestBytes = maxRequestBytes
        self.maxAudioSeconds = maxAudioSeconds
        self.resampler = resampler
        self.wavDecoder = wavDecoder
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
            makeHandlers: { _, origin in
                [
                    ByteToMessageHandler(LineFrameDecoder(maxLength: configuration.maxRequestBytes)),
                    ControlSessionHandler(
                        control: control, transcription: transcription, configuration: configuration, origin: origin,
                        logger: logger),
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
final class ControlSessionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let control: ControlBackend
    private let transcription: TranscriptionBackend
    private let configuration: ControlServerConfiguration
    private let origin: RequestOrigin
    private let logger: Logger

    private var busy = false
    /// The request being worked on; cancelled when the client goes away.
    private var requestTask: Task<Void, Never>?
    private var queue: [ByteBuffer] = []
    private var readPending = false
    private var closeWhenIdle = false
    private var listenTask: Task<Void, Never>?
    private var writabilityWaiters: [EventLoopPromise<Bool>] = []

    init(
        control: ControlBackend, transcription: TranscriptionBackend, configuration: ControlServerConfiguration,
        origin: RequestOrigin, logger: Logger
    ) {
        self.control = control
        self.transcription = transcription
        self.configuration = configuration
        self.origin = origin
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = unwrapInboundIn(data)
        if listenTask != nil { return }  // a listening connection carries only events
        if busy { queue.append(line) } else { handle(line, context: context) }
    }

    func read(context: ChannelHandlerContext) {
        // Backpressure: no more reads while a request is being worked on, or while the client is not reading
        // what we already sent.
        if busy || !context.channel.isWritable { readPending = true } else { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        listenTask?.cancel()
        requestTask?.cancel()
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
        if let tooLong = error as? LineFrameDecoder.LineTooLong {
            write(ControlWire.failure(id: .null, code: "request_too_large", message: tooLong.description),
                  context: context)
        } else {
            logger.debug("control connection error: \(error)")
        }
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if !busy && listenTask == nil { context.close(promise: nil) }
        } else if event is ServerShuttingDownEvent {
            if busy { closeWhenIdle = true } else { context.close(promise: nil) }
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

    private func handle(_ line: ByteBuffer, context: ChannelHandlerContext) {
        let bytes = line.readableBytesView
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { return }
        guard let request = try? JSONCoding.decoder.decode([String: JSONValue].self, from: Data(bytes)) else {
            write(ControlWire.failure(id: .null, code: "bad_request", message: "request is not a JSON object"),
                  context: context)
            return
        }
        let id = request["id"] ?? .null
        guard let name = request["command"]?.stringValue else {
            write(ControlWire.failure(id: id, code: "bad_request", message: "request has no string \"command\""),
                  context: context)
            return
        }
        guard let command = ControlCommand(rawValue: name) else {
            let known = ControlCommand.allCases.map(\.rawValue).joined(separator: ", ")
            write(ControlWire.failure(id: id, code: "unknown_command",
                                      message: "unknown command \"\(name)\" (known: \(known))"), context: context)
            return
        }
        if command == .listen {
            startListening(id: id, context: context)
            return
        }
        busy = true
        let control = self.control
        let transcription = self.transcription
        let configuration = self.configuration
        let origin = self.origin
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        requestTask = Task {
            let response: [UInt8]
            do {
                let result = try await Self.execute(
                    command, request: request, control: control, transcription: transcription,
                    configuration: configuration, origin: origin)
                response = ControlWire.success(id: id, result: result)
            } catch let error as ControlError {
                response = ControlWire.failure(id: id, code: error.code, message: error.message)
            } catch {
                response = ControlWire.failure(id: id, code: "internal", message: "\(error)")
            }
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.finished(response, context: context)
            }
        }
    }

    private func finished(_ response: [UInt8], context: ChannelHandlerContext) {
        write(response, context: context)
        busy = false
        requestTask = nil
        if closeWhenIdle {
            context.close(promise: nil)
            return
        }
        while !busy, listenTask == nil, !queue.isEmpty, context.channel.isActive {
            handle(queue.removeFirst(), context: context)
        }
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

    private static func execute(
        _ command: ControlCommand, request: [String: JSONValue], control: ControlBackend,
        transcription: TranscriptionBackend, configuration: ControlServerConfiguration, origin: RequestOrigin
    ) async throws -> JSONValue {
        switch command {
        case .status:
            return try JSONValue(encoding: await control.status())
        case .budget:
            if request["unlimited"]?.boolValue == true {
                try await control.setBudget(bytes: nil)
                return ["unlimited": true]
            }
            guard let bytes = request["bytes"]?.intValue, bytes > 0 else {
                throw ControlError(code: "bad_request", message: "budget needs a positive integer \"bytes\" or \"unlimited\": true")
            }
            try await control.setBudget(bytes: bytes)
            return ["budget_bytes": .number(Double(bytes))]
        case .reload:
            try await control.reload()
            return [:]
        case .forget:
            try await control.forget()
            return [:]
        case .transcribe:
            let samples = try decodeAudio(request, configuration: configuration)
            let language = request["language"]?.stringValue
            return try JSONValue(encoding: try await transcription.transcribe(samples: samples, language: language,
                                                                              origin: origin))
        case .listen:
            return [:]  // handled on the event loop
        }
    }

    /// Decodes the audio of a `transcribe` request to 16 kHz mono samples.
    static func decodeAudio(_ request: [String: JSONValue], configuration: ControlServerConfiguration) throws -> [Float] {
        guard let base64 = request["audio"]?.stringValue, let data = Data(base64Encoded: base64) else {
            throw ControlError(code: "bad_request", message: "transcribe needs base64 \"audio\"")
        }
        let format = request["format"]?.stringValue ?? "wav"
        let samples: [Float]
        switch format {
        case "wav":
            guard let decoder = configuration.wavDecoder else {
                throw ControlError(code: "unsupported_format", message: "this daemon cannot decode WAV; send s16le")
            }
            do { samples = try decoder(data) } catch {
                throw ControlError(code: "bad_audio", message: "cannot decode WAV: \(error)")
            }
        case "s16le":
            guard let rate = request["rate"]?.intValue else {
                throw ControlError(code: "bad_request", message: "s16le audio needs an integer \"rate\"")
            }
            let channels = request["channels"]?.intValue ?? 1
            do { try AudioConversion.validate(rate: rate, width: 2, channels: channels) } catch {
                throw ControlError(code: "unsupported_format", message: "\(error)")
            }
            if Double(data.count / (2 * channels)) > configuration.maxAudioSeconds * Double(rate) {
                throw ControlError(code: "audio_too_long",
                                   message: "audio longer than \(configuration.maxAudioSeconds) seconds")
            }
            let mono = AudioConversion.monoFloat(pcm: Array(data), width: 2, channels: channels)
            samples = rate == AudioConversion.targetRate ? mono : configuration.resampler(mono, rate)
        default:
            throw ControlError(code: "unsupported_format", message: "unknown audio format \"\(format)\" (use wav or s16le)")
        }
        if Double(samples.count) > configuration.maxAudioSeconds * Double(AudioConversion.targetRate) {
            throw ControlError(code: "audio_too_long", message: "audio longer than \(configuration.maxAudioSeconds) seconds")
        }
        return samples
    }
}
