import DaemonCore
import XCTest

final class LogHandlerTests: XCTestCase {
    func testJournalPriorityPrefixes() {
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.error), 3)
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.warning), 4)
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.info), 6)
        XCTAssertEqual(DaemonLogHandler.priorityForTesting(.debug), 7)
    }
}
