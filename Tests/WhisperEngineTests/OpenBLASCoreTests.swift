import XCTest
@testable import WhisperEngine

/// Which OpenBLAS kernels an executable asks for (`OpenBLASCore`): only where OpenBLAS fell back to its Prescott
/// kernels, the widest the CPU can run. The executables doing so is `CommandLineTests`'.
final class OpenBLASCoreTests: XCTestCase {
    func testOnlyTheFallbackIsReplacedByWhatTheCPURuns() {
        XCTAssertEqual(OpenBLASCore.replacement(detected: "Prescott", vectorWidth: 512), "SkylakeX")
        XCTAssertEqual(OpenBLASCore.replacement(detected: "Prescott", vectorWidth: 256), "Haswell")
        XCTAssertNil(OpenBLASCore.replacement(detected: "Prescott", vectorWidth: 0), "a CPU without AVX2 keeps SSE3")
        for known in ["SkylakeX", "Haswell", "Zen", "Cooperlake", "Sandybridge"] {
            XCTAssertNil(OpenBLASCore.replacement(detected: known, vectorWidth: 512), "\(known) is OpenBLAS's own choice")
        }
    }
}
