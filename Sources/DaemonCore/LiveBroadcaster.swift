import Foundation
import Serving

/// Fans live transcripts out to every `listen` client. Each client gets its own bounded stream (the newest
/// `bufferSize` transcripts are kept for a slow reader), so publishing never waits for a client.
public final class LiveBroadcaster: @unchecked Sendable {
    private let lock = NSLock()
    private var continuations: [UUID: AsyncStream<LiveTranscript>.Continuation] = [:]
    private var closed = false
    private let bufferSize: Int

    /// Creates a broadcaster keeping up to `bufferSize` unread transcripts per client.
    public init(bufferSize: Int = 64) {
        self.bufferSize = bufferSize
    }

    /// A new stream for one client; it ends when the client stops iterating or at `finish()`.
    public func subscribe() -> AsyncStream<LiveTranscript> {
        let id = UUID()
        let (stream, continuation) = AsyncStream.makeStream(
            of: LiveTranscript.self, bufferingPolicy: .bufferingNewest(bufferSize))
        lock.lock()
        if closed {
            lock.unlock()
            continuation.finish()
            return stream
        }
        continuations[id] = continuation
        lock.unlock()
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            self.lock.lock()
            self.continuations[id] = nil
            self.lock.unlock()
        }
        return stream
    }

    /// Clients currently subscribed.
    public var subscriberCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return continuations.count
    }

    /// Sends `transcript` to every client.
    public func publish(_ transcript: LiveTranscript) {
        lock.lock()
        let targets = Array(continuations.values)
        lock.unlock()
        for continuation in targets { continuation.yield(transcript) }
    }

    /// Ends every stream; later subscribers get an ended stream.
    public func finish() {
        lock.lock()
        closed = true
        let targets = Array(continuations.values)
        continuations.removeAll()
        lock.unlock()
        for continuation in targets { continuation.finish() }
    }
}
