import XCTest

final class WhisperEnginePlaceholder: XCTestCase {}
