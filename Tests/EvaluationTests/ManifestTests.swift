import Foundation
import XCTest
@testable import Evaluation

final class ManifestTests: XCTestCase {
    static let header = "voice\tgender\taccent\tcondition\tfile\tduration\ttext\tutt_id\tsentence_id\tsubset\tsplit\tengine"

    static let sample = [
        header,
        "piper_joe\tmale\tUS\tclean\taudio/piper_joe/clean/piper_joe-a0001.wav\t2.345\tAuthor of the danger trail.\tpiper_joe-a0001\ta0001\tshared\tcalib\tpiper",
        "piper_joe\tmale\tUS\tnoise\taudio/piper_joe/noise/piper_joe-a0002.wav\t3.000\tNot at this particular case, Tom.\tpiper_joe-a0002\ta0002\town\ttest\tpiper",
        "flite_rms\tmale\tUS\tclean\taudio/flite_rms/clean/flite_rms-a0003.wav\t1.5\tFor the twentieth time that evening.\tflite_rms-a0003\ta0003\tshared\ttest\tflite",
    ].joined(separator: "\n") + "\n"

    let base = URL(fileURLWithPath: "/data/corpus")

    func testParsesRowsAndResolvesPaths() throws {
        let m = try Manifest(tsv: Self.sample, baseDirectory: base)
        XCTAssertEqual(m.entries.count, 3)
        let e = m.entries[0]
        XCTAssertEqual(e.voice, "piper_joe")
        XCTAssertEqual(e.gender, "male")
        XCTAssertEqual(e.accent, "US")
        XCTAssertEqual(e.condition, "clean")
        XCTAssertEqual(e.file, "audio/piper_joe/clean/piper_joe-a0001.wav")
        XCTAssertEqual(e.audioURL.path, "/data/corpus/audio/piper_joe/clean/piper_joe-a0001.wav")
        XCTAssertEqual(e.duration, 2.345, accuracy: 1e-9)
        XCTAssertEqual(e.text, "Author of the danger trail.")
        XCTAssertEqual(e.uttID, "piper_joe-a0001")
        XCTAssertEqual(e.sentenceID, "a0001")
        XCTAssertEqual(e.subset, "shared")
        XCTAssertEqual(e.split, "calib")
        XCTAssertEqual(e.extra, ["engine": "piper"])
        XCTAssertEqual(m.voices, ["piper_joe", "flite_rms"])
        XCTAssertEqual(m.conditions, ["clean", "noise"])
        XCTAssertEqual(m.totalDuration, 6.845, accuracy: 1e-9)
    }

    func testFilters() throws {
        let m = try Manifest(tsv: Self.sample, baseDirectory: base)
        XCTAssertEqual(m.filtered(voices: ["piper_joe"]).entries.map(\.sentenceID), ["a0001", "a0002"])
        XCTAssertEqual(m.filtered(conditions: ["clean"]).entries.map(\.sentenceID), ["a0001", "a0003"])
        XCTAssertEqual(m.filtered(splits: ["test"]).entries.map(\.sentenceID), ["a0002", "a0003"])
        XCTAssertEqual(m.filtered(voices: ["piper_joe"], conditions: ["clean"], splits: ["test"]).entries.count, 0)
        XCTAssertEqual(m.filtered().entries.count, 3)
    }

    func testColumnOrderFromHeaderAndNoExtraColumns() throws {
        let tsv = "utt_id\tsplit\tsubset\tsentence_id\ttext\tduration\tfile\tcondition\taccent\tgender\tvoice\n"
            + "u1\ttest\town\ts1\thello there\t1.25\tx.wav\tclean\tUS\tfemale\tv1\n"
        let m = try Manifest(tsv: tsv, baseDirectory: base)
        XCTAssertEqual(m.entries.first?.voice, "v1")
        XCTAssertEqual(m.entries.first?.text, "hello there")
        XCTAssertEqual(m.entries.first?.extra, [:])
        XCTAssertEqual(m.entries.first?.audioURL.path, "/data/corpus/x.wav")
    }

    func testSkipsBlankLinesAndCarriageReturns() throws {
        let tsv = Self.sample.replacingOccurrences(of: "\n", with: "\r\n") + "\r\n\n"
        let m = try Manifest(tsv: tsv, baseDirectory: base)
        XCTAssertEqual(m.entries.count, 3)
        XCTAssertEqual(m.entries[2].extra["engine"], "flite")
    }

    func testMalformedRowNamesItsLine() {
        var lines = Self.sample.components(separatedBy: "\n")
        lines[2] = "piper_joe\tmale\tUS\tnoise\tonly five fields"
        XCTAssertThrowsError(try Manifest(tsv: lines.joined(separator: "\n"), baseDirectory: base, path: "m.tsv")) { error in
            guard case ManifestError.malformedRow(let path, let line, _) = error else {
                return XCTFail("unexpected error \(error)")
            }
            XCTAssertEqual(path, "m.tsv")
            XCTAssertEqual(line, 3)
            XCTAssertTrue("\(error)".contains("m.tsv, line 3"), "\(error)")
        }
    }

    func testBadDuration() {
        let tsv = Self.sample.replacingOccurrences(of: "\t1.5\t", with: "\tlong\t")
        XCTAssertThrowsError(try Manifest(tsv: tsv, baseDirectory: base)) { error in
            XCTAssertEqual(error as? ManifestError,
                           .malformedRow(path: "<string>", line: 4, reason: "duration 'long' is not a number of seconds"))
        }
    }

    func testMissingColumnAndEmpty() {
        XCTAssertThrowsError(try Manifest(tsv: "voice\tfile\n", baseDirectory: base)) { error in
            XCTAssertEqual(error as? ManifestError, .missingColumn(path: "<string>", column: "gender"))
        }
        XCTAssertThrowsError(try Manifest(tsv: "", baseDirectory: base)) { error in
            XCTAssertEqual(error as? ManifestError, .empty(path: "<string>"))
        }
    }

    func testReadsFileRelativeToItsFolder() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("manifest-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("manifest.tsv")
        try Self.sample.write(to: url, atomically: true, encoding: .utf8)
        let m = try Manifest(contentsOf: url)
        XCTAssertEqual(m.entries.count, 3)
        XCTAssertEqual(m.entries[1].audioURL.standardizedFileURL.path,
                       dir.appendingPathComponent("audio/piper_joe/noise/piper_joe-a0002.wav").standardizedFileURL.path)

        XCTAssertThrowsError(try Manifest(contentsOf: dir.appendingPathComponent("missing.tsv"))) { error in
            guard case ManifestError.unreadable = error else { return XCTFail("unexpected error \(error)") }
        }
    }
}
