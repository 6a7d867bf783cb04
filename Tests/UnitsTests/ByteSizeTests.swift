import Units
import XCTest

/// One rule for every size a user writes or reads (issue 18 item 5: `24M` worked for `myqasrctl` and
/// failed for `myqasr quantize`).
final class ByteSizeTests: XCTestCase {
    func testUnitsAndSpellings() throws {
        let mib = 1024 * 1024
        for (text, bytes) in [
            ("25165824", 25_165_824), ("24MiB", 24 * mib), ("24M", 24 * mib), ("24m", 24 * mib), ("24 MiB", 24 * mib),
            (" 24mib ", 24 * mib), ("24MB", 24_000_000), ("24 mb", 24_000_000), ("0.5GiB", 512 * mib), ("0.5G", 512 * mib),
            ("2GB", 2_000_000_000), ("512KiB", 512 * 1024), ("512 kib", 512 * 1024), ("1.5k", 1536), ("100kB", 100_000),
            ("7B", 7), ("1", 1),
        ] {
            XCTAssertEqual(try ByteSize.parse(text), bytes, text)
            XCTAssertEqual(try ByteSize.parseLimit(text), bytes, text)
        }
        // A fraction of a byte is dropped, never rounded up past what was asked.
        XCTAssertEqual(try ByteSize.parse("1.9"), 1)
        XCTAssertEqual(try ByteSize.parse("0.0009765625k"), 1)
    }

    func testNoLimitOnlyWhereALimitMayBeLifted() throws {
        for text in ["0", "none", "None", "unlimited", " 0MiB "] {
            XCTAssertNil(try ByteSize.parseLimit(text), text)
            XCTAssertThrowsError(try ByteSize.parse(text), text)
        }
        XCTAssertThrowsError(try ByteSize.parse("0")) { error in
            XCTAssertFalse("\(error)".contains("none"), "a size that must be given does not offer none: \(error)")
        }
        // Less than a byte is neither a size nor "no limit".
        XCTAssertThrowsError(try ByteSize.parse("0.4"))
        XCTAssertThrowsError(try ByteSize.parseLimit("0.4"))
        XCTAssertThrowsError(try ByteSize.parseLimit("lots")) { error in
            XCTAssertTrue("\(error)".contains("or none for no limit"), "\(error)")
        }
    }

    func testGarbageIsRefusedWithExamples() {
        for bad in ["", " ", "MiB", "-3MiB", "24XB", "24 MiB extra", "12 parsecs", "1e9", "1.2.3k", "١٢M", "inf", "nan",
                    "99999999999999999999G"] {
            XCTAssertThrowsError(try ByteSize.parse(bad), bad) { error in
                XCTAssertTrue("\(error)".contains("\"\(bad)\" is not a size"), "\(error)")
                XCTAssertTrue("\(error)".contains("24MiB, 24M, 24MB"), "\(error)")
            }
            XCTAssertThrowsError(try ByteSize.parseLimit(bad), bad)
        }
    }

    func testFormats() {
        XCTAssertEqual(ByteSize.format(512), "512 B")
        XCTAssertEqual(ByteSize.format(812 * 1024), "812 KiB")
        XCTAssertEqual(ByteSize.format(25_165_824), "24.0 MiB")
        XCTAssertEqual(ByteSize.format(23_990_000), "22.9 MiB")
        XCTAssertEqual(ByteSize.format(3 * 1024 * 1024 * 1024 / 2), "1.50 GiB")
        XCTAssertEqual(ByteSize.formatExact(25_165_824), "24.0 MiB (25165824 bytes)")
        // What is printed reads back as (about) the same size.
        XCTAssertEqual(try ByteSize.parse(ByteSize.format(25_165_824).replacingOccurrences(of: " ", with: "")), 25_165_824)
    }
}
