#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import XCTest
@testable import Serving

final class WyomingServerTests: XCTestCase {
    var directory = ""
    var socketPath: String { directory + "/wyoming.sock" }

    override func setUpWithError() throws { directory = try makeTemporaryDirectory() }
    override func tearDown() { removeDirectory(directory) }

    private func startServer(
        backend: TranscriptionBackend = CannedTranscriber(),
        configuration: WyomingServerConfiguration = WyomingServerConfiguration(
            serviceInfo: { WyomingServiceInfo(modelName: "tiny.en", languages: ["en", "de"]) }),
        endpoints: [ListenerEndpoint]? = nil
    ) async throws -> WyomingServer {
        let server = WyomingServer(endpoints: endpoints ?? [.unix(path: socketPath)], backend: backend,
                                   configuration: configuration)
        try await server.start()
        return server
    }

    func testDescribeReturnsAsrInfo() async throws {
        let server = try await startServer()
        let info = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send(WyomingEvent(type: "describe"))
            return try client.readEvent()
        }
        await server.shutdown()
        XCTAssertEqual(info?.type, "info")
        let asr = info?.data["asr"]
        guard case .array(let programs)? = asr, let program = programs.first else { return XCTFail("no asr program") }
        XCTAssertEqual(program["name"], "myqasr")
        XCTAssertEqual(program["supports_transcript_streaming"], true)
        guard case .array(let models)? = program["models"], let model = models.first else { return XCTFail("no model") }
        XCTAssertEqual(model["name"], "tiny.en")
        XCTAssertEqual(model["languages"], ["en", "de"])
        XCTAssertEqual(model["installed"], true)
        XCTAssertEqual(model["attribution"]?["name"], "OpenAI")
    }

    func testTranscribeRoundTripStreamsAndSendsTranscript() async throws {
        let backend = CannedTranscriber()
        let server = try await startServer(backend: backend)
        let pcm = sinePCM16(frequency: 440, rate: 16000, seconds: 1)
        let events = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send(WyomingEvent(type: "transcribe", data: ["language": "de"]))
            let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
            try client.send(WyomingEvent(type: "audio-start", data: format))
            // Chunks of odd sizes so frames straddle chunk boundaries.
            var offset = 0
            while offset < pcm.count {
                let end = min(pcm.count, offset + 3001)
                try client.send(WyomingEvent(type: "audio-chunk", data: format, payload: Array(pcm[offset..<end])))
                offset = end
            }
            try client.send(WyomingEvent(type: "audio-stop"))
            var events: [WyomingEvent] = []
            while let event = try client.readEvent() {
                events.append(event)
                if event.type == "transcript-stop" { break }
            }
            return events
        }
        await server.shutdown()
        XCTAssertEqual(events.map(\.type), ["transcript-start", "transcript-chunk", "transcript-chunk", "transcript", "transcript-stop"])
        XCTAssertEqual(events[0].data["language"], "de")
        XCTAssertEqual(events[1].data["text"], "hello")
        XCTAssertEqual(events[3].data["text"], "hello world 16000")
        XCTAssertEqual(events[3].data["language"], "de")
        let call = try XCTUnwrap(backend.calls.first)
        XCTAssertEqual(call.sampleCount, 16000)
        XCTAssertEqual(call.language, "de")
        // The samples are the sine decoded exactly: sample 4 of a 440 Hz sine at 16 kHz.
        let expected = Float(Int16(0.5 * 32767 * sin(2 * Double.pi * 440 * 4 / 16000))) / 32768
        XCTAssertEqual(call.samples[4], expected, accuracy: 1e-6)
    }

    func testStereo48kIsDownmixedAndResampledTo16k() async throws {
        let backend = CannedTranscriber()
        let server = try await startServer(backend: backend)
        let pcm = sinePCM16(frequency: 440, rate: 48000, seconds: 1, channels: 2)
        _ = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            let format: [String: JSONValue] = ["rate": 48000, "width": 2, "channels": 2]
            try client.send(WyomingEvent(type: "transcribe"))
            try client.send(WyomingEvent(type: "audio-start", data: format))
            var offset = 0
            while offset < pcm.count {
                let end = min(pcm.count, offset + 8191)
                try client.send(WyomingEvent(type: "audio-chunk", data: format, payload: Array(pcm[offset..<end])))
                offset = end
            }
            try client.send(WyomingEvent(type: "audio-stop"))
            while let event = try client.readEvent(), event.type != "transcript-stop" {}
        }
        await server.shutdown()
        let call = try XCTUnwrap(backend.calls.first)
        XCTAssertEqual(call.sampleCount, 16000)
        XCTAssertNil(call.language)
        // A 440 Hz tone has 880 zero crossings per second; amplitude stays 0.5 (RMS 0.354).
        let middle = Array(call.samples[1000..<15000])
        var crossings = 0
        for i in 1..<middle.count where (middle[i - 1] < 0) != (middle[i] < 0) { crossings += 1 }
        XCTAssertEqual(Double(crossings) / 0.875, 880, accuracy: 6)
        let rms = sqrt(middle.map { $0 * $0 }.reduce(0, +) / Float(middle.count))
        XCTAssertEqual(rms, 0.3535, accuracy: 0.01)
    }

    func testInlineAndTrailingDataAreMerged() async throws {
        let backend = CannedTranscriber()
        let server = try await startServer(backend: backend)
        let events = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            // Inline data only (older writers).
            try client.send("{\"type\":\"transcribe\",\"data\":{\"language\":\"fr\"}}\n")
            // Inline rate/width plus trailing channels, then a payload.
            let trailing = Array("{\"channels\":1}".utf8)
            try client.send("{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":2},\"data_length\":\(trailing.count),\"version\":\"1.5.0\"}\n")
            try client.send(trailing)
            let chunkData = Array("{\"rate\":16000,\"width\":2,\"channels\":1}".utf8)
            let payload = [UInt8](repeating: 0, count: 640)
            try client.send("{\"type\":\"audio-chunk\",\"data_length\":\(chunkData.count),\"payload_length\":640}\n")
            try client.send(chunkData + payload)
            try client.send("{\"type\":\"audio-stop\"}\n")
            var events: [WyomingEvent] = []
            while let event = try client.readEvent() {
                events.append(event)
                if event.type == "transcript" { break }
            }
            return events
        }
        await server.shutdown()
        XCTAssertEqual(events.last?.data["text"], "hello world 320")
        XCTAssertEqual(backend.calls.first?.language, "fr")
    }

    func testMalformedJSONGetsErrorAndConnectionStaysUsable() async throws {
        let server = try await startServer()
        let (first, second, third) = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send("{this is not json\n")
            let first = try client.readEvent()
            // Well-framed trailing data that is not JSON: skipped by its length.
            try client.send("{\"type\":\"transcribe\",\"data_length\":5}\nxxxxx")
            let second = try client.readEvent()
            try client.send(WyomingEvent(type: "describe"))
            return (first, second, try client.readEvent())
        }
        await server.shutdown()
        XCTAssertEqual(first?.type, "error")
        XCTAssertEqual(first?.data["code"], "malformed-event")
        XCTAssertEqual(second?.type, "error")
        XCTAssertEqual(second?.data["code"], "malformed-event")
        XCTAssertEqual(third?.type, "info")
    }

    func testOversizedPayloadGetsErrorAndClose() async throws {
        var configuration = WyomingServerConfiguration()
        configuration.framing.maxPayloadLength = 4096
        let server = try await startServer(configuration: configuration)
        let (event, closed) = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send("{\"type\":\"audio-chunk\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1},\"payload_length\":5000}\n")
            let event = try client.readEvent()
            return (event, try client.waitForEndOfStream())
        }
        await server.shutdown()
        XCTAssertEqual(event?.type, "error")
        XCTAssertEqual(event?.data["code"], "payload-too-long")
        XCTAssertTrue(closed)
    }

    func testHeaderLineTooLongGetsErrorAndClose() async throws {
        var configuration = WyomingServerConfiguration()
        configuration.framing.maxHeaderLength = 1024
        let server = try await startServer(configuration: configuration)
        let (event, closed) = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send([UInt8](repeating: UInt8(ascii: "a"), count: 2000))
            let event = try client.readEvent()
            return (event, try client.waitForEndOfStream())
        }
        await server.shutdown()
        XCTAssertEqual(event?.data["code"], "header-too-long")
        XCTAssertTrue(closed)
    }

    func testTooMuchAudioGetsErrorButConnectionContinues() async throws {
        let backend = CannedTranscriber()
        var configuration = WyomingServerConfiguration()
        configuration.maxAudioSeconds = 0.5
        let server = try await startServer(backend: backend, configuration: configuration)
        let events = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
            try client.send(WyomingEvent(type: "audio-start", data: format))
            for _ in 0..<3 {  // 3 x 0.25 s
                try client.send(WyomingEvent(type: "audio-chunk", data: format, payload: [UInt8](repeating: 0, count: 8000)))
            }
            try client.send(WyomingEvent(type: "audio-stop"))
            try client.send(WyomingEvent(type: "describe"))
            return [try client.readEvent(), try client.readEvent()]
        }
        await server.shutdown()
        XCTAssertEqual(events[0]?.data["code"], "audio-too-long")
        XCTAssertEqual(events[1]?.type, "info")
        XCTAssertTrue(backend.calls.isEmpty)
    }

    func testTwentyConcurrentClients() async throws {
        let backend = CannedTranscriber()
        let server = try await startServer(backend: backend)
        let started = Date()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<20 {
                group.addTask { [socketPath] in
                    let samples = 1600 * (i + 1)
                    let text = try await onThread { () -> String? in
                        let client = try RawClient(unixPath: socketPath)
                        let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
                        try client.send(WyomingEvent(type: "transcribe"))
                        try client.send(WyomingEvent(type: "audio-start", data: format))
                        try client.send(WyomingEvent(type: "audio-chunk", data: format,
                                                     payload: [UInt8](repeating: 1, count: samples * 2)))
                        try client.send(WyomingEvent(type: "audio-stop"))
                        while let event = try client.readEvent() {
                            if event.type == "transcript" { return event.data["text"]?.stringValue }
                        }
                        return nil
                    }
                    XCTAssertEqual(text, "hello world \(samples)")
                }
            }
            try await group.waitForAll()
        }
        print("20 concurrent Wyoming clients: \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
        await server.shutdown()
        XCTAssertEqual(backend.calls.count, 20)
    }

    func testConnectionLimitRefusesExtraClients() async throws {
        var configuration = WyomingServerConfiguration()
        configuration.connection.maxConnections = 2
        configuration.connection.reservedConnections = 0  // this process is privileged (its own user)
        let server = try await startServer(configuration: configuration)
        let result = try await onThread { [socketPath] in
            let a = try RawClient(unixPath: socketPath)
            let b = try RawClient(unixPath: socketPath)
            // Make sure both are admitted before the third connects.
            try a.send(WyomingEvent(type: "describe")); _ = try a.readEvent()
            try b.send(WyomingEvent(type: "describe")); _ = try b.readEvent()
            let c = try RawClient(unixPath: socketPath)
            let refusal = try c.readEvent()
            let closed = try c.waitForEndOfStream()
            try a.send(WyomingEvent(type: "describe"))
            return (refusal, closed, try a.readEvent())
        }
        await server.shutdown()
        XCTAssertEqual(result.0?.data["code"], "too-many-connections")
        XCTAssertTrue(result.1)
        XCTAssertEqual(result.2?.type, "info")
    }

    func testTCPListener() async throws {
        let server = try await startServer(endpoints: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try XCTUnwrap(server.localAddresses.first?.port)
        let info = try await onThread {
            let client = try RawClient(tcpPort: port)
            try client.send(WyomingEvent(type: "describe"))
            return try client.readEvent()
        }
        await server.shutdown()
        XCTAssertEqual(info?.type, "info")
    }

    func testIdleConnectionIsClosed() async throws {
        var configuration = WyomingServerConfiguration()
        configuration.connection.idleTimeout = .milliseconds(200)
        let server = try await startServer(configuration: configuration)
        let (event, closed) = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            let event = try client.readEvent()
            return (event, try client.waitForEndOfStream())
        }
        await server.shutdown()
        XCTAssertEqual(event?.data["code"], "idle-timeout")
        XCTAssertTrue(closed)
    }

    struct EngineFailure: Error, CustomStringConvertible { var description: String { "model not loaded" } }

    func testBackendFailureBecomesErrorEvent() async throws {
        let server = try await startServer(backend: CannedTranscriber(failWith: EngineFailure()))
        let event = try await onThread { [socketPath] in
            let client = try RawClient(unixPath: socketPath)
            try client.send(WyomingEvent(type: "transcribe"))
            try client.send(WyomingEvent(type: "audio-start", data: ["rate": 16000, "width": 2, "channels": 1]))
            try client.send(WyomingEvent(type: "audio-stop"))
            return try client.readEvent()
        }
        await server.shutdown()
        XCTAssertEqual(event?.data["code"], "transcription-failed")
        XCTAssertTrue(event?.data["text"]?.stringValue?.contains("model not loaded") ?? false)
    }

    func testShutdownClosesClientsAndRemovesSocket() async throws {
        let server = try await startServer()
        let client = try RawClient(unixPath: socketPath)
        try client.send(WyomingEvent(type: "describe"))
        _ = try await onThread { try client.readEvent() }
        await server.shutdown()
        let closed = try await onThread { try client.waitForEndOfStream() }
        XCTAssertTrue(closed)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath))
    }

    func testShutdownLetsRequestInProgressFinish() async throws {
        let backend = GatedTranscriber()
        var configuration = WyomingServerConfiguration()
        configuration.connection.shutdownGracePeriod = .seconds(20)
        let server = try await startServer(backend: backend, configuration: configuration)
        let client = try RawClient(unixPath: socketPath)
        try client.send(WyomingEvent(type: "audio-start", data: ["rate": 16000, "width": 2, "channels": 1]))
        try client.send(WyomingEvent(type: "audio-chunk", data: ["rate": 16000, "width": 2, "channels": 1],
                                     payload: [UInt8](repeating: 0, count: 3200)))
        try client.send(WyomingEvent(type: "audio-stop"))
        var started = backend.started.makeAsyncIterator()
        _ = await started.next()  // the request is in the backend
        let began = Date()
        let shutdown = Task { await server.shutdown() }
        // Listeners close first: the socket file goes away while the request is still held.
        while FileManager.default.fileExists(atPath: socketPath) { await Task.yield() }
        XCTAssertThrowsError(try RawClient(unixPath: socketPath))
        backend.open()
        let events = try await onThread { () -> [String] in
            var types: [String] = []
            while let event = try client.readEvent() { types.append(event.type) }  // until the server closes
            return types
        }
        await shutdown.value
        XCTAssertEqual(events, ["transcript-start", "transcript-chunk", "transcript", "transcript-stop"])
        XCTAssertLessThan(Date().timeIntervalSince(began), 10, "shutdown waited for the grace period instead of the request")
    }

    func testClientThatDoesNotReadIsThrottled() async throws {
        // A client that sends describe after describe and never reads: the server must stop reading from it
        // (bounded output), so the client's own non-blocking sends eventually would block.
        let server = try await startServer()
        let (sent, blocked) = try await onThread { [socketPath] () -> (Int, Bool) in
            let client = try RawClient(unixPath: socketPath)
            let flags = fcntl(client.fd, F_GETFL)
            _ = fcntl(client.fd, F_SETFL, flags | O_NONBLOCK)
            let describe = WyomingEvent(type: "describe").encoded()
            let batch = Array([[UInt8]](repeating: describe, count: 100).joined())
            var sent = 0
            var idleRounds = 0
            while sent < 4 * 1024 * 1024 {
                let n = batch.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n > 0 { sent += n; idleRounds = 0; continue }
                guard errno == EAGAIN else { throw TestSocketError(description: "send failed: \(errno)") }
                // Would block: give the server a chance to drain us (wait on the socket, not a sleep).
                var pfd = pollfd(fd: client.fd, events: Int16(POLLOUT), revents: 0)
                if poll(&pfd, 1, 500) == 0 {
                    idleRounds += 1
                    if idleRounds >= 2 { return (sent, true) }
                }
            }
            return (sent, false)
        }
        await server.shutdown()
        print("non-reading client was throttled after sending \(sent / 1024) KiB")
        XCTAssertTrue(blocked, "the server kept reading \(sent) bytes from a client that never reads")
        XCTAssertLessThan(sent, 2 * 1024 * 1024)
    }

    func testDecoderHandlesByteAtATimeInput() throws {
        var decoder = WyomingFrameDecoder()
        let event = WyomingEvent(type: "audio-chunk", data: ["rate": 16000, "width": 2, "channels": 1], payload: [1, 2, 3, 4])
        var buffer = ByteBuffer()
        var frames: [WyomingFrame] = []
        for byte in event.encoded() + WyomingEvent(type: "describe").encoded() {
            buffer.writeInteger(byte)
            while let frame = try decoder.decodeFrame(&buffer) { frames.append(frame) }
        }
        XCTAssertEqual(frames, [.event(event), .event(WyomingEvent(type: "describe"))])
        var bad = ByteBuffer(string: "{\"type\":\"x\",\"payload_length\":-1}\n")
        XCTAssertThrowsError(try decoder.decodeFrame(&bad)) { error in
            XCTAssertEqual(error as? WyomingFramingError, .invalidLength(field: "payload_length"))
        }
    }
}
