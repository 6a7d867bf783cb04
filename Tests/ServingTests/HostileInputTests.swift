#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import XCTest
@testable import Serving

/// Requests that lie, overreach or dawdle, against in-process servers: each is refused from what it declares,
/// before the work or the memory it would cost, and the memory charged for clients returns to zero.
final class HostileInputTests: XCTestCase {
    var directory = ""
    var controlPath: String { directory + "/control.sock" }
    var wyomingPath: String { directory + "/wyoming.sock" }

    override func setUpWithError() throws { directory = try makeTemporaryDirectory() }
    override func tearDown() { removeDirectory(directory) }

    private func control(
        transcriber: TranscriptionBackend = CannedTranscriber(), backend: ControlBackend = TestControlBackend(),
        _ configure: (inout ControlServerConfiguration) -> Void = { _ in }
    ) async throws -> ControlServer {
        var configuration = ControlServerConfiguration()
        configure(&configuration)
        let server = ControlServer(endpoints: [.unix(path: controlPath)], control: backend, transcription: transcriber,
                                   configuration: configuration)
        try await server.start()
        return server
    }

    private func wyoming(
        backend: TranscriptionBackend = CannedTranscriber(), _ configure: (inout WyomingServerConfiguration) -> Void = { _ in }
    ) async throws -> WyomingServer {
        var configuration = WyomingServerConfiguration()
        configure(&configuration)
        let server = WyomingServer(endpoints: [.unix(path: wyomingPath)], backend: backend, configuration: configuration)
        try await server.start()
        return server
    }

    /// Sends one control request line and returns the answer.
    private func ask(_ line: String) async throws -> [String: JSONValue]? {
        try await onThread { [controlPath] in
            let client = try RawClient(unixPath: controlPath)
            try client.send(line + "\n")
            return try client.readJSONLine()
        }
    }

    private func transcribeLine(wav: [UInt8], id: Int = 1) -> String {
        "{\"id\":\(id),\"command\":\"transcribe\",\"format\":\"wav\",\"audio\":\"\(Data(wav).base64EncodedString())\"}"
    }

    // MARK: item 1: the cost comes from the header

    /// A 793-byte WAV whose header says 1 Hz (it used to be resampled to 16 kHz first: 30 s of CPU) is refused
    /// as an unsupported format; nothing reaches the backend.
    func testOneHertzWAVIsRefusedFromItsHeader() async throws {
        let transcriber = CannedTranscriber()
        let memory = ClientMemoryPool()
        let server = try await control(transcriber: transcriber) { $0.connection.memory = memory }
        let wav = wavFile(data: [UInt8](repeating: 0x40, count: 749), rate: 1, channels: 1, bits: 8)
        XCTAssertEqual(wav.count, 793)
        let answer = try await ask(transcribeLine(wav: wav))
        await server.shutdown()
        XCTAssertEqual(answer?["error"]?["code"], "unsupported_format")
        XCTAssertTrue(answer?["error"]?["message"]?.stringValue?.contains("sample rate 1 Hz") ?? false, "\(String(describing: answer))")
        XCTAssertTrue(transcriber.calls.isEmpty)
        XCTAssertEqual(memory.usedBytes, 0)
    }

    /// 200 s of 8-bit 1 kHz audio (200 KB; 12.8 MB as 16 kHz floats) with a 120 s limit: `audio_too_long` from the
    /// header. The samples are never charged: the peak charge is the request line's, not the audio's.
    func testLongLowRateWAVIsRefusedBeforeDecoding() async throws {
        let transcriber = CannedTranscriber()
        let memory = ClientMemoryPool()
        let server = try await control(transcriber: transcriber) { $0.connection.memory = memory }
        let wav = wavFile(data: [UInt8](repeating: 0x80, count: 200_000), rate: 1000, channels: 1, bits: 8)
        let line = transcribeLine(wav: wav)
        let answer = try await ask(line)
        await server.shutdown()
        XCTAssertEqual(answer?["error"]?["code"], "audio_too_long")
        XCTAssertTrue(answer?["error"]?["message"]?.stringValue?.contains("200.0 seconds") ?? false, "\(String(describing: answer))")
        XCTAssertTrue(transcriber.calls.isEmpty)
        XCTAssertLessThanOrEqual(memory.peakBytes, 4 * (line.utf8.count + 1), "the samples were charged")
        XCTAssertEqual(memory.usedBytes, 0)
    }

