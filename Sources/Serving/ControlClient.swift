#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// Why a control request failed, worded for the person running `myqasrctl`.
public enum ControlClientError: Error, Equatable, CustomStringConvertible {
    /// No socket file at the path.
    case socketNotFound(path: String)
    /// The socket exists but this user may not use it (file mode or the daemon's peer policy).
    case permissionDenied(path: String, detail: String)
    /// The socket file exists but nothing is listening on it.
    case daemonNotRunning(path: String)
    /// The daemon did not answer in time.
    case timedOut(seconds: Double)
    /// The daemon closed the connection before answering.
    case connectionClosed
    /// The daemon answered with an error.
    case daemon(code: String, message: String)
    /// The daemon's answer was not a valid response.
    case invalidResponse(String)
    /// A system call failed.
    case system(call: String, errno: Int32)

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .socketNotFound(let p): return "no control socket at \(p): is myqasrd running?"
        case .permissionDenied(let p, let detail):
            return "permission denied on \(p): \(detail) (is your user in the daemon's group?)"
        case .daemonNotRunning(let p): return "nothing is listening on \(p): myqasrd is not running"
        case .timedOut(let s): return "the daemon did not answer within \(s) seconds"
        case .connectionClosed: return "the daemon closed the connection without answering"
        case .daemon(let code, let message): return "\(message) (\(code))"
        case .invalidResponse(let what): return "invalid response from the daemon: \(what)"
        case .system(let call, let e): return "\(call) failed: \(String(cString: strerror(e)))"
        }
    }
}

/// A blocking client for the control socket, as used by `myqasrctl`. One request at a time; not thread-safe.
public final class ControlClient {
    /// The socket path.
    public let socketPath: String
    /// Seconds to wait for each answer (not used while `listen` waits for transcripts).
    public var timeout: Double
    private var fd: Int32
    private var buffer: [UInt8] = []
    private var nextID = 1

