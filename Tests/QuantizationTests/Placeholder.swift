import XCTest

final class QuantizationPlaceholder: XCTestCase {}
