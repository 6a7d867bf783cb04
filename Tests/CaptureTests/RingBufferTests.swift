import Foundation
import XCTest
@testable import Capture

final class RingBufferTests: XCTestCase {
    func testConsumedSamplesAreZeroedInStorage() throws {
        let ring = try PrivacyRingBuffer(capacity: 1000)
        let first: [Int16] = (1...600).map { Int16($0) }
        first.withUnsafeBufferPointer { ring.write($0) }
        var output = [Int16](repeating: 0, count: 400)
        let chunk = output.withUnsafeMutableBufferPointer { ring.read(into: $0) }
        XCTAssertEqual(chunk, RingBufferChunk(count: 400, streamPosition: 0))
        XCTAssertEqual(output, Array(first[0..<400]))

        let storage = ring.storageSnapshot()
        XCTAssertEqual(storage.count, 1000)
        XCTAssertTrue(storage[0..<400].allSatisfy { $0 == 0 }, "consumed samples must be zeroed")
        XCTAssertEqual(Array(storage[400..<600]), Array(first[400..<600]), "unread samples stay")
        XCTAssertEqual(ring.statistics.buffered, 200)
        XCTAssertEqual(ring.statistics.consumed, 400)
    }

    func testOverwrittenSamplesAreDroppedCountedAndGone() throws {
        let ring = try PrivacyRingBuffer(capacity: 1000)
        let first: [Int16] = (1...600).map { Int16($0) }
        first.withUnsafeBufferPointer { ring.write($0) }
        var sink = [Int16](repeating: 0, count: 400)
        _ = sink.withUnsafeMutableBufferPointer { ring.read(into: $0) }

        // 200 held + 900 new = 1100: the oldest 100 (values 401...500) must go.
        let second: [Int16] = (1001...1900).map { Int16($0) }
        second.withUnsafeBufferPointer { ring.write($0) }
        var stats = ring.statistics
        XCTAssertEqual(stats.dropped, 100)
        XCTAssertEqual(stats.buffered, 1000, "never more than the capacity")
        XCTAssertEqual(stats.written, 1500)
        let storage = ring.storageSnapshot()
        for value in 401...500 {
            XCTAssertFalse(storage.contains(Int16(value)), "dropped sample \(value) still in memory")
        }

        var floats = [Float](repeating: -9, count: 2000)
        let chunk = floats.withUnsafeMutableBufferPointer { ring.read(into: $0) }
        XCTAssertEqual(chunk, RingBufferChunk(count: 1000, streamPosition: 500), "stream position skips the drop")
        let expected = (Array(first[500..<600]) + second).map { Float($0) / 32768 }
        XCTAssertEqual(Array(floats[0..<1000]), expected)
        XCTAssertTrue(ring.storageSnapshot().allSatisfy { $0 == 0 }, "everything read, everything zero")
        stats = ring.statistics
        XCTAssertEqual(stats.buffered, 0)
        XCTAssertEqual(stats.consumed, 1400)
    }

    func testWriteLargerThanCapacityKeepsOnlyTheNewestSamples() throws {
        let ring = try PrivacyRingBuffer(capacity: 1000)
        let held: [Int16] = (1...300).map { Int16($0) }
        held.withUnsafeBufferPointer { ring.write($0) }
        let big: [Int16] = (0..<2500).map { Int16(2000 + $0) }
        big.withUnsafeBufferPointer { ring.write($0) }
        XCTAssertEqual(ring.statistics.dropped, 300 + 1500)
        XCTAssertEqual(ring.statistics.buffered, 1000)
        let storage = ring.storageSnapshot()
        XCTAssertEqual(Set(storage), Set(big[1500...]), "only the newest capacity samples are held")

        var output = [Int16](repeating: 0, count: 1000)
        let chunk = output.withUnsafeMutableBufferPointer { ring.read(into: $0) }
        XCTAssertEqual(chunk?.streamPosition, 1800)
        XCTAssertEqual(output, Array(big[1500...]))
    }

    func testBoundedUnderSustainedWrites() throws {
        let ring = try PrivacyRingBuffer(seconds: 0.5)
        XCTAssertEqual(ring.capacity, 8000)
        let period = [Int16](repeating: 123, count: 333)
        for _ in 0..<1000 { period.withUnsafeBufferPointer { ring.write($0) } }
        let stats = ring.statistics
        XCTAssertEqual(stats.buffered, 8000)
        XCTAssertEqual(stats.written, 333_000)
        XCTAssertEqual(stats.dropped, 333_000 - 8000)
    }

    func testClearZeroesEverything() throws {
        let ring = try PrivacyRingBuffer(capacity: 500)
        let samples = [Int16](repeating: 777, count: 700)
        samples.withUnsafeBufferPointer { ring.write($0) }
        XCTAssertTrue(ring.storageSnapshot().allSatisfy { $0 == 777 })
        ring.clear()
        XCTAssertTrue(ring.storageSnapshot().allSatisfy { $0 == 0 })
        XCTAssertEqual(ring.statistics.buffered, 0)
        var output = [Int16](repeating: 0, count: 10)
        XCTAssertNil(output.withUnsafeMutableBufferPointer { ring.read(into: $0) })
    }

    func testWaitingReaderWakesOnWriteAndOnClose() throws {
        let ring = try PrivacyRingBuffer(capacity: 1000)
        let gotData = expectation(description: "reader got data")
        let gotEnd = expectation(description: "reader saw the end")
        let results = LockedBox<[RingBufferChunk?]>([])
        let reader = Thread {
            var buffer = [Int16](repeating: 0, count: 100)
            let first = buffer.withUnsafeMutableBufferPointer { ring.read(into: $0, timeout: nil) }
            results.mutate { $0.append(first) }
            gotData.fulfill()
            let second = buffer.withUnsafeMutableBufferPointer { ring.read(into: $0, timeout: nil) }
            results.mutate { $0.append(second) }
            gotEnd.fulfill()
        }
        reader.start()
        let samples = [Int16](repeating: 5, count: 50)
        samples.withUnsafeBufferPointer { ring.write($0) }
        wait(for: [gotData], timeout: 10)
        ring.close()
        wait(for: [gotEnd], timeout: 10)
        XCTAssertEqual(results.value.count, 2)
        XCTAssertEqual(results.value.first??.count, 50)
        XCTAssertNil(results.value.last ?? nil, "closed and empty reads return nil")
        // Writes after close are ignored.
        samples.withUnsafeBufferPointer { ring.write($0) }
        XCTAssertEqual(ring.statistics.buffered, 0)
    }

    func testReadTimesOutWithoutData() throws {
        let ring = try PrivacyRingBuffer(capacity: 100)
        var buffer = [Float](repeating: 0, count: 10)
        XCTAssertNil(buffer.withUnsafeMutableBufferPointer { ring.read(into: $0, timeout: 0.01) })
        XCTAssertNil(buffer.withUnsafeMutableBufferPointer { ring.read(into: $0) })
    }

    func testRejectsNonsenseSizes() {
        XCTAssertThrowsError(try PrivacyRingBuffer(seconds: 0))
        XCTAssertThrowsError(try PrivacyRingBuffer(capacity: -5)) { error in
            XCTAssertTrue("\(error)".contains("capacity"))
        }
    }
}
