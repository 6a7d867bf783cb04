import Foundation
#if canImport(Glibc)
import Glibc
#endif
import XCTest

/// Clients run as another user (through `setpriv`, so the daemon sees that user's credentials on its sockets):
/// a Python script with one mode per kind of hostile client. Each mode reports on stdout, then holds its
/// connections open until the test closes the script's stdin.
final class ForeignClient {
    /// The script's modes:
    ///   hold PATH PROTOCOL N: opens N connections; each sends one request (control status / Wyoming describe)
    ///     and reads its answer, so an admitted connection is told from a refused one without waiting on a clock;
    ///     prints "admitted A refused R", then holds the admitted ones idle.
    ///   stream PATH N RATE SECONDS: opens N Wyoming connections, each streams SECONDS of 8-bit audio at RATE in
    ///     one-second chunks and never sends audio-stop, then a ping; prints "stream I codes C1,C2" with the
    ///     error codes received before the pong ("closed" if the server hung up instead), then holds them.
    ///   trickle PATH INTERVAL TEXT: sends TEXT one byte every INTERVAL seconds until the server hangs up; prints
    ///     "trickle sent B of T answer BYTES" with everything the server sent until it closed (newlines as spaces).
    static let script = #"""
import json, socket, sys, time

def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s

def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data

def wyoming_event(kind, data=None, payload=b""):
    header = {"type": kind, "version": "1.8.0"}
    body = b""
    if data:
        body = json.dumps(data).encode()
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + body + payload

def read_event(s):
    header = json.loads(read_line(s))
    data = header.get("data") or {}
    n = header.get("data_length") or 0
    if n:
        raw = b""
        while len(raw) < n:
            raw += s.recv(n - len(raw))
        data.update(json.loads(raw))
    n = header.get("payload_length") or 0
    while n > 0:
        n -= len(s.recv(n))
    return header["type"], data

mode, path = sys.argv[1], sys.argv[2]
held = []
if mode == "hold":
    protocol, n = sys.argv[3], int(sys.argv[4])
    admitted = refused = 0
    for _ in range(n):
        s = connect(path)
        try:
            if protocol == "control":
                s.sendall(b'{"id":1,"command":"status"}\n')
                answer = json.loads(read_line(s))
                ok = answer.get("ok") is True
            else:
                s.sendall(wyoming_event("describe"))
                kind, _ = read_event(s)
                ok = kind == "info"
        except (ValueError, OSError):
            ok = False
        if ok:
            admitted += 1
            held.append(s)
        else:
            refused += 1
            s.close()
    print("admitted %d refused %d" % (admitted, refused), flush=True)
elif mode == "stream":
    n, rate, seconds = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    fmt = {"rate": rate, "width": 1, "channels": 1}
    chunk = bytes([128]) * rate
    for i in range(n):
        s = connect(path)
        codes = []
        try:
            s.sendall(wyoming_event("audio-start", fmt))
            for _ in range(seconds):
                s.sendall(wyoming_event("audio-chunk", fmt, chunk))
            s.sendall(wyoming_event("ping", {"text": "done"}))
        except OSError:
            pass  # the server hung up; what it said is still to be read
        try:
            while True:
                kind, data = read_event(s)
                if kind == "pong":
                    break
                if kind == "error":
                    codes.append(data.get("code", "?"))
        except (OSError, ValueError, KeyError):
            codes.append("closed")
        held.append(s)
        print("stream %d codes %s" % (i, ",".join(codes) or "none"), flush=True)
elif mode == "trickle":
    interval, text = float(sys.argv[3]), sys.argv[4].encode()
    s = connect(path)
    sent = 0
    try:
        for b in text:
            s.sendall(bytes([b]))
            sent += 1
            time.sleep(interval)
    except OSError:
        pass
    s.settimeout(30)
    answer = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError:
        pass
    print("trickle sent %d of %d answer %s" % (sent, len(text), answer.decode(errors="replace").replace("\n", " ")), flush=True)
sys.stdin.read()
"""#

    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    let lines = Waiter<String>()

    /// Starts the script as `uid`/`gid` (supplementary groups: `groups`) with `arguments`.
    init(scriptPath: String, uid: UInt32, gid: UInt32, groups: [UInt32] = [], arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        let groupFlag = groups.isEmpty ? "--clear-groups" : "--groups=" + groups.map(String.init).joined(separator: ",")
        process.arguments = ["--reuid=\(uid)", "--regid=\(gid)", groupFlag, "/usr/bin/python3", scriptPath] + arguments
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let handle = output.fileHandleForReading
        let lines = self.lines
        Thread.detachNewThread {
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending += chunk
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    lines.append(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending = Data(pending[(newline + 1)...])
                }
            }
        }
    }

    /// Writes the script next to `directory`'s files, readable by every user; returns its path.
    static func install(in directory: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent("hostile.py")
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o644)
        return path
    }

    /// Waits for `count` lines of output.
    func waitForLines(_ count: Int, timeout: Double) throws -> [String] {
        try lines.wait(timeout: timeout, what: "\(count) line(s) from the foreign client") { $0.count >= count ? Array($0.prefix(count)) : nil }
    }

    /// Lets the script end (it closes its connections) and waits for it.
    func finish() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    /// Whether this machine can run foreign clients: root (to change user), setpriv and python3.
    static func available() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to run clients as other users") }
        for tool in ["/usr/bin/setpriv", "/usr/bin/python3"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw Fixtures.missing("\(tool) is missing: scripts/setup installs it")
        }
    }
}
