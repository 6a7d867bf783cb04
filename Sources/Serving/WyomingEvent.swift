import Foundation
import NIOCore

/// One Wyoming protocol event: a type, a JSON data object and an optional binary payload.
///
/// On the wire an event is one JSON header line (`type`, optional inline `data`, optional `data_length`,
/// optional `payload_length`, `version`), then `data_length` bytes of JSON merged into `data`, then
/// `payload_length` bytes of payload.
public struct WyomingEvent: Sendable, Equatable {
    /// The protocol version written in outgoing headers.
    public static let protocolVersion = "1.8.0"

    /// Event type, such as `describe`, `audio-chunk` or `transcript`.
    public var type: String
    /// Event data (inline and trailing data merged).
    public var data: [String: JSONValue]
    /// Binary payload, such as PCM audio for `audio-chunk`.
    public var payload: [UInt8]?

    /// Creates an event.
    public init(type: String, data: [String: JSONValue] = [:], payload: [UInt8]? = nil) {
        self.type = type
        self.data = data
        self.payload = payload
    }

    /// An `error` event with a human-readable `text` and a machine-readable `code`.
    public static func error(_ text: String, code: String) -> WyomingEvent {
        WyomingEvent(type: "error", data: ["text": .string(text), "code": .string(code)])
    }

    /// Serialises the event in the trailing-data form the `wyoming` package writes.
    public func encode(into buffer: inout ByteBuffer) {
        var header: [String: JSONValue] = ["type": .string(type), "version": .string(Self.protocolVersion)]
        var dataBytes: Data?
        if !data.isEmpty {
            // Encoding a JSON value tree cannot fail.
            dataBytes = try! JSONValue.object(data).jsonData()
            header["data_length"] = .number(Double(dataBytes!.count))
        }
        if let payload, !payload.isEmpty { header["payload_length"] = .number(Double(payload.count)) }
        buffer.writeBytes(try! JSONValue.object(header).jsonData())
        buffer.writeInteger(UInt8(ascii: "\n"))
        if let dataBytes { buffer.writeBytes(dataBytes) }
        if let payload, !payload.isEmpty { buffer.writeBytes(payload) }
    }

    /// The serialised event as bytes.
    public func encoded() -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 64 + (payload?.count ?? 0))
        encode(into: &buffer)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }
}

/// Size limits for incoming Wyoming events.
public struct WyomingFramingLimits: Sendable, Equatable {
    /// Longest accepted header line in bytes, newline excluded.
    public var maxHeaderLength: Int
    /// Largest accepted `data_length`.
    public var maxDataLength: Int
    /// Largest accepted `payload_length`.
    public var maxPayloadLength: Int

    /// Creates limits; the defaults suit ASR (a payload of 1 MiB is 32 s of 16 kHz 16-bit mono audio).
    public init(maxHeaderLength: Int = 16 * 1024, maxDataLength: Int = 256 * 1024, maxPayloadLength: Int = 1024 * 1024) {
        self.maxHeaderLength = maxHeaderLength
        self.maxDataLength = maxDataLength
        self.maxPayloadLength = maxPayloadLength
    }
}

/// A framing violation after which the byte stream can no longer be followed; the connection must close.
public enum WyomingFramingError: Error, Equatable, CustomStringConvertible {
    /// A header line longer than the limit (or no newline within it).
    case headerTooLong(limit: Int)
    /// `data_length` above the limit (a length beyond Int's range is kept as the Double it was read as).
    case dataTooLong(length: Double, limit: Int)
    /// `payload_length` above the limit.
    case payloadTooLong(length: Double, limit: Int)
    /// `data_length` or `payload_length` that is not a non-negative integer.
    case invalidLength(field: String)

    /// The Wyoming `error` event code for this violation.
    public var code: String {
        switch self {
        case .headerTooLong: return "header-too-long"
        case .dataTooLong: return "data-too-long"
        case .payloadTooLong: return "payload-too-long"
        case .invalidLength: return "invalid-length"
        }
    }

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .headerTooLong(let limit): return "event header line longer than \(limit) bytes"
        case .dataTooLong(let length, let limit):
            return "data_length \(String(format: "%.0f", length)) exceeds the limit of \(limit) bytes"
        case .payloadTooLong(let length, let limit):
            return "payload_length \(String(format: "%.0f", length)) exceeds the limit of \(limit) bytes"
        case .invalidLength(let field): return "\(field) must be a non-negative integer"
        }
    }
}

/// What the frame decoder produces: a whole event, or a well-framed but unparseable one.
public enum WyomingFrame: Sendable, Equatable {
    /// A complete event.
    case event(WyomingEvent)
    /// A frame whose JSON (header or trailing data) could not be parsed; the stream is still in sync.
    case malformed(reason: String)
}