    /// A `data` chunk that claims 4 GiB but holds one second costs one second: the decoder counts the bytes present.
    func testLyingDataLengthCostsOnlyTheBytesPresent() async throws {
        let transcriber = CannedTranscriber()
        let server = try await control(transcriber: transcriber)
        let wav = wavFile(data: sinePCM16(frequency: 200, rate: 8000, seconds: 1), rate: 8000, channels: 1, bits: 16,
                          dataSize: 0xFFFF_FFF0)
        let answer = try await ask(transcribeLine(wav: wav))
        await server.shutdown()
        XCTAssertEqual(answer?["result"]?["text"], "hello world 16000")
    }

    /// The samples a request will need are charged before they are made: beyond what the pool has left the
    /// answer is `busy`; beyond what one connection may hold, `request_too_large`. Either way the backend is not
    /// called, and afterwards nothing stays charged.
    func testMemoryLimitsRefuseBeforeAllocating() async throws {
        let wav = wavFile(data: sinePCM16(frequency: 200, rate: 16000, seconds: 10), rate: 16000, channels: 1, bits: 16)
        let line = transcribeLine(wav: wav)
        // The line (charged four times over while parsed) fits; 640 KB of samples do not.
        let lineCost = 4 * (line.utf8.count + 1)
        for (limit, connectionLimit, code) in [(lineCost + 100_000, 64 << 20, "busy"),
                                               (64 << 20, lineCost + 100_000, "request_too_large")] {
            let transcriber = CannedTranscriber()
            let memory = ClientMemoryPool(limit: limit, connectionLimit: connectionLimit)
            let server = try await control(transcriber: transcriber) { $0.connection.memory = memory }
            let answer = try await ask(line)
            await server.shutdown()
            XCTAssertEqual(answer?["error"]?["code"], .string(code), "\(String(describing: answer))")
            XCTAssertTrue(transcriber.calls.isEmpty)
            XCTAssertEqual(memory.usedBytes, 0)
        }
        // With room, the same request goes through and its charge is given back after the answer.
        let memory = ClientMemoryPool()
        let server = try await control { $0.connection.memory = memory }
        let answer = try await ask(line)
        await server.shutdown()
        XCTAssertEqual(answer?["result"]?["text"], "hello world 160000")
        XCTAssertGreaterThanOrEqual(memory.peakBytes, 160_000 * 4)
        XCTAssertEqual(memory.usedBytes, 0)
    }

    /// A request line still being received is charged as it grows: a connection cannot buffer beyond its limit.
    func testBufferedBytesAreChargedAsTheyArrive() async throws {
        let memory = ClientMemoryPool(limit: 1 << 20, connectionLimit: 1 << 20)
        let server = try await control { $0.connection.memory = memory }
        let (answer, closed) = try await onThread { [controlPath] () -> ([String: JSONValue]?, Bool) in
            let client = try RawClient(unixPath: controlPath)
            // 1 MiB of a line without its end: twice that is beyond the 1 MiB account.
            try? client.send([UInt8](repeating: UInt8(ascii: "a"), count: 1 << 20))
            return (try client.readJSONLine(), try client.waitForEndOfStream())
        }
        XCTAssertEqual(answer?["error"]?["code"], "request_too_large")
        XCTAssertTrue(closed)
        // The server goes on serving, with nothing left charged.
        let status = try await ask("{\"id\":2,\"command\":\"status\"}")
        await server.shutdown()
        XCTAssertEqual(status?["ok"], true)
        XCTAssertEqual(memory.usedBytes, 0)
    }

    // MARK: item 9: an unterminated request from a client that half-closes is answered

    func testUnterminatedRequestOfAHalfClosingClientIsAnswered() async throws {
        let backend = TestControlBackend()
        let server = try await control(backend: backend)
        let (answer, ended) = try await onThread { [controlPath] () -> ([String: JSONValue]?, Bool) in
            let client = try RawClient(unixPath: controlPath)
            try client.send("{\"id\":4,\"command\":\"budget\",\"bytes\":5000000}")
            shutdown(client.fd, Int32(SHUT_WR))
            return (try client.readJSONLine(), try client.waitForEndOfStream())
        }
        await server.shutdown()
        XCTAssertEqual(answer?["id"], 4)
        XCTAssertEqual(answer?["ok"], true)
        XCTAssertEqual(answer?["result"]?["budget_bytes"], 5_000_000)
        XCTAssertEqual(backend.budget, 5_000_000)
        XCTAssertTrue(ended)
    }

