import Foundation

/// Where the servers do the CPU work a request brings (parsing a long request line, decoding and resampling
/// audio): off the event loops, so one client's audio never delays another's `status`, and off Swift's
/// cooperative pool, which other requests' tasks need. Dispatch's global queue runs about one such job per core.
enum Intake {
    /// Bytes of audio converted per step (bounds the temporary float copy a step makes).
    static let pieceBytes = 256 * 1024

    /// Runs `body` on the intake queue and returns its result.
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async { continuation.resume(with: Result(catching: body)) }
        }
    }
}
