import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// A real `myqasrd` subprocess: the tiny.en model, an ALSA `file` PCM reading a FIFO as its microphone, its own
/// runtime, state, home and temporary directories inside one scratch directory, and a test NOTIFY_SOCKET.
final class DaemonHarness {
    let scratch: ScratchDirectory
    let runtimeDirectory: String
    let stateDirectory: String
    let sandbox: String
    let configPath: String
    let notify: NotifyListener
    let feeder: PacedFIFOFeeder?
    let daemon: DaemonProcess
    let modelDirectory: String

    var controlSocket: String { runtimeDirectory + "/control.sock" }
    var wyomingSocket: String { runtimeDirectory + "/wyoming.sock" }

    /// The configuration file text for these directories; `extra` is appended inside [model].
    static func configText(model: String, runtime: String, state: String, fifo: String?, budget: String = "none",
                           modelSettings: String = "", extraVAD: String = "", limits: String = "",
                           logLevel: String = "info", captureSection: String? = nil, sockets: String = "",
                           capture: String = "") -> String {
        var text = """
            [model]
            name = "\(model)"
            threads = 2
            memory_budget = "\(budget)"
            \(modelSettings)

            [sockets]
            runtime_directory = "\(runtime)"
            \(sockets)

            [state]
            directory = "\(state)"

            [log]
            level = "\(logLevel)"

            """
        if let captureSection {
            text += "\n[capture]\n\(captureSection)\n"
        } else if let fifo {
            text += """

                [capture]
                device = "testmic"
                alsa_config = '''
                pcm.testmic {
                    type file
                    slave.pcm "null"
                    file "/dev/null"
                    infile "\(fifo)"
                    format "raw"
                }
                '''
                \(capture)

                [vad]
                hangover = 0.8
                \(extraVAD)

                """
        } else {
            text += "\n[capture]\nenabled = false\n"
        }
        // Tests hold a control connection across long waits (a build at idle priority on a busy machine): the
        // daemon must not close it as idle meanwhile, unless a test sets its own idle timeout.
        let idle = limits.contains("idle_timeout") ? "" : "idle_timeout = 3600\n"
        text += "\n[limits]\n\(idle)\(limits)\n"
        return text
    }

    /// Starts the daemon and waits for READY=1. `microphone` is 16 kHz s16le PCM played through the FIFO
    /// (nil: capture disabled).
    /// `stateFiles` are written into the state directory before the daemon starts.
    init(microphone: Data?, speed: Double = 2, budget: String = "none", modelSettings: String = "", limits: String = "",
         logLevel: String = "info", extraEnvironment: [String: String] = [:], launcher: [String] = [],
         captureSection: String? = nil, sockets: String = "", capture: String = "", stateFiles: [String: Data] = [:],
         prepare: (ScratchDirectory) throws -> Void = { _ in }) throws {
        signal(SIGPIPE, SIG_IGN)  // the FIFO writer must see EPIPE, not die, if capture closes the FIFO
        modelDirectory = try Fixtures.tinyModel()
        scratch = try ScratchDirectory()
        runtimeDirectory = scratch.sub("run")
        stateDirectory = scratch.sub("state")
        sandbox = try scratch.makeDirectory("home")
        _ = try scratch.makeDirectory("home/tmp")
        try prepare(scratch)
        configPath = scratch.sub("myqasrd.toml")
        if !stateFiles.isEmpty {
            _ = try scratch.makeDirectory("state")
            for (name, data) in stateFiles { try data.write(to: URL(fileURLWithPath: scratch.sub("state/" + name))) }
        }
        if let microphone {
            feeder = try PacedFIFOFeeder(path: scratch.sub("mic.fifo"), audio: microphone, speed: speed)
        } else {
            feeder = nil
        }
        try Self.configText(model: modelDirectory, runtime: runtimeDirectory, state: stateDirectory, fifo: feeder?.path,
                            budget: budget, modelSettings: modelSettings, limits: limits, logLevel: logLevel,
                            captureSection: captureSection, sockets: sockets, capture: capture)
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        notify = try NotifyListener(path: scratch.sub("notify.sock"))
        var environment: [String: String] = [
            "PATH": "/usr/bin:/bin",
            "HOME": sandbox, "TMPDIR": sandbox + "/tmp",
            "XDG_CACHE_HOME": sandbox + "/.cache", "XDG_DATA_HOME": sandbox + "/.local/share",
            "XDG_CONFIG_HOME": sandbox + "/.config", "XDG_STATE_HOME": sandbox + "/.local/state",
            "NOTIFY_SOCKET": notify.path,
        ]
        if let lang = ProcessInfo.processInfo.environment["LANG"] { environment["LANG"] = lang }
        // Under `scripts/test --tsan` the daemon is built with ThreadSanitizer too: same options.
        if let tsan = ProcessInfo.processInfo.environment["TSAN_OPTIONS"] { environment["TSAN_OPTIONS"] = tsan }
        environment.merge(extraEnvironment) { _, new in new }
        feeder?.startWriter()
        let command = launcher + [try Fixtures.binary("myqasrd"), "--config", configPath]
        daemon = try DaemonProcess(
            binary: command[0], arguments: Array(command.dropFirst()), environment: environment,
            workingDirectory: sandbox, stderrPath: scratch.sub("stderr.log"))
        do {
            try notify.waitFor(["READY=1"], timeout: 120)
        } catch {
            throw HarnessError("\(error)\n--- daemon log ---\n\(daemon.stderrText.suffix(3000))")
        }
    }