    func testWyomingClientThatHalfClosesAfterAudioStopGetsItsTranscript() async throws {
        let server = try await wyoming()
        let events = try await onThread { [wyomingPath] () -> [String] in
            let client = try RawClient(unixPath: wyomingPath)
            let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
            try client.send(WyomingEvent(type: "audio-start", data: format))
            try client.send(WyomingEvent(type: "audio-chunk", data: format, payload: [UInt8](repeating: 0, count: 3200)))
            try client.send(WyomingEvent(type: "audio-stop"))
            shutdown(client.fd, Int32(SHUT_WR))
            var types: [String] = []
            while let event = try client.readEvent() { types.append(event.type) }
            return types
        }
        await server.shutdown()
        XCTAssertEqual(events, ["transcript-start", "transcript-chunk", "transcript-chunk", "transcript", "transcript-stop"])
    }

    // MARK: slow clients

    /// A request trickled in (slowloris) is cut off at the request timeout, on both servers, while the idle
    /// timeout (which each byte resets) would have let it stay.
    func testRequestTimeoutEndsATrickledRequest() async throws {
        let controlServer = try await control { $0.connection.requestTimeout = .milliseconds(300) }
        let wyomingServer = try await wyoming { $0.connection.requestTimeout = .milliseconds(300) }
        let (controlAnswer, wyomingAnswer) = try await onThread { [controlPath, wyomingPath] () -> ([String: JSONValue]?, WyomingEvent?) in
            let c = try RawClient(unixPath: controlPath)
            let w = try RawClient(unixPath: wyomingPath)
            // One byte every 50 ms (each resets the idle timeout), until the server hangs up.
            for byte in Array("{\"id\":1,\"command\":\"status\"}".utf8) {
                guard (try? c.send([byte])) != nil, (try? w.send([byte])) != nil else { break }
                usleep(50_000)
            }
            let controlAnswer = try c.readJSONLine()
            XCTAssertTrue(try c.waitForEndOfStream())
            let wyomingAnswer = try w.readEvent()
            XCTAssertTrue(try w.waitForEndOfStream())
            return (controlAnswer, wyomingAnswer)
        }
        await controlServer.shutdown()
        await wyomingServer.shutdown()
        XCTAssertEqual(controlAnswer?["error"]?["code"], "request_timeout")
        XCTAssertEqual(wyomingAnswer?.data["code"], "request-timeout")
    }

    /// While the server holds back reading (a transcription runs), a half-sent next request is not the client's
    /// fault: its deadline waits.
    func testRequestTimeoutDoesNotCountTimeTheServerHoldsReadsBack() async throws {
        let backend = GatedTranscriber()
        let server = try await wyoming(backend: backend) { $0.connection.requestTimeout = .milliseconds(200) }
        let client = try RawClient(unixPath: wyomingPath)
        let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
        try client.send(WyomingEvent(type: "audio-start", data: format))
        try client.send(WyomingEvent(type: "audio-stop"))
        var started = backend.started.makeAsyncIterator()
        _ = await started.next()
        // Half of the next event, then nothing for three timeouts while the transcription is held.
        let describe = WyomingEvent(type: "describe").encoded()
        try client.send(Array(describe.prefix(5)))
        try await Task.sleep(nanoseconds: 600_000_000)
        backend.open()
        try client.send(Array(describe.dropFirst(5)))
        let types = try await onThread { () -> [String] in
            var types: [String] = []
            while let event = try client.readEvent() {
                types.append(event.type)
                if event.type == "info" || event.type == "error" { break }
            }
            return types
        }
        await server.shutdown()
        XCTAssertEqual(types, ["transcript-start", "transcript-chunk", "transcript", "transcript-stop", "info"])
    }

    // MARK: item 10: error codes and lengths

