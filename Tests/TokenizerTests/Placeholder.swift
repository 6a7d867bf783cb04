import XCTest

final class TokenizerPlaceholder: XCTestCase {}
