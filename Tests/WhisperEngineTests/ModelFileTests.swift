import Foundation
import XCTest
@testable import WhisperEngine

/// Writes CTranslate2 `model.bin` bytes the way CTranslate2's Python writer does, with
/// knobs to break each part.
private struct ModelBinWriter {
    struct Variable {
        var name: String
        var shape: [UInt32]
        var dtype: UInt8
        var data: [UInt8]
        var declaredBytes: UInt32?
    }

    var version: UInt32 = 6
    var spec = "WhisperSpec"
    var revision: UInt32 = 3
    var variables: [Variable] = []
    var aliases: [(String, String)] = []
    var trailing: [UInt8] = []

    static func float32(_ values: [Float]) -> [UInt8] {
        values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
    }

    static func float16(_ values: [Float]) -> [UInt8] {
        values.flatMap { withUnsafeBytes(of: Float16($0).bitPattern.littleEndian, Array.init) }
    }

    private static func u16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    private static func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
    private static func string(_ s: String) -> [UInt8] {
        let bytes = Array(s.utf8) + [0]
        return u16(UInt16(bytes.count)) + bytes
    }

    func bytes() -> [UInt8] {
        var out = Self.u32(version) + Self.string(spec) + Self.u32(revision) + Self.u32(UInt32(variables.count))
        for v in variables {
            out += Self.string(v.name)
            out.append(UInt8(v.shape.count))
            for d in v.shape { out += Self.u32(d) }
            out.append(v.dtype)
            out += Self.u32(v.declaredBytes ?? UInt32(v.data.count))
            out += v.data
        }
        out += Self.u32(UInt32(aliases.count))
        for (alias, target) in aliases { out += Self.string(alias) + Self.string(target) }
        return out + trailing
    }

    func data() -> Data { Data(bytes()) }

    /// A small valid model: a float32 matrix, a float16 vector, an int16 scalar, an int8
    /// scalar, and an alias to the matrix.
    static func valid() -> ModelBinWriter {
        var w = ModelBinWriter()
        w.variables = [
            Variable(name: "decoder/embeddings/weight", shape: [2, 3], dtype: 0,
                     data: float32([1, -2, 3.5, 0, 0.25, -8])),
            Variable(name: "encoder/layer_norm/gamma", shape: [4], dtype: 4, data: float16([1, 0.5, -2, 65504])),
            Variable(name: "encoder/num_heads", shape: [], dtype: 2, data: u16(6)),
            Variable(name: "decoder/pre_norm", shape: [], dtype: 1, data: [1]),
        ]
        w.aliases = [("decoder/projection/weight", "decoder/embeddings/weight")]
        return w
    }
}

final class ModelFileTests: XCTestCase {
    let path = "/models/test/model.bin"

    /// Parses `writer` and returns the error it throws, failing when it parses.
    private func error(_ writer: ModelBinWriter, file: StaticString = #filePath, line: UInt = #line) -> ModelFileError? {
        error(writer.data(), file: file, line: line)
    }

    private func error(_ data: Data, file: StaticString = #filePath, line: UInt = #line) -> ModelFileError? {
        do {
            _ = try ModelFile(data: data, path: path)
            XCTFail("parsed a malformed file", file: file, line: line)
            return nil
        } catch let e as ModelFileError {
            XCTAssertTrue(e.description.hasPrefix(path + ":"), "message should name the file: \(e)", file: file, line: line)
            return e
        } catch {
            XCTFail("unexpected error type: \(error)", file: file, line: line)
            return nil
        }
    }

