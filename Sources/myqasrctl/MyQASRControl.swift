import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import Units

/// `myqasrctl`: talks to a running `myqasrd` over its control socket.
@main
struct MyQASRControl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "myqasrctl",
        abstract: "Control the myqasrd speech-recognition daemon.",
        discussion: """
            The control socket is --socket, else $MYQASR_SOCKET, else $RUNTIME_DIRECTORY/control.sock, else \
            /run/myqasr/control.sock. Your user must be root, the daemon's user, or in the group the daemon allows.
            """,
        subcommands: [Status.self, Budget.self, Reload.self, Listen.self, Transcribe.self, Forget.self])
}

/// Options every subcommand takes.
struct ConnectionOptionsGroup: ParsableArguments {
    @Option(name: .long, help: "Path of the daemon's control socket.")
    var socket: String?

    @Option(name: .long, help: "Seconds to wait for an answer.")
    var timeout: Double = 120

    /// The socket path in effect.
    var socketPath: String {
        if let socket { return socket }
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["MYQASR_SOCKET"], !path.isEmpty { return path }
        if let directory = environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first {
            return "\(directory)/control.sock"
        }
        return "/run/myqasr/control.sock"
    }

    /// Connects, turning failures into a one-line message and exit status 69 (EX_UNAVAILABLE) or 77 (EX_NOPERM).
    func connect() throws -> ControlClient {
        do {
            return try ControlClient(socketPath: socketPath, timeout: timeout)
        } catch let error as ControlClientError {
            throw Failure(error)
        }
    }
}

/// A failure reported as "myqasrctl: MESSAGE" with an exit status that says what kind it was.
struct Failure: Error, CustomStringConvertible {
    let message: String
    let status: Int32

    init(_ error: ControlClientError) {
        message = error.description
        switch error {
        case .permissionDenied: status = 77
        case .socketNotFound, .daemonNotRunning: status = 69
        case .daemon: status = 1
        default: status = 75
        }
    }

    var description: String { message }
}

/// Runs `body`, printing any control failure as one line on stderr and exiting with its status.
func reporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let failure as Failure {
        FileHandle.standardError.write(Data("myqasrctl: \(failure.message)\n".utf8))
        throw ExitCode(failure.status)
    } catch let error as ControlClientError {
        let failure = Failure(error)
        FileHandle.standardError.write(Data("myqasrctl: \(failure.message)\n".utf8))
        throw ExitCode(failure.status)
    }
}

extension MyQASRControl {
    /// `status`: model, precision map, memory vs budget, uptime, utterances.
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the daemon's model, precision, memory and counters.")

        @OptionGroup var connection: ConnectionOptionsGroup

        @Flag(name: .long, help: "Print the raw status as JSON.")
        var json = false

