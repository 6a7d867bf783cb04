import XCTest

final class AudioPlaceholder: XCTestCase {}
