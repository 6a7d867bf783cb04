import Foundation
import XCTest

/// docs/protocol.md names every error code the daemon can send (issue 17 item 10: `busy` and `bad_config` were
/// sent but not documented). The codes are read from the sources: every `code: "..."` literal in Serving and
/// DaemonCore, and the codes `ModelServiceError` and Wyoming's framing errors return.
final class ProtocolDocumentationTests: XCTestCase {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    private func codesInSources() throws -> Set<String> {
        var codes: Set<String> = []
        let literal = try NSRegularExpression(pattern: #"code: "([a-z][a-z_-]*)""#)
        let returned = try NSRegularExpression(pattern: #"case [^\n]*: return "([a-z][a-z_-]*)"\n"#)
        for directory in ["Sources/Serving", "Sources/DaemonCore"] {
            let url = Self.root.appendingPathComponent(directory)
            for name in try FileManager.default.contentsOfDirectory(atPath: url.path) where name.hasSuffix(".swift") {
                let text = try String(contentsOf: url.appendingPathComponent(name), encoding: .utf8)
                var patterns = [literal]
                // The error types whose `code` is a switch of string returns.
                if name == "ModelService.swift" || name == "WyomingEvent.swift" { patterns.append(returned) }
                for pattern in patterns {
                    for match in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                        codes.insert(String(text[Range(match.range(at: 1), in: text)!]))
                    }
                }
            }
        }
        return codes
    }

    func testEveryErrorCodeIsDocumented() throws {
        let codes = try codesInSources()
        XCTAssertTrue(codes.isSuperset(of: ["busy", "bad_config", "check_failed", "data-too-long", "request_timeout"]),
                      "the sources were not read as expected: \(codes.sorted())")
        let document = try String(contentsOf: Self.root.appendingPathComponent("docs/protocol.md"), encoding: .utf8)
        guard let control = document.range(of: "## Control protocol") else { return XCTFail("no control section") }
        let wyoming = String(document[..<control.lowerBound])
        let controlErrors = String(document[control.lowerBound...])
        for code in codes.sorted() {
            // Wyoming spells codes with dashes, the control protocol with underscores.
            if code.contains("-") {
                XCTAssertTrue(wyoming.contains("`\(code)`"), "\(code) is not in docs/protocol.md's Wyoming errors")
            } else {
                XCTAssertTrue(controlErrors.contains("`\(code)`"), "\(code) is not in docs/protocol.md's control errors")
            }
        }
        // The daemon's refusals of a transcription keep their code on Wyoming (busy was "transcription-failed").
        for code in ["busy", "shutting-down", "not-ready", "request-too-large"] {
            XCTAssertTrue(wyoming.contains("`\(code)`"), "\(code) is not in docs/protocol.md's Wyoming errors")
        }
    }
}
