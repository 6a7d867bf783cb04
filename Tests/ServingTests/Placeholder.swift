import XCTest

final class ServingPlaceholder: XCTestCase {}
