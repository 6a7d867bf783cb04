import Foundation
import Logging
import NIOCore
import NIOPosix

/// What `describe` reports about the ASR service.
public struct WyomingServiceInfo: Sendable, Equatable {
    /// Program name (the service).
    public var programName: String
    /// Program description.
    public var programDescription: String
    /// Program version.
    public var programVersion: String
    /// Model name.
    public var modelName: String
    /// Model description.
    public var modelDescription: String
    /// Model version, if known.
    public var modelVersion: String?
    /// Languages the model transcribes (ISO 639-1 codes).
    public var languages: [String]
    /// Whether the model is installed and loaded.
    public var installed: Bool
    /// Who made the model.
    public var attributionName: String
    /// Where the model comes from.
    public var attributionURL: String

    /// Creates service information.
    public init(
        programName: String = "myqasr", programDescription: String = "On-device Whisper speech recognition",
        programVersion: String = "0.1.0", modelName: String, modelDescription: String = "Whisper",
        modelVersion: String? = nil, languages: [String], installed: Bool = true,
        attributionName: String = "OpenAI", attributionURL: String = "https://github.com/openai/whisper"
    ) {
        self.programName = programName
        self.programDescription = programDescription
        self.programVersion = programVersion
        self.modelName = modelName
        self.modelDescription = modelDescription
        self.modelVersion = modelVersion
        self.languages = languages
        self.installed = installed
        self.attributionName = attributionName
        self.attributionURL = attributionURL
    }

    /// The `info` event answering `describe`: one `asr` program with one model, transcript streaming supported.
    public var infoEvent: WyomingEvent {
        let attribution: JSONValue = ["name": .string(attributionName), "url": .string(attributionURL)]
        let model: JSONValue = [
            "name": .string(modelName), "attribution": attribution, "installed": .bool(installed),
            "description": .string(modelDescription), "version": modelVersion.map { .string($0) } ?? .null,
            "languages": .array(languages.map { .string($0) }),
        ]
        let program: JSONValue = [
            "name": .string(programName), "attribution": attribution, "installed": .bool(installed),
            "description": .string(programDescription), "version": .string(programVersion),
            "models": [model], "supports_transcript_streaming": true,
            "requires_external_vad": true,
        ]
        return WyomingEvent(type: "info", data: [
            "asr": [program], "tts": [], "handle": [], "intent": [], "wake": [], "mic": [], "snd": [],
        ])
    }
}

/// Settings of a `WyomingServer`.
public struct WyomingServerConfiguration: Sendable {
    /// Connection limits, idle timeout and peer policy.
    public var connection: ConnectionOptions
    /// Limits on incoming event sizes.
    public var framing: WyomingFramingLimits
    /// Longest audio accepted in one transcription request, in seconds.
    public var maxAudioSeconds: Double
    /// Converts audio at other rates to 16 kHz (defaults to the built-in windowed-sinc resampler).
    public var resampler: Resampler
    /// Produces the `info` answer to `describe` (called per request, so it can follow model reloads).
    public var serviceInfo: @Sendable () -> WyomingServiceInfo

    /// Creates a configuration.
    public init(
        connection: ConnectionOptions = ConnectionOptions(), framing: WyomingFramingLimits = WyomingFramingLimits(),
        maxAudioSeconds: Double = 120, resampler: @escaping Resampler = { AudioConversion.resampleTo16k($0, rate: $1) },
        serviceInfo: @escaping @Sendable () -> WyomingServiceInfo = {
            WyomingServiceInfo(modelName: "whisper", languages: ["en"])
        }
    ) {
        self.connection = connection
        self.framing = framing
        self.maxAudioSeconds = maxAudioSeconds
        self.resampler = resampler
        self.serviceInfo = serviceInfo
    }
}

/// A Wyoming protocol ASR server (the protocol Home Assistant speaks) on Unix sockets, activated sockets or TCP.
public final class WyomingServer: Sendable {
    private let core: SocketServerCore

