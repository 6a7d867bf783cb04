import Foundation
import XCTest
@testable import Quantization

/// Inputs scripts/fuzz found to crash the `.myqs` loader, kept as tests (and in Fuzz/Corpus/myqs).
final class StatisticsFileFuzzRegressionTests: XCTestCase {
    /// A version 1 file with a correct checksum and no layers whose sample count is 2^64 - 1 trapped in
    /// `Int(samples)`; it is now refused as malformed.
    func testSampleCountBeyondIntIsMalformedNotATrap() {
        var payload: [UInt8] = [1, 0, 0, 0, UInt8(ascii: "x")]            // identity "x"
        payload += [UInt8](repeating: 0xFF, count: 8)                       // sample count 2^64 - 1
        payload += [0, 0, 0, 0]                                             // no layers
        var file = StatisticsFile.magic + [1, 0, 0, 0]                      // version 1
        file += (0..<8).map { UInt8(truncatingIfNeeded: UInt64(payload.count) >> (8 * UInt64($0))) }
        file += payload
        let crc = StatisticsFile.crc(file)
        file += (0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * UInt32($0))) }
        XCTAssertThrowsError(try StatisticsFile.decode(file, path: "big.myqs")) { error in
            guard case StatisticsFileError.malformed(_, let reason)? = error as? StatisticsFileError else {
                return XCTFail("\(error)")
            }
            XCTAssertTrue(reason.contains("18446744073709551615"), reason)
        }
    }
}