    /// Connects to the control socket at `socketPath`.
    public init(socketPath: String, timeout: Double = 60) throws {
        self.socketPath = socketPath
        self.timeout = timeout
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlClientError.system(call: "socket", errno: errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else {
            Glibc.close(fd)
            throw ControlClientError.system(call: "connect(\(socketPath))", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result != 0 {
            let e = errno
            Glibc.close(fd)
            switch e {
            case ENOENT: throw ControlClientError.socketNotFound(path: socketPath)
            case EACCES, EPERM:
                throw ControlClientError.permissionDenied(path: socketPath, detail: "the socket file's mode forbids it")
            case ECONNREFUSED: throw ControlClientError.daemonNotRunning(path: socketPath)
            default: throw ControlClientError.system(call: "connect(\(socketPath))", errno: e)
            }
        }
    }

    deinit { close() }

    /// Closes the connection (also done on deinit).
    public func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    /// Sends one request and returns its `result`; throws `ControlClientError.daemon` for `ok: false`.
    public func request(_ command: ControlCommand, arguments: [String: JSONValue] = [:]) throws -> JSONValue {
        let id = nextID
        nextID += 1
        var object = arguments
        object["id"] = .number(Double(id))
        object["command"] = .string(command.rawValue)
        try send(ControlWire.line(.object(object)) + [UInt8(ascii: "\n")])
        let response = try readResponse(timeout: timeout)
        return try Self.result(of: response, path: socketPath)
    }

    /// The daemon's status.
    public func status() throws -> DaemonStatus {
        try decode(request(.status), as: DaemonStatus.self)
    }

    /// Sets the memory budget (nil: unlimited) and returns once the model for it serves; the daemon refuses
    /// impossible budgets, and budgets whose model fails its self-check, with a `daemon` error.
    public func setBudget(bytes: Int?) throws {
        _ = try request(.budget, arguments: bytes.map { ["bytes": .number(Double($0))] } ?? ["unlimited": true])
    }

    /// Reloads the daemon's configuration and model.
    public func reload() throws { _ = try request(.reload) }

    /// Deletes the daemon's personal data.
    public func forget() throws { _ = try request(.forget) }

    /// Transcribes a WAV file.
    public func transcribe(wav: Data, language: String? = nil) throws -> TranscriptResult {
        var arguments: [String: JSONValue] = ["format": "wav", "audio": .string(wav.base64EncodedString())]
        if let language { arguments["language"] = .string(language) }
        return try decode(request(.transcribe, arguments: arguments), as: TranscriptResult.self)
    }

    /// Transcribes raw signed 16-bit little-endian PCM at `rate` Hz with `channels` interleaved channels.
    public func transcribe(s16le: Data, rate: Int, channels: Int = 1, language: String? = nil) throws
        -> TranscriptResult
    {
        var arguments: [String: JSONValue] = [
            "format": "s16le", "rate": .number(Double(rate)), "channels": .number(Double(channels)),
            "audio": .string(s16le.base64EncodedString()),
        ]
        if let language { arguments["language"] = .string(language) }
        return try decode(request(.transcribe, arguments: arguments), as: TranscriptResult.self)
    }

    /// Streams live transcripts (partial ones marked `partial`) to `onTranscript` until it returns false or the
    /// daemon closes the stream.
    public func listen(_ onTranscript: (LiveTranscript) throws -> Bool) throws {
        _ = try request(.listen)
        while true {
            let line: [String: JSONValue]
            do { line = try readResponse(timeout: nil) } catch ControlClientError.connectionClosed { return }
            let event = line["event"]?.stringValue
            guard event == "transcript" || event == "partial" else { continue }
            var transcript = try decode(.object(line), as: LiveTranscript.self)
            transcript.partial = event == "partial"
            if try !onTranscript(transcript) { return }
        }
    }

    private func decode<T: Decodable>(_ value: JSONValue, as type: T.Type) throws -> T {
        do { return try value.decode(T.self) } catch {
            throw ControlClientError.invalidResponse("cannot read \(T.self): \(error)")
        }
    }

    static func result(of response: [String: JSONValue], path: String) throws -> JSONValue {
        guard let ok = response["ok"]?.boolValue else { throw ControlClientError.invalidResponse("no \"ok\" field") }
        if ok { return response["result"] ?? .null }
        let code = response["error"]?["code"]?.stringValue ?? "unknown"
        let message = response["error"]?["message"]?.stringValue ?? "unknown error"
        if code == "permission_denied" { throw ControlClientError.permissionDenied(path: path, detail: message) }
        throw ControlClientError.daemon(code: code, message: message)
    }

    private func send(_ bytes: [UInt8]) throws {
        guard fd >= 0 else { throw ControlClientError.connectionClosed }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {  Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                // The daemon may have refused us and closed: prefer its explanation if one arrived.
                if errno == EPIPE || errno == ECONNRESET, let response = try? readResponse(timeout: 1) {
                    _ = try Self.result(of: response, path: socketPath)
                }
                throw errno == EPIPE || errno == ECONNRESET
                    ? ControlClientError.connectionClosed : ControlClientError.system(call: "send", errno: errno)
            }
            offset += n
        }
    }

    /// Reads one JSON line; `timeout` nil waits forever.
    private func readResponse(timeout: Double?) throws -> [String: JSONValue] {
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                if line.isEmpty { continue }
                guard let object = try? JSONCoding.decoder.decode([String: JSONValue].self, from: Data(line)) else {
                    throw ControlClientError.invalidResponse("a line that is not a JSON object")
                }
                return object
            }
            guard fd >= 0 else { throw ControlClientError.connectionClosed }
            var pollTimeout: Int32 = -1
            if let deadline {
                let remaining = deadline.timeIntervalSinceNow
                if remaining <= 0 { throw ControlClientError.timedOut(seconds: timeout!) }
                pollTimeout = Int32(min(remaining * 1000, Double(Int32.max)).rounded(.up))
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, pollTimeout)
            if ready < 0 {
                if errno == EINTR { continue }
                throw ControlClientError.system(call: "poll", errno: errno)
            }
            if ready == 0 { continue }  // re-check the deadline
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == ECONNRESET { throw ControlClientError.connectionClosed }
                throw ControlClientError.system(call: "recv", errno: errno)
            }
            if n == 0 { throw ControlClientError.connectionClosed }
            buffer += chunk[..<n]
        }
    }
}