    /// Creates a server; nothing listens until `start()`.
    public init(
        endpoints: [ListenerEndpoint], backend: TranscriptionBackend,
        configuration: WyomingServerConfiguration = WyomingServerConfiguration(),
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "myqasr.wyoming")
    ) {
        core = SocketServerCore(
            name: "wyoming", endpoints: endpoints, options: configuration.connection, group: group, logger: logger,
            rejection: { code, message in WyomingEvent.error(message, code: code).encoded() },
            makeHandlers: { _, origin in
                [
                    ByteToMessageHandler(WyomingFrameDecoder(limits: configuration.framing)),
                    WyomingSessionHandler(backend: backend, configuration: configuration, origin: origin, logger: logger),
                ]
            })
    }

    /// Binds every endpoint. Throws `ServingError` (for example `socketInUse`) and binds nothing on failure.
    public func start() async throws { try await core.start() }

    /// Stops accepting, lets requests in progress finish (up to the grace period), closes all connections and
    /// removes the socket files this server created.
    public func shutdown() async { await core.shutdown() }

    /// Addresses actually bound (useful with TCP port 0).
    public var localAddresses: [SocketAddress] { core.localAddresses }

    /// Connections currently open.
    public var connectionCount: Int { core.connectionCount }
}

/// One Wyoming connection: collects audio of a `transcribe` request and answers with a transcript.
final class WyomingSessionHandler: ChannelDuplexHandler {
    typealias InboundIn = WyomingFrame
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct Audio {
        var rate: Int
        var samples: [Float] = []
        var remainder: [UInt8] = []
    }

    private let backend: TranscriptionBackend
    private let configuration: WyomingServerConfiguration
    private let origin: RequestOrigin
    private let logger: Logger
    /// The transcription being worked on; cancelled when the client goes away.
    private var requestTask: Task<Void, Never>?

    private var language: String?
    private var audio: Audio?
    /// After an audio error, chunks are ignored until `audio-stop`.
    private var discarding = false
    private var busy = false
    private var queue: [WyomingFrame] = []
    private var readPending = false
    private var closeWhenIdle = false

    init(backend: TranscriptionBackend, configuration: WyomingServerConfiguration, origin: RequestOrigin, logger: Logger) {
        self.backend = backend
        self.configuration = configuration
        self.origin = origin
        self.logger = logger
    }

    func channelInactive(context: ChannelHandlerContext) {
        requestTask?.cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        requestTask?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if busy { queue.append(frame) } else { handle(frame, context: context) }
    }