    func testOutOfRangeNumbersGetTheFieldsError() async throws {
        let server = try await control()
        let budget = try await ask("{\"id\":5,\"command\":\"budget\",\"bytes\":1e999}")
        let tiny = try await ask("{\"id\":6,\"command\":\"budget\",\"bytes\":1e-999}")
        let oddID = try await ask("{\"id\":1e999,\"command\":\"status\"}")
        let notJSON = try await ask("{\"id\":7,")
        await server.shutdown()
        XCTAssertEqual(budget?["id"], 5)
        XCTAssertEqual(budget?["error"]?["code"], "bad_request")
        XCTAssertTrue(budget?["error"]?["message"]?.stringValue?.contains("\"bytes\" is out of range") ?? false, "\(String(describing: budget))")
        XCTAssertEqual(tiny?["id"], 6)
        XCTAssertEqual(tiny?["error"]?["message"], "budget needs a positive integer \"bytes\" or \"unlimited\": true")
        XCTAssertEqual(oddID?["ok"], true)  // answered; an id JSON cannot hold comes back as null
        XCTAssertEqual(oddID?["id"], .null)
        XCTAssertEqual(notJSON?["error"]?["code"], "bad_request")
        XCTAssertTrue(notJSON?["error"]?["message"]?.stringValue?.hasPrefix("request is not valid JSON") ?? false)
    }

    func testHugeDataLengthIsCalledTooLarge() async throws {
        let server = try await wyoming()
        let event = try await onThread { [wyomingPath] in
            let client = try RawClient(unixPath: wyomingPath)
            try client.send("{\"type\":\"audio-chunk\",\"data_length\":4611686018427387904}\n")
            return try client.readEvent()
        }
        await server.shutdown()
        XCTAssertEqual(event?.data["code"], "data-too-long")
        XCTAssertEqual(event?.data["text"], "data_length 4611686018427387904 exceeds the limit of 262144 bytes")
    }

    func testWyomingReportsBusyAsBusy() async throws {
        let backend = CannedTranscriber(failWith: ControlError(code: "busy", message: "the daemon is busy (32 requests already waiting); try again shortly"))
        let server = try await wyoming(backend: backend)
        let event = try await onThread { [wyomingPath] in
            let client = try RawClient(unixPath: wyomingPath)
            try client.send(WyomingEvent(type: "audio-start", data: ["rate": 16000, "width": 2, "channels": 1]))
            try client.send(WyomingEvent(type: "audio-stop"))
            return try client.readEvent()
        }
        await server.shutdown()
        XCTAssertEqual(event?.data["code"], "busy")
        XCTAssertEqual(event?.data["text"], "the daemon is busy (32 requests already waiting); try again shortly")
    }

    // MARK: item 2: Wyoming audio is kept at 16 kHz and charged as it arrives

    /// 3 s at 384 kHz in 256 KiB chunks: kept as 16 kHz floats (192 KB), not as 384 kHz floats (4.6 MB); the
    /// peak charge is the samples plus a chunk in flight, and everything is given back after the answer.
    func testWyomingAudioIsChargedAt16kAndGivenBack() async throws {
        let backend = CannedTranscriber()
        let memory = ClientMemoryPool()
        let server = try await wyoming(backend: backend) { $0.connection.memory = memory }
        let pcm = sinePCM16(frequency: 440, rate: 384_000, seconds: 3)
        let chunk = 256 * 1024
        let text = try await onThread { [wyomingPath] () -> String? in
            let client = try RawClient(unixPath: wyomingPath)
            let format: [String: JSONValue] = ["rate": 384_000, "width": 2, "channels": 1]
            try client.send(WyomingEvent(type: "audio-start", data: format))
            var offset = 0
            while offset < pcm.count {
                let end = min(pcm.count, offset + chunk)
                try client.send(WyomingEvent(type: "audio-chunk", data: format, payload: Array(pcm[offset..<end])))
                offset = end
            }
            try client.send(WyomingEvent(type: "audio-stop"))
            while let event = try client.readEvent() { if event.type == "transcript" { return event.data["text"]?.stringValue } }
            return nil
        }
        await server.shutdown()
        XCTAssertEqual(text, "hello world 48000")
        let samplesBytes = 48_000 * 4
        print("384 kHz stream of 3 s: peak charge \(memory.peakBytes) bytes (16 kHz samples: \(samplesBytes))")
        // Samples (capacity at most doubled), the filter table, and at most a few chunks in flight (charged twice).
        XCTAssertLessThan(memory.peakBytes, 2 * samplesBytes + 256 * 1024 + 4 * 2 * (chunk + 200))
        XCTAssertEqual(memory.usedBytes, 0)
    }