    /// Once ALSA has opened the FIFO, starts playing with the period the daemon's log reports.
    func startMicrophone() throws {
        guard let feeder else { return }
        let period: Int = try daemon.waitForLog(timeout: 30, what: "capture opened") { log in
            guard let range = log.range(of: "period ") else { return nil }
            return Int(log[range.upperBound...].prefix(while: { $0.isNumber }))
        }
        feeder.begin(periodFrames: period)
    }

    func client(timeout: Double = 120) throws -> ControlClient {
        try ControlClient(socketPath: controlSocket, timeout: patient(timeout))
    }

    /// SIGTERM, then the exit status (nil if it had to be killed).
    func stop() -> Int32? {
        daemon.signal(SIGTERM)
        let status = daemon.waitForExit(timeout: 30)
        feeder?.finish()
        return status
    }

    deinit {
        feeder?.finish()
        if daemon.process.isRunning {
            daemon.signal(SIGKILL)
            daemon.process.waitUntilExit()
        }
        notify.close()
    }
}

/// A `listen` client on a raw socket: `ready` returns once the daemon has acknowledged the subscription, so
/// nothing published afterwards can be missed. Transcripts are collected on a background thread.
final class ListenCollector: @unchecked Sendable {
    let transcripts = Waiter<LiveTranscript>()
    /// Partial and final transcripts, in the order they came.
    let events = Waiter<LiveTranscript>()
    let acknowledged = Waiter<Bool>()
    let ended = Waiter<Bool>()
    private let fd: Int32

    init(socketPath: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(socketPath.utf8)) }
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else { throw HarnessError("connect(\(socketPath)): errno \(errno)") }
        let request = Array("{\"id\":1,\"command\":\"listen\"}\n".utf8)
        guard Glibc.send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else {
            throw HarnessError("send listen request failed")
        }
        let thread = Thread { [self] in
            var pending: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 8192)
            while true {
                let n = recv(fd, &chunk, chunk.count, 0)
                if n <= 0 { break }
                pending += chunk[0..<n]
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = Data(pending[0..<newline])
                    pending.removeFirst(newline + 1)
                    guard let object = try? JSONDecoder().decode([String: JSONValue].self, from: line) else { continue }
                    let event = object["event"]?.stringValue
                    if event == "transcript" || event == "partial" {
                        let transcript = LiveTranscript(
                            text: object["text"]?.stringValue ?? "", start: object["start"]?.doubleValue ?? 0,
                            end: object["end"]?.doubleValue ?? 0, language: object["language"]?.stringValue,
                            partial: event == "partial")
                        self.events.append(transcript)
                        if !transcript.partial { self.transcripts.append(transcript) }
                    } else if object["ok"]?.boolValue == true {
                        self.acknowledged.append(true)
                    }
                }
            }
            self.ended.append(true)
        }
        thread.start()
    }

    deinit { Glibc.close(fd) }

    /// Waits for the daemon's acknowledgement of `listen`.
    func ready(timeout: Double = 30) throws {
        _ = try acknowledged.wait(timeout: timeout, what: "the listen acknowledgement") { $0.first }
    }

    /// Waits until the concatenated transcripts contain `phrase` (normalised).
    func waitFor(phrase: String, timeout: Double) throws -> String {
        let wanted = Fixtures.normalise(phrase)
        return try transcripts.wait(timeout: timeout, what: "a live transcript containing \"\(phrase)\"") { all in
            let text = Fixtures.normalise(all.map(\.text).joined(separator: " "))
            return text.contains(wanted) ? text : nil
        }
    }

    /// Waits for the daemon to close the stream (it does at shutdown).
    func waitForEnd(timeout: Double) throws {
        _ = try ended.wait(timeout: timeout, what: "the end of the listen stream") { $0.first }
    }
}