    func testValidFileParsesWithAliasesResolved() throws {
        let model = try ModelFile(data: ModelBinWriter.valid().data(), path: path)
        XCTAssertEqual(model.binaryVersion, 6)
        XCTAssertEqual(model.specName, "WhisperSpec")
        XCTAssertEqual(model.specRevision, 3)
        XCTAssertEqual(model.variables.count, 5)
        XCTAssertEqual(model.aliases, ["decoder/projection/weight": "decoder/embeddings/weight"])

        let embeddings = try model.variable("decoder/embeddings/weight")
        XCTAssertEqual(embeddings.shape, [2, 3])
        XCTAssertEqual(embeddings.dtype, .float32)
        XCTAssertEqual(embeddings.floats(), [1, -2, 3.5, 0, 0.25, -8])
        let projection = try model.variable("decoder/projection/weight")
        XCTAssertEqual(projection.shape, [2, 3])
        XCTAssertEqual(projection.floats(), embeddings.floats())
        XCTAssertEqual(try model.floats("decoder/projection/weight", shape: [2, 3]), [1, -2, 3.5, 0, 0.25, -8])

        let gamma = try model.variable("encoder/layer_norm/gamma")
        XCTAssertEqual(gamma.dtype, .float16)
        XCTAssertEqual(gamma.floats(), [1, 0.5, -2, 65504])
        XCTAssertEqual(try model.variable("encoder/num_heads").intValue(), 6)
        XCTAssertEqual(try model.variable("encoder/num_heads").shape, [])
        XCTAssertEqual(try model.variable("encoder/num_heads").count, 1)
        XCTAssertEqual(try model.variable("decoder/pre_norm").intValue(), 1)
    }

    func testVersionFiveIsAccepted() throws {
        var w = ModelBinWriter.valid()
        w.version = 5
        XCTAssertEqual(try ModelFile(data: w.data(), path: path).binaryVersion, 5)
    }

    func testEveryTruncationIsReported() {
        let full = ModelBinWriter.valid().bytes()
        for length in 0..<full.count {
            guard let e = error(Data(full.prefix(length))) else { continue }
            guard case let .truncated(p, offset, needed, _) = e else {
                XCTFail("length \(length): expected truncated, got \(e)")
                continue
            }
            XCTAssertEqual(p, path)
            XCTAssertLessThanOrEqual(offset, length)
            XCTAssertGreaterThan(offset + needed, length, "length \(length): \(e)")
        }
    }

    func testTruncationSaysWhatWasBeingRead() {
        let full = ModelBinWriter.valid().bytes()
        // Header: version, spec string (u16 length, bytes, NUL), revision, variable count.
        let header = 4 + 2 + "WhisperSpec".utf8.count + 1 + 4 + 4
        let valuesStart = header + 2 + "decoder/embeddings/weight".utf8.count + 1 + 1 + 8 + 1 + 4
        XCTAssertEqual(error(Data(full.prefix(valuesStart + 5))),
                       .truncated(path: path, offset: valuesStart, needed: 24, what: "values of 'decoder/embeddings/weight'"))
        XCTAssertEqual(error(Data(full.prefix(2))),
                       .truncated(path: path, offset: 0, needed: 4, what: "binary version"))
        // Two bytes into the alias count; the alias table is the count and two 25-character strings.
        let aliasStart = full.count - (4 + 2 * (2 + 25 + 1))
        XCTAssertEqual(error(Data(full.prefix(aliasStart + 2))),
                       .truncated(path: path, offset: aliasStart, needed: 4, what: "alias count"))
        XCTAssertEqual(error(Data(full.prefix(full.count - 1))),
                       .truncated(path: path, offset: full.count - 26, needed: 26,
                                  what: "target of alias 'decoder/projection/weight'"))
    }

    func testWrongVersion() {
        for version: UInt32 in [0, 4, 7, 0x0600_0000] {
            var w = ModelBinWriter.valid()
            w.version = version
            XCTAssertEqual(error(w), .unsupportedVersion(path: path, version: version))
        }
    }

    func testWrongSpec() {
        var w = ModelBinWriter.valid()
        w.spec = "TransformerSpec"
        XCTAssertEqual(error(w), .wrongSpec(path: path, spec: "TransformerSpec"))
        XCTAssertTrue(error(w)!.description.contains("TransformerSpec"))
    }

    func testBadDTypeCode() {
        for code: UInt8 in [6, 9, 255] {
            var w = ModelBinWriter.valid()
            w.variables[1].dtype = code
            XCTAssertEqual(error(w), .badDType(path: path, variable: "encoder/layer_norm/gamma", code: code))
        }
    }

    func testByteSizeMismatch() {
        var w = ModelBinWriter.valid()
        w.variables[0].declaredBytes = 20
        w.variables[0].data = Array(w.variables[0].data.prefix(20))
        XCTAssertEqual(error(w), .sizeMismatch(path: path, variable: "decoder/embeddings/weight", shape: [2, 3],
                                               dtype: "float32", bytes: 20))
        // Right byte count for another dtype: float16 values declared as float32.
        var v = ModelBinWriter.valid()
        v.variables[1].dtype = 0
        XCTAssertEqual(error(v), .sizeMismatch(path: path, variable: "encoder/layer_norm/gamma", shape: [4],
                                               dtype: "float32", bytes: 8))
    }

