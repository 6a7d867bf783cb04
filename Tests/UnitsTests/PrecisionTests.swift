import Units
import XCTest

/// The one way a model's precision is named (the daemon's log and status, `myqasrctl`).
final class PrecisionTests: XCTestCase {
    func testNamesWidthsAndSumsUpLayers() {
        XCTAssertEqual(Precision.name(bits: 32), "float")
        XCTAssertEqual(Precision.name(bits: 4), "4-bit")
        XCTAssertEqual(Precision.describe(["a": 32, "b": 32]), "float")
        XCTAssertEqual(Precision.describe(["a": 4, "b": 4, "c": 4]), "4-bit")
        XCTAssertEqual(Precision.describe(["a": 3, "b": 5, "c": 4]), "mixed 3-5-bit")
        XCTAssertEqual(Precision.describe(["a": 8, "b": 32]), "mixed 8-32-bit")
        XCTAssertEqual(Precision.describe([:]), "unknown precision")
    }
}
