#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@testable import Serving

/// A backend that holds every request until its task is cancelled, and says who asked.
final class CancellationWatchingTranscriber: TranscriptionBackend, @unchecked Sendable {  // @unchecked: the streams are thread-safe
    /// The origin of each request that reached the backend.
    let started: AsyncStream<RequestOrigin>
    /// One element each time a request's task was cancelled.
    let cancelled: AsyncStream<Void>
    private let startedContinuation: AsyncStream<RequestOrigin>.Continuation
    private let cancelledContinuation: AsyncStream<Void>.Continuation

    init() {
        (started, startedContinuation) = AsyncStream<RequestOrigin>.makeStream()
        (cancelled, cancelledContinuation) = AsyncStream<Void>.makeStream()
    }

    func transcribe(samples: [Float], language: String?, origin: RequestOrigin) async throws -> TranscriptResult {
        startedContinuation.yield(origin)
        while !Task.isCancelled { try? await Task.sleep(nanoseconds: 1_000_000) }
        cancelledContinuation.yield()
        throw CancellationError()
    }
}

/// The servers tell the backend who asked (the peer's uid, the connection) and cancel a request's task when its
/// client goes away, so the daemon can drop or stop the work (issue 17 item 3).
final class RequestCancellationTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws { directory = try makeTemporaryDirectory() }
    override func tearDown() { removeDirectory(directory) }

    func testWyomingClientThatDisconnectsCancelsItsRequest() async throws {
        let backend = CancellationWatchingTranscriber()
        let path = directory + "/wyoming.sock"
        let server = WyomingServer(endpoints: [.unix(path: path)], backend: backend)
        try await server.start()
        var client: RawClient? = try RawClient(unixPath: path)
        let format: [String: JSONValue] = ["rate": 16000, "width": 2, "channels": 1]
        try client!.send(WyomingEvent(type: "audio-start", data: format))
        try client!.send(WyomingEvent(type: "audio-chunk", data: format, payload: [UInt8](repeating: 0, count: 3200)))
        try client!.send(WyomingEvent(type: "audio-stop"))
        var started = backend.started.makeAsyncIterator()
        let origin = await started.next()
        XCTAssertEqual(origin?.uid, getuid(), "the peer's user id from SO_PEERCRED")
        XCTAssertEqual(origin?.fairnessKey, "uid \(getuid())")
        client = nil  // disconnects
        var cancelled = backend.cancelled.makeAsyncIterator()
        _ = await cancelled.next()
        await server.shutdown()
    }

    func testControlClientThatDisconnectsCancelsItsRequest() async throws {
        let backend = CancellationWatchingTranscriber()
        let path = directory + "/control.sock"
        let server = ControlServer(endpoints: [.unix(path: path)], control: TestControlBackend(), transcription: backend)
        try await server.start()
        var client: RawClient? = try RawClient(unixPath: path)
        let audio = Data([UInt8](repeating: 0, count: 3200)).base64EncodedString()
        try client!.send("{\"id\":1,\"command\":\"transcribe\",\"format\":\"s16le\",\"rate\":16000,\"audio\":\"\(audio)\"}\n")
        var started = backend.started.makeAsyncIterator()
        let first = await started.next()
        XCTAssertEqual(first?.uid, getuid())
        // Another connection is another origin with the same user's key.
        let other = try RawClient(unixPath: path)
        try other.send("{\"id\":1,\"command\":\"transcribe\",\"format\":\"s16le\",\"rate\":16000,\"audio\":\"\(audio)\"}\n")
        let second = await started.next()
        XCTAssertNotEqual(first?.connection, second?.connection)
        XCTAssertEqual(first?.fairnessKey, second?.fairnessKey)
        client = nil
        var cancelled = backend.cancelled.makeAsyncIterator()
        _ = await cancelled.next()
        other.close()
        _ = await cancelled.next()
        await server.shutdown()
    }
}