    func testDanglingAlias() {
        var w = ModelBinWriter.valid()
        w.aliases.append(("decoder/other", "decoder/missing"))
        XCTAssertEqual(error(w), .danglingAlias(path: path, alias: "decoder/other", target: "decoder/missing"))
    }

    func testTrailingBytes() {
        var w = ModelBinWriter.valid()
        w.trailing = [0, 1, 2]
        XCTAssertEqual(error(w), .trailingBytes(path: path, count: 3))
    }

    func testVariableLookupsCheckNameShapeAndType() throws {
        let model = try ModelFile(data: ModelBinWriter.valid().data(), path: path)
        XCTAssertThrowsError(try model.variable("nope")) {
            XCTAssertEqual($0 as? ModelFileError, .missingVariable(path: self.path, name: "nope"))
        }
        XCTAssertThrowsError(try model.floats("decoder/embeddings/weight", shape: [3, 2])) {
            XCTAssertEqual($0 as? ModelFileError, .unexpectedShape(path: self.path, variable: "decoder/embeddings/weight",
                                                                   shape: [2, 3], expected: [3, 2]))
        }
        XCTAssertThrowsError(try model.floats("encoder/num_heads", shape: [])) {
            XCTAssertEqual($0 as? ModelFileError, .unexpectedDType(path: self.path, variable: "encoder/num_heads", dtype: "int16"))
        }
    }

    func testReadingFromDiskAndFromParts() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let bytes = ModelBinWriter.valid().bytes()
        let whole = dir.appendingPathComponent("model.bin").path
        try Data(bytes).write(to: URL(fileURLWithPath: whole))
        XCTAssertEqual(try ModelFile(path: whole).variables.count, 5)

        let part1 = dir.appendingPathComponent("model.bin.part1").path
        let part2 = dir.appendingPathComponent("model.bin.part2").path
        try Data(bytes.prefix(37)).write(to: URL(fileURLWithPath: part1))
        try Data(bytes.dropFirst(37)).write(to: URL(fileURLWithPath: part2))
        let joined = try ModelFile(path: whole, parts: [part1, part2])
        XCTAssertEqual(try joined.variable("decoder/projection/weight").floats(), [1, -2, 3.5, 0, 0.25, -8])