/// Splits a byte stream into Wyoming events, enforcing `WyomingFramingLimits`.
public struct WyomingFrameDecoder: ByteToMessageDecoder {
    /// Decoded frames.
    public typealias InboundOut = WyomingFrame

    private enum State {
        case header
        case body(type: String, inlineData: [String: JSONValue], dataLength: Int, payloadLength: Int)
    }

    private let limits: WyomingFramingLimits
    private var state = State.header

    /// Creates a decoder with the given limits.
    public init(limits: WyomingFramingLimits = WyomingFramingLimits()) {
        self.limits = limits
    }

    /// Decodes as many frames as the buffer holds.
    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try decodeFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    /// Decodes what is left when the connection closes; a partial event is dropped.
    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        while let frame = try decodeFrame(&buffer) {
            context.fireChannelRead(Self.wrapInboundOut(frame))
        }
        return .needMoreData
    }

    /// Decodes one frame from `buffer`, or returns nil when more bytes are needed. Exposed for unit tests.
    public mutating func decodeFrame(_ buffer: inout ByteBuffer) throws -> WyomingFrame? {
        while true {
            switch state {
            case .header:
                let view = buffer.readableBytesView
                guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
                    if buffer.readableBytes > limits.maxHeaderLength {
                        throw WyomingFramingError.headerTooLong(limit: limits.maxHeaderLength)
                    }
                    return nil
                }
                let lineLength = newline - view.startIndex
                if lineLength > limits.maxHeaderLength {
                    throw WyomingFramingError.headerTooLong(limit: limits.maxHeaderLength)
                }
                let line = buffer.readBytes(length: lineLength)!
                buffer.moveReaderIndex(forwardBy: 1)
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }  // blank line
                guard case .object(let header)? = try? JSONValue.parse(line) else {
                    return .malformed(reason: "event header is not a JSON object")
                }
                guard let type = header["type"]?.stringValue, !type.isEmpty else {
                    return .malformed(reason: "event header has no string \"type\"")
                }
                let dataLength = try length(header["data_length"], field: "data_length", limit: limits.maxDataLength) {
                    WyomingFramingError.dataTooLong(length: $0, limit: $1)
                }
                let payloadLength = try length(
                    header["payload_length"], field: "payload_length", limit: limits.maxPayloadLength
                ) { WyomingFramingError.payloadTooLong(length: $0, limit: $1) }
                var inline: [String: JSONValue] = [:]
                switch header["data"] {
                case nil, .null?: break
                case .object(let o)?: inline = o
                default:
                    // Still skip the declared bytes so the stream stays in sync.
                    state = .body(type: "", inlineData: [:], dataLength: dataLength, payloadLength: payloadLength)
                    continue
                }
                state = .body(type: type, inlineData: inline, dataLength: dataLength, payloadLength: payloadLength)
            case .body(let type, let inline, let dataLength, let payloadLength):
                guard buffer.readableBytes >= dataLength + payloadLength else { return nil }
                state = .header
                let dataBytes = buffer.readBytes(length: dataLength)!
                let payload = payloadLength > 0 ? buffer.readBytes(length: payloadLength)! : nil
                if type.isEmpty { return .malformed(reason: "event \"data\" is not a JSON object") }
                var data = inline
                if dataLength > 0 {
                    guard case .object(let extra)? = try? JSONValue.parse(dataBytes)
                    else { return .malformed(reason: "trailing event data of \(type) is not a JSON object") }
                    data.merge(extra, uniquingKeysWith: { $1 })
                }
                return .event(WyomingEvent(type: type, data: data, payload: payload))
            }
        }
    }

    /// A length field: absent or null is 0; a whole number up to `limit` is the length; a larger one (however
    /// large, even beyond Int) is `tooLong`; anything else is `invalidLength`.
    private func length(
        _ value: JSONValue?, field: String, limit: Int, tooLong: (Double, Int) -> WyomingFramingError
    ) throws -> Int {
        switch value {
        case nil, .null?: return 0
        case .number(let n)? where n >= 0 && n.rounded() == n:
            guard n <= Double(limit) else { throw tooLong(n, limit) }
            return Int(n)
        default:
            throw WyomingFramingError.invalidLength(field: field)
        }
    }
}

extension WyomingFrameDecoder: RequestFraming {
    mutating func next(_ buffer: inout ByteBuffer) throws -> WyomingFrame? { try decodeFrame(&buffer) }
    /// A partial event at the end of the input is dropped.
    mutating func last(_ buffer: inout ByteBuffer) throws -> WyomingFrame? { nil }
}