    /// Beyond what the pool has left, a stream gets `busy` and its audio is ignored until `audio-stop`.
    func testWyomingStreamBeyondThePoolIsBusy() async throws {
        let backend = CannedTranscriber()
        let memory = ClientMemoryPool(limit: 1 << 20, connectionLimit: 4 << 20)
        let server = try await wyoming(backend: backend) { $0.connection.memory = memory }
        let events = try await onThread { [wyomingPath] () -> [WyomingEvent?] in
            let client = try RawClient(unixPath: wyomingPath)
            let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
            try client.send(WyomingEvent(type: "audio-start", data: format))
            for _ in 0..<20 {  // 20 x 1 s: 1.28 MB as floats, beyond the 1 MiB pool
                try client.send(WyomingEvent(type: "audio-chunk", data: format, payload: [UInt8](repeating: 0, count: 32000)))
            }
            try client.send(WyomingEvent(type: "audio-stop"))
            try client.send(WyomingEvent(type: "describe"))
            return [try client.readEvent(), try client.readEvent()]
        }
        await server.shutdown()
        XCTAssertEqual(events[0]?.data["code"], "busy")
        XCTAssertEqual(events[1]?.type, "info")
        XCTAssertTrue(backend.calls.isEmpty)
        XCTAssertEqual(memory.usedBytes, 0)
    }

    // MARK: item 4: connection limits keep slots for root and the daemon's own user

    /// Root and the server's own user (this process) may use the reserved connections beyond `maxConnections`.
    func testPrivilegedUsersHaveReservedConnections() async throws {
        let server = try await control {
            $0.connection.maxConnections = 2
            $0.connection.reservedConnections = 1
        }
        let (answers, refusal) = try await onThread { [controlPath] () -> ([JSONValue?], [String: JSONValue]?) in
            let clients = try (0..<3).map { _ in try RawClient(unixPath: controlPath) }
            var answers: [JSONValue?] = []
            for client in clients {
                try client.send("{\"id\":1,\"command\":\"status\"}\n")
                answers.append(try client.readJSONLine()?["ok"])
            }
            let fourth = try RawClient(unixPath: controlPath)
            return withExtendedLifetime(clients) { (answers, try? fourth.readJSONLine()) }
        }
        await server.shutdown()
        XCTAssertEqual(answers, [true, true, true])
        XCTAssertEqual(refusal?["error"]?["code"], "too_many_connections")
    }
}

final class JSONParserTests: XCTestCase {
    func testValuesAndEscapes() throws {
        XCTAssertEqual(try JSONValue.parse(Array(" {\"a\":[1,-2.5e3,true,false,null],\"b\":\"x\\u00e9\\ud83d\\ude00\\n\"} ".utf8)),
                       ["a": [1, -2500, true, false, .null], "b": "xé😀\n"])
        XCTAssertEqual(try JSONValue.parse(Array("1e999".utf8)), .number(.infinity))
        XCTAssertEqual(try JSONValue.parse(Array("-1e-999".utf8)), .number(-0.0))
        XCTAssertEqual(try JSONValue.parse(Array("4611686018427387904".utf8)).intValue, nil)
        XCTAssertEqual(try JSONValue.parse(Array("\"\"".utf8)), "")
    }

    func testRejections() {
        for text in ["", "{", "{\"a\"}", "[1,]", "01", "1.", "-", "\"\\x\"", "\"\\ud800\"", "tru", "{} x", "\"a\nb\"",
                     String(repeating: "[", count: 65) + String(repeating: "]", count: 65)] {
            XCTAssertThrowsError(try JSONValue.parse(Array(text.utf8)), text)
        }
        XCTAssertThrowsError(try JSONValue.parse([0x22, 0xFF, 0x22]))  // not UTF-8
        XCTAssertNoThrow(try JSONValue.parse(Array((String(repeating: "[", count: 64) + String(repeating: "]", count: 64)).utf8)))
    }
}
