import XCTest

final class CapturePlaceholder: XCTestCase {}
