import DaemonCore
import XCTest

final class ByteSizeTests: XCTestCase {
    func testParsesUnitsAndUnlimited() throws {
        XCTAssertEqual(try ByteSize.parse("24MiB"), 24 * 1024 * 1024)
        XCTAssertEqual(try ByteSize.parse("24 MB"), 24_000_000)
        XCTAssertEqual(try ByteSize.parse("1.5k"), 1536)
        XCTAssertEqual(try ByteSize.parse("4096"), 4096)
        XCTAssertNil(try ByteSize.parse("0"))
        XCTAssertNil(try ByteSize.parse("none"))
        XCTAssertNil(try ByteSize.parse("Unlimited"))
    }

    func testRejectsGarbage() {
        for bad in ["", "MiB", "-3MiB", "12 parsecs", "1e9", "1.2.3k"] {
            XCTAssertThrowsError(try ByteSize.parse(bad), bad) { error in
                XCTAssertTrue("\(error)".contains("is not a size"), "\(error)")
            }
        }
    }
}

final class LogHandlerTests: XCTestCase {
    func testJournalPriorityPrefixes() {
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.error), 3)
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.warning), 4)
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.info), 6)
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.debug), 7)
    }
}