        func run() throws {
            try reporting {
                let client = try connection.connect()
                if json {
                    let value = try client.request(.status)
                    print(String(decoding: try value.jsonData(), as: UTF8.self))
                } else {
                    print(StatusFormatter.format(try client.status()))
                }
            }
        }
    }

    /// `budget SIZE` or `budget none`.
    struct Budget: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set the model memory budget (e.g. 24MiB, 150MB, or none for no limit); lasts until the next reload or restart.",
            discussion: """
                Returns once the model for the budget serves. A budget no model can meet, or whose model fails the \
                daemon's self-check (for example 2 bits that decode nothing), is refused with the reason; the model \
                in service stays.
                """)

        @OptionGroup var connection: ConnectionOptionsGroup

        @Argument(help: "Size with a unit: B, K/KiB, M/MiB, G/GiB (powers of 1024), KB, MB, GB (powers of 1000); or none (also unlimited, 0) for no limit.")
        var size: String

        func validate() throws {
            do { _ = try ByteSize.parseLimit(size) } catch { throw ValidationError("\(error)") }
        }

        func run() throws {
            try reporting {
                let client = try connection.connect()
                try client.setBudget(bytes: try ByteSize.parseLimit(size))
                let status = try client.status()
                let budget = status.budgetBytes.map { "budget set to \(ByteSize.format($0))" } ?? "no budget"
                print("\(budget): \(status.modelName) now takes "
                    + "\(ByteSize.format(status.memoryBytes)) at \(Precision.describe(status.layerBits ?? [:]))")
                if let budget = status.budgetBytes, status.memoryBytes > budget {
                    print("note: the model in service takes \(ByteSize.format(status.memoryBytes)); the budget is not met")
                }
            }
        }
    }

    /// `reload`.
    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Re-read the configuration file and the model.")

        @OptionGroup var connection: ConnectionOptionsGroup

        func run() throws {
            try reporting {
                try connection.connect().reload()
                print("reloaded")
            }
        }
    }

    /// `listen`.
    struct Listen: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print live transcripts of the microphone until interrupted.")

        @OptionGroup var connection: ConnectionOptionsGroup

        @Flag(name: .long, help: "Print each transcript as a JSON line.")
        var json = false

        @Option(name: .long, help: "Exit after this many transcripts.")
        var count: Int?

        @Flag(name: .long, help: "Also print partial transcripts of speech still going on (marked '...'; in JSON, \"partial\": true).")
        var partials = false

        func run() throws {
            setvbuf(stdout, nil, _IOLBF, 0)
            try reporting {
                let client = try connection.connect()
                var printed = 0
                try client.listen { transcript in
                    if transcript.partial && !partials { return true }
                    if json {
                        var value = try JSONValue(encoding: transcript)
                        if transcript.partial, case .object(var object) = value {
                            object["partial"] = true
                            value = .object(object)
                        }
                        print(String(decoding: try value.jsonData(), as: UTF8.self))
                    } else {
                        print(String(format: "[%7.2f - %7.2f] ", transcript.start, transcript.end)
                              + (transcript.partial ? "... " : "") + transcript.text)
                    }
                    if transcript.partial { return true }
                    printed += 1
                    return count.map { printed < $0 } ?? true
                }
            }
        }
    }

    /// `transcribe FILE`.
    struct Transcribe: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Transcribe a WAV file with the daemon's model.")

        @OptionGroup var connection: ConnectionOptionsGroup

        @Argument(help: "A WAV file.")
        var file: String

        @Option(name: .long, help: "Language code (multilingual models).")
        var language: String?

        @Flag(name: .long, help: "Print the result as JSON (text, language, segments).")
        var json = false

        func run() throws {
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: file))
            } catch {
                FileHandle.standardError.write(Data("myqasrctl: cannot read \(file): \(error.localizedDescription)\n".utf8))
                throw ExitCode(66)  // EX_NOINPUT
            }
            try reporting {
                let result = try connection.connect().transcribe(wav: data, language: language)
                if json {
                    print(String(decoding: try JSONValue(encoding: result).jsonData(), as: UTF8.self))
                } else {
                    print(result.text)
                }
            }
        }
    }

    /// `forget`.
    struct Forget: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete personal data: statistics, counters and buffered audio.")

        @OptionGroup var connection: ConnectionOptionsGroup

        func run() throws {
            try reporting {
                try connection.connect().forget()
                print("forgotten")
            }
        }
    }
}

