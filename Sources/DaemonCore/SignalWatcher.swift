import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Turns SIGHUP into reload requests and SIGTERM/SIGINT into one stop request, through Dispatch signal sources.
///
/// Create it first thing in `main`: the signals are ignored before their sources exist, so a signal that arrives
/// while the model loads does not kill the process (a stop request is kept until `waitForStop()` asks for it).
public final class SignalWatcher: @unchecked Sendable {
    private let queue = DispatchQueue(label: "myqasr.signals")
    private var sources: [DispatchSourceSignal] = []
    private let lock = NSLock()
    private var stopRequested: Int32?
    private var stopWaiters: [CheckedContinuation<Int32, Never>] = []
    private var onReload: (@Sendable () -> Void)?

    /// Ignores SIGHUP, SIGTERM, SIGINT (and SIGPIPE) and starts watching them.
    public init() {
        signal(SIGPIPE, SIG_IGN)
        for number in [SIGHUP, SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [weak self] in self?.received(number) }
            source.resume()
            sources.append(source)
        }
    }

    deinit {
        for source in sources { source.cancel() }
    }

    /// What to do on SIGHUP (until set, SIGHUP is ignored).
    public func setReloadHandler(_ handler: @escaping @Sendable () -> Void) {
        lock.lock()
        onReload = handler
        lock.unlock()
    }

    /// Waits until SIGTERM or SIGINT arrives (at once if one already did); returns the signal number.
    public func waitForStop() async -> Int32 {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let number = stopRequested {
                lock.unlock()
                continuation.resume(returning: number)
                return
            }
            stopWaiters.append(continuation)
            lock.unlock()
        }
    }

    /// Whether a stop signal has arrived.
    public var isStopRequested: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopRequested != nil
    }

    private func received(_ number: Int32) {
        lock.lock()
        if number == SIGHUP {
            let handler = onReload
            lock.unlock()
            handler?()
            return
        }
        if stopRequested == nil { stopRequested = number }
        let waiters = stopWaiters
        stopWaiters.removeAll()
        lock.unlock()
        for waiter in waiters { waiter.resume(returning: number) }
    }
}