    func read(context: ChannelHandlerContext) {
        // Backpressure: no more reads while a request is being worked on, or while the client is not reading
        // what we already sent.
        if busy || !context.channel.isWritable { readPending = true } else { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        if readPending && !busy && context.channel.isWritable {
            readPending = false
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let framing = error as? WyomingFramingError {
            send(.error(framing.description, code: framing.code), context: context)
        } else {
            logger.debug("wyoming connection error: \(error)")
        }
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if !busy {
                send(.error("no activity; closing the connection", code: "idle-timeout"), context: context)
                context.close(promise: nil)
            }
        } else if event is ServerShuttingDownEvent {
            if busy { closeWhenIdle = true } else { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    private func send(_ event: WyomingEvent, context: ChannelHandlerContext, flush: Bool = true) {
        var buffer = context.channel.allocator.buffer(capacity: 128)
        event.encode(into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
        if flush { context.flush() }
    }

    private func handle(_ frame: WyomingFrame, context: ChannelHandlerContext) {
        guard case .event(let event) = frame else {
            if case .malformed(let reason) = frame { send(.error(reason, code: "malformed-event"), context: context) }
            return
        }
        switch event.type {
        case "describe":
            send(configuration.serviceInfo().infoEvent, context: context)
        case "ping":
            var data: [String: JSONValue] = [:]
            if let text = event.data["text"] { data["text"] = text }
            send(WyomingEvent(type: "pong", data: data), context: context)
        case "transcribe":
            language = event.data["language"]?.stringValue
            audio = nil
            discarding = false
        case "audio-start":
            discarding = false
            audio = nil
            startAudio(event, context: context)
        case "audio-chunk":
            if discarding { return }
            if audio == nil && !startAudio(event, context: context) { return }
            appendChunk(event, context: context)
        case "audio-stop":
            if discarding {
                discarding = false
                audio = nil
                language = nil
                return
            }
            finish(context: context)
        default:
            break  // Wyoming servers ignore events they do not handle.
        }
    }

    /// Reads rate/width/channels from an event and starts collecting audio; false (and an error sent) if invalid.
    @discardableResult
    private func startAudio(_ event: WyomingEvent, context: ChannelHandlerContext) -> Bool {
        guard let rate = event.data["rate"]?.intValue, let width = event.data["width"]?.intValue,
            let channels = event.data["channels"]?.intValue
        else {
            fail("\(event.type) needs integer rate, width and channels", code: "bad-audio-format", context: context)
            return false
        }
        do {
            try AudioConversion.validate(rate: rate, width: width, channels: channels)
        } catch {
            fail("\(error)", code: "unsupported-audio-format", context: context)
            return false
        }
        audio = Audio(rate: rate)
        return true
    }

    private func appendChunk(_ event: WyomingEvent, context: ChannelHandlerContext) {
        guard var current = audio else { return }
        let rate = event.data["rate"]?.intValue ?? current.rate
        let width = event.data["width"]?.intValue ?? 2
        let channels = event.data["channels"]?.intValue ?? 1
        do {
            try AudioConversion.validate(rate: rate, width: width, channels: channels)
        } catch {
            fail("\(error)", code: "unsupported-audio-format", context: context)
            return
        }
        guard rate == current.rate else {
            fail("audio-chunk rate \(rate) differs from the stream's rate \(current.rate)",
                 code: "unsupported-audio-format", context: context)
            return
        }
        audio = nil  // avoid copy-on-write while appending
        var bytes = current.remainder
        bytes += event.payload ?? []
        let frameSize = width * channels
        let usable = bytes.count - bytes.count % frameSize
        current.remainder = Array(bytes[usable...])
        current.samples += AudioConversion.monoFloat(pcm: usable == bytes.count ? bytes : Array(bytes[..<usable]),
                                                     width: width, channels: channels)
        let limit = configuration.maxAudioSeconds * Double(current.rate)
        if Double(current.samples.count) > limit {
            fail("audio longer than \(configuration.maxAudioSeconds) seconds", code: "audio-too-long",
                 context: context)
            return
        }
        audio = current
    }

    /// Sends an error and ignores the rest of this request's audio.
    private func fail(_ text: String, code: String, context: ChannelHandlerContext) {
        send(.error(text, code: code), context: context)
        audio = nil
        discarding = true
    }

    private func finish(context: ChannelHandlerContext) {
        let collected = audio ?? Audio(rate: AudioConversion.targetRate)
        let requestedLanguage = language
        audio = nil
        language = nil
        busy = true
        let backend = self.backend
        let resampler = configuration.resampler
        let origin = self.origin
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        requestTask = Task {
            let result: Result<TranscriptResult, Error>
            do {
                let samples = collected.rate == AudioConversion.targetRate
                    ? collected.samples : resampler(collected.samples, collected.rate)
                result = .success(try await backend.transcribe(samples: samples, language: requestedLanguage,
                                                               origin: origin))
            } catch {
                result = .failure(error)
            }
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.transcriptionFinished(result, language: requestedLanguage, context: context)
            }
        }
    }

    private func transcriptionFinished(
        _ result: Result<TranscriptResult, Error>, language: String?, context: ChannelHandlerContext
    ) {
        requestTask = nil
        switch result {
        case .success(let transcript):
            let lang = transcript.language ?? language
            var startData: [String: JSONValue] = [:]
            var stopData: [String: JSONValue] = ["text": .string(transcript.text)]
            if let lang {
                startData["language"] = .string(lang)
                stopData["language"] = .string(lang)
            }
            // Order from the Wyoming spec: transcript-start, transcript-chunk(s), transcript (for older
            // clients), transcript-stop.
            send(WyomingEvent(type: "transcript-start", data: startData), context: context, flush: false)
            let pieces = transcript.segments.isEmpty ? [transcript.text] : transcript.segments.map(\.text)
            for piece in pieces {
                send(WyomingEvent(type: "transcript-chunk", data: ["text": .string(piece)]), context: context,
                     flush: false)
            }
            send(WyomingEvent(type: "transcript", data: stopData), context: context, flush: false)
            send(WyomingEvent(type: "transcript-stop"), context: context)
        case .failure(let error) where error is CancellationError:
            logger.debug("transcription dropped: the client went away")
        case .failure(let error):
            logger.warning("transcription failed: \(error)")
            send(.error("transcription failed: \(error)", code: "transcription-failed"), context: context)
        }
        busy = false
        if closeWhenIdle {
            context.close(promise: nil)
            return
        }
        while !busy, !queue.isEmpty, context.channel.isActive {
            handle(queue.removeFirst(), context: context)
        }
        resumeReadingIfPossible(context: context)
    }
}