/// Human-readable status.
enum StatusFormatter {
    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds)
        if s >= 86400 { return "\(s / 86400)d \((s % 86400) / 3600)h" }
        if s >= 3600 { return "\(s / 3600)h \((s % 3600) / 60)m" }
        if s >= 60 { return "\(s / 60)m \(s % 60)s" }
        return "\(s)s"
    }

    /// One character per bit width: f = float (32), h = 16, 8, 4, 2 ...
    static func symbol(_ bits: Int) -> Character {
        switch bits {
        case 32: return "f"
        case 16: return "h"
        case 1...9: return Character(String(bits))
        default: return "?"
        }
    }

    /// The precision map as one row per layer group: encoder blocks, decoder blocks, others.
    static func chart(_ bits: [String: Int]) -> [String] {
        var groups: [(String, [(String, Int)])] = []
        func add(_ group: String, _ name: String, _ b: Int) {
            if let i = groups.firstIndex(where: { $0.0 == group }) { groups[i].1.append((name, b)) } else { groups.append((group, [(name, b)])) }
        }
        for (name, b) in bits.sorted(by: { naturalLess($0.key, $1.key) }) {
            let parts = name.split(separator: "/")
            if parts.count >= 2, parts[1].hasPrefix("layer_") {
                add("\(parts[0]) \(parts[1].dropFirst("layer_".count))", name, b)
            } else {
                add(String(parts.first ?? "other"), name, b)
            }
        }
        let width = groups.map(\.0.count).max() ?? 0
        return groups.map { group, layers in
            let padded = group.padding(toLength: width, withPad: " ", startingAt: 0)
            let cells = String(layers.map { symbol($0.1) })
            let bitsTotal = layers.map(\.1).reduce(0, +)
            return "  \(padded)  \(cells)  (\(String(format: "%.1f", Double(bitsTotal) / Double(max(1, layers.count)))) bits avg)"
        }
    }

    /// "layer_10" after "layer_9".
    static func naturalLess(_ a: String, _ b: String) -> Bool {
        a.compare(b, options: .numeric) == .orderedAscending
    }

    static func format(_ status: DaemonStatus) -> String {
        var lines: [String] = []
        lines.append("model:       \(status.modelName)")
        var memory = "memory:      \(ByteSize.format(status.memoryBytes))"
        if let budget = status.budgetBytes {
            memory += " of \(ByteSize.format(budget)) budget"
            memory += status.memoryBytes > budget ? " (NOT MET)" : " (met)"
        } else {
            memory += " (no budget)"
        }
        lines.append(memory)
        lines.append("uptime:      \(duration(status.uptimeSeconds))")
        lines.append("utterances:  \(status.utterancesSeen)")
        lines.append("statistics:  \(status.statisticsSamples) utterance\(status.statisticsSamples == 1 ? "" : "s") gathered")
        lines.append("capture:     \(status.captureState.rawValue)")
        if let queue = status.queue {
            lines.append("queue:       \(queue.waiting) waiting of \(queue.depth), \(queue.running) running; "
                + "\(queue.droppedUtterances) utterances dropped, \(queue.refusedRequests) requests refused as busy, "
                + "\(queue.cancelledRequests) cancelled (client gone)")
        }
        if let buffers = status.clientBuffers {
            lines.append("buffers:     \(ByteSize.format(buffers.usedBytes)) of \(ByteSize.format(buffers.limitBytes)) for clients (peak \(ByteSize.format(buffers.peakBytes)))")
        }
        if let model = status.model {
            var why = "served:      generation \(model.generation), \(model.plan), because of \(model.reason)"
            if let origin = model.budgetOrigin {
                why += origin == "auto" ? ", budget follows free memory (auto)" : ", budget from the \(origin)"
            }
            if let drift = model.checkDivergence { why += String(format: ", self-check drift %.3f nats", drift) }
            lines.append(why)
            if let drift = model.ownSpeechDrift, let n = model.ownSpeechUtterances {
                lines.append(String(format: "your speech: drift %.3f nats from full precision over %d utterance%@", drift, n, n == 1 ? "" : "s"))
            }
            if let drift = model.candidateDrift, let n = model.candidateUtterances {
                lines.append(String(format: "candidate:   in shadow, drift %.3f nats over %d utterance%@", drift, n, n == 1 ? "" : "s"))
            } else if model.candidateUtterances != nil {
                lines.append("candidate:   in shadow, not measured yet")
            }
        }
        if let changed = status.lastRequantization {
            lines.append("model since: \(ISO8601DateFormatter().string(from: changed))")
        }
        if let bits = status.layerBits, !bits.isEmpty {
            let distinct = Set(bits.values)
            let summary = distinct.count == 1 && distinct.first == 32
                ? "all \(bits.count) layers float" : "\(bits.count) layers, " + distinct.sorted().map { b in
                    "\(bits.values.filter { $0 == b }.count) at \(Precision.name(bits: b))" }.joined(separator: ", ")
            lines.append("precision:   \(summary)  (f = float, h = 16-bit, digits = bits)")
            lines += chart(bits)
        }
        return lines.joined(separator: "\n")
    }
}
