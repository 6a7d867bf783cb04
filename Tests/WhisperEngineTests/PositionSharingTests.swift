import Foundation
import TestSupport
import WhisperEngine
import XCTest

/// A network read again beside a resident one takes the resident one's position tables when they hold the same
/// values, and keeps its own when they do not (`WhisperWeights.sharingPositions`).
final class PositionSharingTests: XCTestCase {
    private func storage(_ values: [Float]) -> UnsafeRawPointer? {
        values.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
    }

    func testEqualTablesAreSharedAndOthersKept() {
        var rng = SeededGenerator(seed: 7)
        let resident = RandomWhisper.make(rng: &rng)
        rng = SeededGenerator(seed: 7)
        let again = RandomWhisper.make(rng: &rng)   // the same values in storage of its own
        XCTAssertNotEqual(storage(again.encoderPositions), storage(resident.encoderPositions))

        let shared = again.sharingPositions(with: resident)
        XCTAssertEqual(storage(shared.encoderPositions), storage(resident.encoderPositions))
        XCTAssertEqual(storage(shared.decoderPositions), storage(resident.decoderPositions))
        XCTAssertEqual(RandomWhisper.run(shared), RandomWhisper.run(again), "the network computes the same")

        rng = SeededGenerator(seed: 8)
        let other = RandomWhisper.make(rng: &rng)
        let kept = other.sharingPositions(with: resident)
        XCTAssertEqual(storage(kept.encoderPositions), storage(other.encoderPositions))
        XCTAssertEqual(storage(kept.decoderPositions), storage(other.decoderPositions))
        XCTAssertEqual(kept.encoderPositions, other.encoderPositions)
    }
}
