import Foundation
import NIOCore

/// The commands of the control protocol (see docs/protocol.md).
public enum ControlCommand: String, Sendable, CaseIterable, Codable {
    /// Report `DaemonStatus`.
    case status
    /// Set the memory budget: argument `bytes`.
    case budget
    /// Reload configuration and model.
    case reload
    /// Stream live transcripts until the client closes.
    case listen
    /// Transcribe audio sent in the request: `audio` (base64), `format` (`wav` or `s16le`), `rate`, `channels`, `language`.
    case transcribe
    /// Delete personal data.
    case forget
}

/// Wire format helpers for the control protocol: one JSON object per line in each direction.
public enum ControlWire {
    /// A success response line (without the newline).
    public static func success(id: JSONValue, result: JSONValue) -> [UInt8] {
        line(["id": id, "ok": true, "result": result])
    }

    /// A failure response line (without the newline).
    public static func failure(id: JSONValue, code: String, message: String) -> [UInt8] {
        line(["id": id, "ok": false, "error": ["code": .string(code), "message": .string(message)]])
    }

    /// A pushed `transcript` (or, for a partial transcript, `partial`) event line for `listen` clients (without
    /// the newline).
    public static func event(_ transcript: LiveTranscript) -> [UInt8] {
        var object: [String: JSONValue] = [
            "event": transcript.partial ? "partial" : "transcript", "text": .string(transcript.text),
            "start": .number(transcript.start), "end": .number(transcript.end),
        ]
        if let language = transcript.language { object["language"] = .string(language) }
        return line(.object(object))
    }

    static func line(_ value: JSONValue) -> [UInt8] {
        // Encoding a JSON value tree cannot fail.
        Array(try! value.jsonData())
    }
}

/// Splits a byte stream into newline-terminated lines of at most `maxLength` bytes.
struct LineFraming: RequestFraming {
    /// A line longer than the limit: the connection cannot continue.
    struct LineTooLong: Error, CustomStringConvertible {
        let limit: Int
        var description: String { "request line longer than \(limit) bytes" }
    }

    let maxLength: Int
    /// Bytes at the start of the buffer already searched for a newline.
    private var searched = 0

    init(maxLength: Int) { self.maxLength = maxLength }

    mutating func next(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        let view = buffer.readableBytesView
        guard let newline = view[(view.startIndex + searched)...].firstIndex(of: UInt8(ascii: "\n")) else {
            searched = view.count
            if view.count > maxLength { throw LineTooLong(limit: maxLength) }
            return nil
        }
        searched = 0
        let length = newline - view.startIndex
        if length > maxLength { throw LineTooLong(limit: maxLength) }
        let line = buffer.readSlice(length: length)!
        buffer.moveReaderIndex(forwardBy: 1)
        return line
    }

    /// An unterminated last line before the end of the input is still a request (it is answered).
    mutating func last(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        searched = 0
        guard buffer.readableBytes > 0, buffer.readableBytes <= maxLength else { return nil }
        return buffer.readSlice(length: buffer.readableBytes)!
    }
}
