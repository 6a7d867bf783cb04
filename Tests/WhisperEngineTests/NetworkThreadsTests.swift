import Foundation
import XCTest
import WhisperEngine

/// Threads belong to the call: two networks over the same weights, run at the same time with
/// different thread counts, each hand their own count to every product (issue 18, item 1).
final class NetworkThreadsTests: XCTestCase {
    /// A weight matrix that records the `threads` each product is called with, then multiplies
    /// as the matrix it wraps: the seam through which a test sees what a pass asked of the kernels.
    final class ThreadRecordingMatrix: WeightMatrix, @unchecked Sendable {  // `seen` is guarded by `lock`
        let base: any WeightMatrix
        let recorder: Recorder
        init(_ base: any WeightMatrix, recorder: Recorder) {
            self.base = base
            self.recorder = recorder
        }
        var outFeatures: Int { base.outFeatures }
        var inFeatures: Int { base.inFeatures }
        var byteSize: Int { base.byteSize }
        func multiply(_ x: UnsafePointer<Float>, rows m: Int, threads: Int, into y: UnsafeMutablePointer<Float>) {
            recorder.record(threads)
            base.multiply(x, rows: m, threads: threads, into: y)
        }
        func copyRow(_ index: Int, into out: UnsafeMutablePointer<Float>) { base.copyRow(index, into: out) }
    }

    /// The thread counts one network's products were called with, in order.
    final class Recorder: @unchecked Sendable {  // `seen` is guarded by `lock`
        private let lock = NSLock()
        private var seen: [Int] = []
        func record(_ threads: Int) { lock.withLock { seen.append(threads) } }
        var calls: [Int] { lock.withLock { seen } }
    }

    /// Meets the other pass after the first layer: both passes have started (and, before threads
    /// were per call, both had set the process-wide count) before either goes on.
    final class Rendezvous: ActivationObserver {
        let mine: DispatchSemaphore, theirs: DispatchSemaphore
        private var met = false
        private(set) var timedOut = false
        init(mine: DispatchSemaphore, theirs: DispatchSemaphore) {
            self.mine = mine
            self.theirs = theirs
        }
        func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
            guard !met else { return }
            met = true
            mine.signal()
            // A guard against a hang only: the other pass reaches its first layer at once.
            timedOut = theirs.wait(timeout: .now() + 120) == .timedOut
        }
    }

    /// One pass's logits, written by its thread before it leaves the group and read after the wait.
    final class Output: @unchecked Sendable {
        var logits: [Float] = []
    }

    func testConcurrentPassesEachUseTheirOwnThreadCount() throws {
        var rng = SeededGenerator(seed: 18)
        let weights = RandomWhisper.make(rng: &rng)
        let dims = weights.dimensions
        let mel = rng.floats(dims.nMels * 2 * dims.nAudioCtx, scale: 1)
        func recorded(by recorder: Recorder) -> WhisperWeights {
            weights.replacing(Dictionary(uniqueKeysWithValues: weights.linearLayers.map {
                ($0.name, ThreadRecordingMatrix($0.weight, recorder: recorder) as any WeightMatrix)
            }))
        }
        let counts = [1, 3]
        let recorders = counts.map { _ in Recorder() }
        let started = counts.map { _ in DispatchSemaphore(value: 0) }
        let observers = counts.indices.map { Rendezvous(mine: started[$0], theirs: started[1 - $0]) }
        let outputs = counts.map { _ in Output() }
        let done = DispatchGroup()
        for i in counts.indices {
            let network = WhisperNetwork(weights: recorded(by: recorders[i]), threads: counts[i], observer: observers[i])
            done.enter()
            let thread = Thread {
                let audio = network.encode(mel: mel)
                let session = network.makeDecoderSession(audio: audio)
                session.reorder([0, 0])
                outputs[i].logits = session.step([[1, 2, 3], [4, 5, 6]]) + session.step([[7], [8]])
                done.leave()
            }
            thread.start()
        }
        done.wait()

        let products = weights.linearLayers.count   // at least one product per layer: encoder, decoder, logits
        for i in counts.indices {
            XCTAssertFalse(observers[i].timedOut)
            let calls = recorders[i].calls
            XCTAssertGreaterThanOrEqual(calls.count, products, "pass \(i) ran every layer")
            XCTAssertEqual(Set(calls), [counts[i]], "the pass with \(counts[i]) threads was given other counts")
        }
        // The thread count changes how products are split, never their result.
        XCTAssertEqual(outputs[0].logits.count, 4 * dims.nVocab)
        XCTAssertEqual(outputs[0].logits.count, outputs[1].logits.count)
        for (a, b) in zip(outputs[0].logits, outputs[1].logits) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }
}

/// The encoder gives way between blocks to a cancelled job, and is unchanged without a cancellation.
final class EncoderCancellationTests: XCTestCase {
    func testEncoderStopsWhenCancelledAndMatchesWithout() throws {
        var rng = SeededGenerator(seed: 3)
        let weights = RandomWhisper.make(rng: &rng)
        let network = WhisperNetwork(weights: weights, threads: 2)
        let dims = weights.dimensions
        let mel = rng.floats(dims.nMels * 2 * dims.nAudioCtx, scale: 1)
        let running = Cancellation()
        XCTAssertEqual(try network.encode(mel: mel, cancellation: running).values, network.encode(mel: mel).values)
        running.cancel()
        XCTAssertThrowsError(try network.encode(mel: mel, cancellation: running)) { error in
            XCTAssertEqual(error as? DecodingError, .cancelled)
        }
    }
}