        let missing = dir.appendingPathComponent("absent.bin").path
        XCTAssertThrowsError(try ModelFile(path: missing)) { error in
            guard case .unreadable(let p, _)? = error as? ModelFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, missing)
            XCTAssertTrue("\(error)".hasPrefix(missing + ":"))
        }
    }

    // MARK: - config.json

    func testConfigParses() throws {
        let json = #"{"alignment_heads": [[1, 0], [2, 5]], "lang_ids": [50259, 50260], "suppress_ids": [1, 2, 7],"#
            + #" "suppress_ids_begin": [220, 50256], "other": "ignored"}"#
        let config = try ModelConfig(data: Data(json.utf8), path: "config.json")
        XCTAssertEqual(config.suppressIDs, [1, 2, 7])
        XCTAssertEqual(config.suppressIDsBegin, [220, 50256])
        XCTAssertEqual(config.languageIDs, [50259, 50260])
        XCTAssertEqual(config.alignmentHeads.map { [$0.layer, $0.head] }, [[1, 0], [2, 5]])
        XCTAssertEqual(config, ModelConfig(suppressIDs: [1, 2, 7], suppressIDsBegin: [220, 50256],
                                           languageIDs: [50259, 50260], alignmentHeads: [(1, 0), (2, 5)]))
        XCTAssertNotEqual(config, ModelConfig(suppressIDs: [1, 2, 7], suppressIDsBegin: [220, 50256],
                                              languageIDs: [50259, 50260], alignmentHeads: [(1, 0), (5, 2)]))
        XCTAssertEqual(try ModelConfig(data: Data("{}".utf8), path: "c"), ModelConfig())
    }

    func testMalformedConfigIsBadConfigNamingTheFile() throws {
        let cases: [(String, String)] = [
            ("not json", "not valid JSON"),
            ("[1, 2]", "top level"),
            (#"{"suppress_ids": "1,2"}"#, "'suppress_ids'"),
            (#"{"suppress_ids": [1, 2.5]}"#, "integer"),
            (#"{"suppress_ids": [1, true]}"#, "'suppress_ids[1]'"),
            (#"{"lang_ids": [50259, null]}"#, "'lang_ids[1]'"),
            (#"{"suppress_ids_begin": [-3]}"#, "negative"),
            (#"{"alignment_heads": [[1, 0], [2]]}"#, "entry 1"),
            (#"{"alignment_heads": [1, 0]}"#, "'alignment_heads[0]'"),
        ]
        for (json, hint) in cases {
            XCTAssertThrowsError(try ModelConfig(data: Data(json.utf8), path: "/m/config.json"), json) { error in
                guard case let .badConfig(path, reason)? = error as? ModelFileError else { return XCTFail("\(json): \(error)") }
                XCTAssertEqual(path, "/m/config.json")
                XCTAssertTrue(reason.contains(hint), "\(json): '\(reason)' should mention \(hint)")
                XCTAssertTrue("\(error)".hasPrefix("/m/config.json: "))
            }
        }
        XCTAssertThrowsError(try ModelConfig(contentsOf: "/nonexistent/config.json")) { error in
            guard case .badConfig(let path, _)? = error as? ModelFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, "/nonexistent/config.json")
        }
    }

    // MARK: - Real models (`Fixtures`)

    func testRealModelsHaveTheDocumentedLayout() throws {
        for (name, d, layers, heads, vocab) in [("tiny.en", 384, 4, 6, 51864), ("base", 512, 6, 8, 51865)] {
            let dir = try Fixtures.modelDirectory(name)
            let model = try ModelFile(path: dir.modelBin)
            XCTAssertEqual(model.binaryVersion, 6)
            XCTAssertEqual(model.specName, "WhisperSpec")
            XCTAssertEqual(model.aliases, ["decoder/projection/weight": "decoder/embeddings/weight"])
            func shape(_ n: String) throws -> [Int] { try model.variable(n).shape }
            XCTAssertEqual(try shape("encoder/conv1/weight"), [d, 80, 3])
            XCTAssertEqual(try shape("encoder/conv2/weight"), [d, d, 3])
            XCTAssertEqual(try shape("encoder/position_encodings/encodings"), [1500, d])
            XCTAssertEqual(try shape("decoder/position_encodings/encodings"), [448, d])
            XCTAssertEqual(try shape("decoder/embeddings/weight"), [vocab, d])
            XCTAssertEqual(try shape("decoder/projection/weight"), [vocab, d])
            let last = layers - 1
            XCTAssertEqual(try shape("encoder/layer_\(last)/self_attention/linear_0/weight"), [3 * d, d])
            XCTAssertEqual(try shape("encoder/layer_\(last)/self_attention/linear_1/weight"), [d, d])
            XCTAssertEqual(try shape("encoder/layer_\(last)/ffn/linear_0/weight"), [4 * d, d])
            XCTAssertEqual(try shape("encoder/layer_\(last)/ffn/linear_1/weight"), [d, 4 * d])
            XCTAssertEqual(try shape("decoder/layer_\(last)/attention/linear_0/weight"), [d, d])
            XCTAssertEqual(try shape("decoder/layer_\(last)/attention/linear_1/weight"), [2 * d, d])
            XCTAssertEqual(try shape("decoder/layer_\(last)/attention/linear_2/weight"), [d, d])
            XCTAssertNil(model.variables["encoder/layer_\(layers)/ffn/linear_0/weight"])
            XCTAssertEqual(try shape("encoder/layer_norm/gamma"), [d])
            XCTAssertEqual(try shape("decoder/layer_norm/beta"), [d])
            XCTAssertEqual(try model.variable("encoder/num_heads").intValue(), heads)
            XCTAssertEqual(try model.variable("decoder/num_heads").intValue(), heads)
            XCTAssertEqual(try model.variable("decoder/embeddings/weight").dtype, .float16)

            let config = try ModelConfig(contentsOf: dir.configJSON)
            XCTAssertEqual(config.alignmentHeads.count, 8)
            XCTAssertTrue(config.alignmentHeads.allSatisfy { $0.layer < layers && $0.head < heads })
            XCTAssertEqual(config.suppressIDsBegin, [220, vocab == 51864 ? 50256 : 50257])
            XCTAssertFalse(config.suppressIDs.isEmpty)
        }
    }
}
