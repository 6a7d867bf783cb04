import Audio
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
    /// Connection limits, idle and request timeouts, peer policy and the client memory pool.
    public var connection: ConnectionOptions
    /// Limits on incoming event sizes.
    public var framing: WyomingFramingLimits
    /// Longest audio accepted in one transcription request, in seconds (counted at the declared rate as the
    /// chunks arrive).
    public var maxAudioSeconds: Double
    /// Produces the `info` answer to `describe` (called per request, so it can follow model reloads).
    public var serviceInfo: @Sendable () -> WyomingServiceInfo

    /// Creates a configuration.
    public init(
        connection: ConnectionOptions = ConnectionOptions(), framing: WyomingFramingLimits = WyomingFramingLimits(),
        maxAudioSeconds: Double = 120,
        serviceInfo: @escaping @Sendable () -> WyomingServiceInfo = {
            WyomingServiceInfo(modelName: "whisper", languages: ["en"])
        }
    ) {
        self.connection = connection
        self.framing = framing
        self.maxAudioSeconds = maxAudioSeconds
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
            makeHandlers: { connection in
                [
                    ByteToMessageHandler(MeteredDecoder(
                        WyomingFrameDecoder(limits: configuration.framing), context: connection,
                        timeout: configuration.connection.requestTimeout)),
                    WyomingSessionHandler(backend: backend, configuration: configuration, connection: connection,
                                          logger: logger),
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

/// One Wyoming connection: converts the audio of a `transcribe` request to 16 kHz as its chunks arrive (off the
/// event loop, charging the samples to the connection's memory account first) and answers with a transcript.
/// While the audio streams in, every `backend.partialInterval` seconds of it are transcribed (when the backend has
/// an idle worker) and the words two partial transcripts in a row agree on are sent as `transcript-chunk`s after a
/// `transcript-start`; `audio-stop` brings the rest and the final `transcript`.
final class WyomingSessionHandler: ChannelDuplexHandler {
    typealias InboundIn = Received<WyomingFrame>
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The audio of the request being received: the converter, the 16 kHz samples so far, and their charge.
    /// Touched by one thread at a time: the event loop, or the intake job it waits for.
    final class Stream: @unchecked Sendable {
        let converter: PCMConverter
        let charge: ClientMemoryCharge
        /// Most samples this stream may make (`maxAudioSeconds` at its rate).
        let maxSamples: Int
        var samples: [Float] = []
        // Partial transcripts; touched on the event loop only.
        /// Samples between two partial passes (0: none), and the count at which the next is due.
        let partialStep: Int
        var nextPartial: Int
        var partialTask: Task<Void, Never>?
        /// The latest partial transcript's words, and the words sent as chunks so far.
        var hypothesis: [Substring] = []
        var committed: [Substring] = []
        /// Whether `transcript-start` was sent.
        var started = false

        init(converter: PCMConverter, charge: ClientMemoryCharge, maxSamples: Int, partialStep: Int) {
            self.converter = converter
            self.charge = charge
            self.maxSamples = maxSamples
            self.partialStep = partialStep
            nextPartial = partialStep
        }

        /// Makes room for `more` samples, charging the growth before allocating it (capacity doubles, up to
        /// `maxSamples`).
        func reserve(_ more: Int) throws {
            let needed = samples.count + more
            guard needed > samples.capacity else { return }
            let capacity = min(max(needed, 2 * samples.capacity), max(needed, maxSamples))
            try charge.grow(by: (capacity - samples.capacity) * MemoryLayout<Float>.size)
            samples.reserveCapacity(capacity)
        }
    }

    private let backend: TranscriptionBackend
    private let configuration: WyomingServerConfiguration
    private let connection: ConnectionContext
    private let logger: Logger

    private var language: String?
    private var stream: Stream?
    /// After an audio error, chunks are ignored until `audio-stop`.
    private var discarding = false
    private var busy = false
    private var queue: [Received<WyomingFrame>] = []
    private var readPending = false
    private var closeWhenIdle = false
    private var closing = false
    private var requestTask: Task<Void, Never>?

    init(backend: TranscriptionBackend, configuration: WyomingServerConfiguration, connection: ConnectionContext,
         logger: Logger) {
        self.backend = backend
        self.configuration = configuration
        self.connection = connection
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let received = unwrapInboundIn(data)
        if closing { return }
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

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfPossible(context: context)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        requestTask?.cancel()  // the client is gone: its transcription need not be carried out
        stream?.partialTask?.cancel()
        queue.removeAll()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        requestTask?.cancel()
        stream?.partialTask?.cancel()
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        if readPending && !busy && context.channel.isWritable {
            readPending = false
            connection.activity.holdingReads = false
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !closing else { return }
        if let framing = error as? WyomingFramingError {
            send(.error(framing.description, code: framing.code), context: context)
        } else if let refused = error as? ClientMemoryError {
            send(.error(refused.description, code: Self.code(refused)), context: context)
        } else {
            logger.debug("wyoming connection error: \(error)")
        }
        closeAfterFlush(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if !busy && !closing {
                send(.error("no activity; closing the connection", code: "idle-timeout"), context: context)
                closeAfterFlush(context: context)
            }
        } else if event is ServerShuttingDownEvent {
            if busy { closeWhenIdle = true } else { context.close(promise: nil) }
        } else if let deadline = event as? RequestDeadlineEvent {
            guard !closing else { return }
            send(.error(deadline.description, code: "request-timeout"), context: context)
            closeAfterFlush(context: context)
        } else if let channelEvent = event as? ChannelEvent, channelEvent == .inputClosed {
            // The client has sent everything it will: answer what it sent, then close.
            if !busy && queue.isEmpty { closeAfterFlush(context: context) } else { closeWhenIdle = true }
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

    /// Forgets the request's audio, stopping its partial pass.
    private func dropStream() {
        stream?.partialTask?.cancel()
        stream = nil
    }

    /// Closes once everything written so far has gone out.
    private func closeAfterFlush(context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        queue.removeAll()
        dropStream()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }

    /// The Wyoming error code for a refused memory charge.
    static func code(_ error: ClientMemoryError) -> String {
        switch error {
        case .connectionLimit: return "request-too-large"
        case .poolExhausted: return "busy"
        }
    }

    private func handle(_ received: Received<WyomingFrame>, context: ChannelHandlerContext) {
        guard case .event(let event) = received.request else {
            if case .malformed(let reason) = received.request { send(.error(reason, code: "malformed-event"), context: context) }
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
            dropStream()
            discarding = false
        case "audio-start":
            discarding = false
            dropStream()
            startStream(event, context: context)
        case "audio-chunk":
            if discarding { return }
            if stream == nil && !startStream(event, context: context) { return }
            appendChunk(event, charge: received.charge, context: context)
        case "audio-stop":
            if discarding {
                discarding = false
                dropStream()
                language = nil
                return
            }
            finish(context: context)
        default:
            break  // Wyoming servers ignore events they do not handle.
        }
    }

    /// The PCM format an event declares, or nil (and an error sent) if it is missing or not accepted.
    private func format(of event: WyomingEvent, context: ChannelHandlerContext) -> PCMFormat? {
        guard case .number(let r)? = event.data["rate"], let rate = Int(exactly: r),
              case .number(let w)? = event.data["width"], let width = Int(exactly: w),
              case .number(let c)? = event.data["channels"], let channels = Int(exactly: c)
        else {
            fail("\(event.type) needs integer rate, width and channels", code: "bad-audio-format", context: context)
            return nil
        }
        do {
            let format = try PCMFormat(width: width, channelCount: channels, sampleRate: rate)
            try format.checkAccepted()
            return format
        } catch {
            fail("\(error)", code: "unsupported-audio-format", context: context)
            return nil
        }
    }

    /// Starts collecting audio in the event's format; false (and an error sent) if it is invalid.
    @discardableResult
    private func startStream(_ event: WyomingEvent, context: ChannelHandlerContext) -> Bool {
        guard let format = format(of: event, context: context) else { return false }
        do {
            let converter = try PCMConverter(format: format)
            let charge = try connection.memory.charge(converter.workingBytes)
            let maxFrames = Int(configuration.maxAudioSeconds * Double(format.sampleRate))
            stream = Stream(converter: converter, charge: charge, maxSamples: converter.outputCount(frames: maxFrames),
                            partialStep: Int(max(0, backend.partialInterval) * 16000))
            return true
        } catch let error as ClientMemoryError {
            fail(error.description, code: Self.code(error), context: context)
        } catch {
            fail("\(error)", code: "unsupported-audio-format", context: context)
        }
        return false
    }

    private func appendChunk(_ event: WyomingEvent, charge: ClientMemoryCharge, context: ChannelHandlerContext) {
        guard let current = stream else { return }
        // Chunks may leave out the format (then the stream's applies); a format they give must be the stream's.
        if event.data["rate"] != nil || event.data["width"] != nil || event.data["channels"] != nil {
            guard let format = format(of: event, context: context) else { return }
            guard format == current.converter.format else {
                fail("audio-chunk format (\(format.sampleRate) Hz, \(format.encoding.bytesPerSample) bytes, "
                     + "\(format.channelCount) channels) differs from the stream's", code: "unsupported-audio-format",
                     context: context)
                return
            }
        }
        let payload = event.payload ?? []
        let format = current.converter.format
        let frames = current.converter.framesIn + payload.count / format.bytesPerFrame
        if format.seconds(frames: frames) > configuration.maxAudioSeconds {
            fail("audio longer than \(configuration.maxAudioSeconds) seconds", code: "audio-too-long", context: context)
            return
        }
        do {
            try current.reserve(current.converter.outputBound(afterAdding: payload.count))
        } catch let error as ClientMemoryError {
            fail(error.description, code: Self.code(error), context: context)
            return
        } catch {
            fail("\(error)", code: "internal", context: context)
            return
        }
        runOffLoop(context: context) {
            payload.withUnsafeBytes { current.converter.convert($0, appendingTo: &current.samples) }
            charge.release()  // the chunk's bytes are converted: only its samples stay
        }
    }

    /// Marks the connection busy (reads held back), runs `work` on the intake queue, then carries on with the
    /// events that arrived meanwhile.
    private func runOffLoop(context: ChannelHandlerContext, _ work: @escaping @Sendable () -> Void) {
        busy = true
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        DispatchQueue.global(qos: .utility).async {
            work()
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.idle(context: context)
            }
        }
    }

    /// Sends an error and ignores the rest of this request's audio.
    private func fail(_ text: String, code: String, context: ChannelHandlerContext) {
        send(.error(text, code: code), context: context)
        dropStream()
        discarding = true
    }

    /// Starts a partial pass over the audio so far when the stream is due one and none runs. On the event loop,
    /// while no intake job touches the samples.
    private func startPartialIfDue(context: ChannelHandlerContext) {
        guard !busy, !closing, let current = stream, current.partialStep > 0, current.partialTask == nil,
              current.samples.count >= current.nextPartial else { return }
        current.nextPartial = (current.samples.count / current.partialStep + 1) * current.partialStep
        // The copy is charged to the connection like the audio itself; without room, no partial this time.
        guard let charge = try? connection.memory.charge(current.samples.count * MemoryLayout<Float>.size) else { return }
        let samples = current.samples.withUnsafeBufferPointer { Array($0) }
        let (backend, origin, language) = (self.backend, connection.origin, self.language)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        current.partialTask = Task {
            let result = await backend.transcribePartial(samples: samples, language: language, origin: origin)
            charge.release()
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.partialFinished(result, stream: current, context: context)
            }
        }
    }

    /// Sends the words the new partial transcript agrees on with the one before, beyond those already sent.
    private func partialFinished(_ result: TranscriptResult?, stream current: Stream, context: ChannelHandlerContext) {
        current.partialTask = nil
        guard current === stream, !closing else { return }
        if let result {
            let words = result.text.split(separator: " ")
            let agreed = zip(current.hypothesis, words).prefix { Self.sameWord($0, $1) }.count
            current.hypothesis = words
            if agreed > current.committed.count,
               zip(current.committed, words).allSatisfy({ Self.sameWord($0, $1) }) {
                if !current.started {
                    current.started = true
                    var data: [String: JSONValue] = [:]
                    if let language = result.language ?? language { data["language"] = .string(language) }
                    send(WyomingEvent(type: "transcript-start", data: data), context: context, flush: false)
                }
                let piece = words[current.committed.count..<agreed].joined(separator: " ")
                send(WyomingEvent(type: "transcript-chunk",
                                  data: ["text": .string(current.committed.isEmpty ? piece : " " + piece)]),
                     context: context)
                current.committed = Array(words[..<agreed])
            }
        }
        startPartialIfDue(context: context)
    }

    /// Words equal but for case and punctuation (a partial transcript often ends a word before its comma).
    static func sameWord(_ a: Substring, _ b: Substring) -> Bool {
        func bare(_ word: Substring) -> String { word.lowercased().filter { $0.isLetter || $0.isNumber } }
        return bare(a) == bare(b)
    }

    private func finish(context: ChannelHandlerContext) {
        let requestedLanguage = language
        let collected = stream
        dropStream()
        language = nil
        busy = true
        let backend = self.backend
        let origin = connection.origin
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        requestTask = Task {
            let result: Result<TranscriptResult, Error>
            var samples: [Float] = []
            if let collected {
                samples = await withCheckedContinuation { continuation in
                    DispatchQueue.global(qos: .utility).async {
                        collected.converter.finish(appendingTo: &collected.samples)
                        let samples = collected.samples
                        collected.samples = []
                        continuation.resume(returning: samples)
                    }
                }
                collected.charge.shrink(by: collected.converter.workingBytes)
            }
            do {
                result = .success(try await backend.transcribe(samples: samples, language: requestedLanguage,
                                                               origin: origin))
            } catch {
                result = .failure(error)
            }
            samples = []
            collected?.charge.release()
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.transcriptionFinished(result, language: requestedLanguage, streamed: collected, context: context)
            }
        }
    }

    private func transcriptionFinished(
        _ result: Result<TranscriptResult, Error>, language: String?, streamed: Stream?, context: ChannelHandlerContext
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
            // clients), transcript-stop. After chunks from partial transcripts, the rest of the final text follows
            // when it begins with what was sent (else the final `transcript` alone corrects it).
            if streamed?.started != true {
                send(WyomingEvent(type: "transcript-start", data: startData), context: context, flush: false)
            }
            let pieces: [String]
            if let committed = streamed?.committed, !committed.isEmpty {
                let words = transcript.text.split(separator: " ")
                let continues = words.count > committed.count
                    && zip(committed, words).allSatisfy { Self.sameWord($0, $1) }
                pieces = continues ? [" " + words[committed.count...].joined(separator: " ")] : []
            } else {
                pieces = transcript.segments.isEmpty ? [transcript.text] : transcript.segments.map(\.text)
            }
            for piece in pieces {
                send(WyomingEvent(type: "transcript-chunk", data: ["text": .string(piece)]), context: context,
                     flush: false)
            }
            send(WyomingEvent(type: "transcript", data: stopData), context: context, flush: false)
            send(WyomingEvent(type: "transcript-stop"), context: context)
        case .failure(let error as ControlError):
            // The daemon's own refusals keep their code (busy, shutting-down, ...), in Wyoming's spelling.
            send(.error(error.message, code: error.code.replacingOccurrences(of: "_", with: "-")), context: context)
        case .failure(let error) where error is CancellationError:
            logger.debug("transcription dropped: the client went away")
        case .failure(let error):
            logger.warning("transcription failed: \(error)")
            send(.error("transcription failed: \(error)", code: "transcription-failed"), context: context)
        }
        idle(context: context)
    }

    /// The work in progress is done: handle what arrived meanwhile, then read on (or close if asked to).
    private func idle(context: ChannelHandlerContext) {
        busy = false
        startPartialIfDue(context: context)
        while !busy, !queue.isEmpty, context.channel.isActive, !closing {
            handle(queue.removeFirst(), context: context)
        }
        if busy { return }
        if closeWhenIdle {
            closeAfterFlush(context: context)
            return
        }
        resumeReadingIfPossible(context: context)
    }
}
