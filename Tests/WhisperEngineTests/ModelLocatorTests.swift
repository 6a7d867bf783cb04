import Foundation
import XCTest
@testable import WhisperEngine

final class ModelLocatorTests: XCTestCase {
    private var root = ""

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("ml-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: root)
    }

    /// Creates a model directory with the given files (empty contents).
    @discardableResult
    private func makeModel(_ dir: String, files: [String] = ["model.bin", "config.json", "vocabulary.txt", "tokenizer.json"]) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for f in files { XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/" + f, contents: Data())) }
        return dir
    }

    func testDefaultRootFollowsEnvironment() {
        XCTAssertEqual(ModelLocator.defaultRoot(environment: ["MYQASR_MODELS_DIR": "/m", "XDG_DATA_HOME": "/x", "HOME": "/h"]), "/m")
        XCTAssertEqual(ModelLocator.defaultRoot(environment: ["MYQASR_MODELS_DIR": "", "XDG_DATA_HOME": "/x", "HOME": "/h"]),
                       "/x/myqasr/models")
        XCTAssertEqual(ModelLocator.defaultRoot(environment: ["HOME": "/h"]), "/h/.local/share/myqasr/models")
        XCTAssertEqual(ModelLocator.defaultRoot(environment: ["MYQASR_MODELS_DIR": "~/models", "HOME": "/h"]), "/h/models")
        XCTAssertEqual(ModelLocator(environment: ["XDG_DATA_HOME": "/x"]).root, "/x/myqasr/models")
        XCTAssertEqual(ModelLocator(root: "/r", environment: ["MYQASR_MODELS_DIR": "/m"]).root, "/r")
    }

    func testResolvesKnownNamesUnderTheRoot() throws {
        try makeModel(root + "/tiny.en")
        let dir = try ModelLocator(environment: ["MYQASR_MODELS_DIR": root]).resolve("tiny.en")
        XCTAssertEqual(dir.name, "tiny.en")
        XCTAssertEqual(dir.path, root + "/tiny.en")
        XCTAssertEqual(dir.modelBin, root + "/tiny.en/model.bin")
        XCTAssertEqual(dir.configJSON, root + "/tiny.en/config.json")
        XCTAssertEqual(dir.vocabulary, root + "/tiny.en/vocabulary.txt")
        XCTAssertEqual(dir.tokenizerJSON, root + "/tiny.en/tokenizer.json")
    }

    func testResolvesOtherInstalledNamesAndPaths() throws {
        try makeModel(root + "/small-custom", files: ["model.bin", "config.json", "vocabulary.txt"])
        let locator = ModelLocator(root: root)
        let byName = try locator.resolve("small-custom")
        XCTAssertEqual(byName.name, "small-custom")
        XCTAssertNil(byName.tokenizerJSON, "tokenizer.json is optional")

        let elsewhere = try makeModel(root + "/elsewhere/my-model")
        let byPath = try locator.resolve(elsewhere + "/")
        XCTAssertEqual(byPath.name, "my-model")
        XCTAssertEqual(byPath.path, elsewhere)
        XCTAssertEqual(byPath.modelBin, elsewhere + "/model.bin")
        XCTAssertEqual(byPath, ModelDirectory(path: elsewhere))
        XCTAssertEqual(try locator.resolve(root + "/elsewhere/../elsewhere/my-model").path, elsewhere)
    }

    func testMissingKnownModelSaysWhichCommandFetchesIt() {
        let locator = ModelLocator(environment: ["MYQASR_MODELS_DIR": root])
        for name in ["tiny.en", "base"] {
            XCTAssertThrowsError(try locator.resolve(name)) { error in
                XCTAssertEqual(error as? ModelLocatorError, .notInstalled(
                    name: name, directory: root + "/" + name, missing: ["model.bin", "config.json", "vocabulary.txt"],
                    fetchCommand: "scripts/fetch-models \(name)"))
                XCTAssertTrue("\(error)".hasSuffix("fetch it with: scripts/fetch-models \(name)"), "\(error)")
                XCTAssertTrue("\(error)".contains(root + "/" + name))
            }
        }
        // A partial install names what is missing; an explicit root is passed on to the script.
        XCTAssertNoThrow(try makeModel(root + "/base", files: ["config.json", "vocabulary.txt"]))
        XCTAssertThrowsError(try ModelLocator(root: root).resolve("base")) { error in
            XCTAssertEqual(error as? ModelLocatorError, .notInstalled(
                name: "base", directory: root + "/base", missing: ["model.bin"],
                fetchCommand: "scripts/fetch-models --dir \(root) base"))
        }
    }

    func testIncompleteAndUnknownDirectories() throws {
        let partial = try makeModel(root + "/partial", files: ["model.bin"])
        XCTAssertThrowsError(try ModelLocator(root: root).resolve(partial)) { error in
            XCTAssertEqual(error as? ModelLocatorError,
                           .incompleteDirectory(path: partial, missing: ["config.json", "vocabulary.txt"]))
            XCTAssertTrue("\(error)".contains("lacks config.json, vocabulary.txt"))
        }
        XCTAssertThrowsError(try ModelLocator(root: root).resolve("large-v9")) { error in
            XCTAssertEqual(error as? ModelLocatorError, .unknownModel(name: "large-v9", root: root))
            XCTAssertTrue("\(error)".contains("tiny.en, base"))
        }
        XCTAssertThrowsError(try ModelLocator(root: root).resolve(root + "/absent")) { error in
            XCTAssertEqual(error as? ModelLocatorError, .unknownModel(name: root + "/absent", root: root))
        }
    }

    /// A model's kind is told by content: a file that starts with the quantized model magic is a quantized
    /// model whatever it is called, and a file that does not is no model even when it is called `.myq`.
    func testTellsAModelsKindByContentNotByName() throws {
        let locator = ModelLocator(root: root)
        let quantized = root + "/u4.q"
        XCTAssertTrue(FileManager.default.createFile(atPath: quantized,
                                                     contents: Data(ModelSource.quantizedMagic + [3, 0, 0, 0])))
        XCTAssertEqual(try locator.source(for: quantized), .quantized(path: quantized))
        XCTAssertTrue(try locator.source(for: quantized).isQuantized)
        XCTAssertThrowsError(try locator.resolve(quantized)) { error in
            XCTAssertEqual(error as? ModelLocatorError, .quantizedModelFile(path: quantized))
            XCTAssertTrue("\(error)".contains("is a quantized model file"), "\(error)")
        }

        for (name, contents) in [("fake.myq", Data("MYQSTATS and more".utf8)), ("short.myq", Data("MYQ".utf8)),
                                 ("empty.myq", Data())] {
            let path = root + "/" + name
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: contents))
            XCTAssertThrowsError(try locator.source(for: path), name) { error in
                XCTAssertEqual(error as? ModelLocatorError, .notAModel(path: path))
                XCTAssertTrue("\(error)".contains("\(path) is not a model"), "\(error)")
            }
        }

        let directory = try makeModel(root + "/float-model")
        XCTAssertEqual(try locator.source(for: directory), .float(ModelDirectory(path: directory)))
        XCTAssertFalse(try locator.source(for: directory).isQuantized)
        try makeModel(root + "/tiny.en")
        XCTAssertEqual(try locator.source(for: "tiny.en"), .float(try locator.resolve("tiny.en")))
    }
}
