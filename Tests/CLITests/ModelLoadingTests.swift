import Foundation
import XCTest

/// Every `myqasr` subcommand resolves `--model` the same way: `transcribe` and `eval` take a `.myq` file,
/// `stats` and `quantize` refuse one with a message naming what they need.
final class ModelLoadingTests: XCTestCase {
    private var binary: String {
        get throws {
            var dir = Bundle.main.bundleURL
            for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
                dir = bundle.bundleURL.deletingLastPathComponent()
            }
            let path = dir.appendingPathComponent("myqasr").path
            guard FileManager.default.isExecutableFile(atPath: path) else { throw XCTSkip("myqasr is not built at \(path)") }
            return path
        }
    }

    private func sample(_ name: String) throws -> String {
        let environment = ProcessInfo.processInfo.environment
        let cache = environment["XDG_CACHE_HOME"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.cache")
        let path = cache + "/myqasr/samples/" + name
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("speech sample missing at \(path): run scripts/fetch-samples")
        }
        return path
    }

    private func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try binary)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Read stderr on another thread so neither pipe can fill up and block the child.
        var errData = Data()
        let errDone = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            errDone.signal()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        errDone.wait()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    func testTranscribeTakesAMyqFileAndFloatOnlyCommandsRefuseIt() throws {
        let jfk = try sample("jfk.wav")
        let calibration = try sample("goforward.wav")
        let directory = NSTemporaryDirectory() + "myqasr-myq-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let myq = directory + "/u4.myq"

        var (status, out, err) = try run(["quantize", "--model", "tiny.en", "--uniform", "4",
                                          "--calibration", calibration, "--out", myq])
        if err.contains("scripts/fetch-models") { throw XCTSkip("tiny.en is not installed: \(err)") }
        XCTAssertEqual(status, 0, err)

        (status, out, err) = try run(["transcribe", "--model", myq, "--beam-size", "1", jfk])
        XCTAssertEqual(status, 0, err)
        let words = String(out.lowercased().map { $0.isLetter ? $0 : " " }).split(separator: " ").joined(separator: " ")
        XCTAssertTrue(words.contains("ask not what your country can do for you"), out)

        (status, out, err) = try run(["stats", "--model", myq, "--out", directory + "/s.myqs", jfk])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("statistics need the full-precision model; \(myq) is a quantized .myq file"), err)

        (status, out, err) = try run(["quantize", "--model", myq, "--uniform", "4", "--calibration", calibration,
                                      "--out", directory + "/again.myq"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("need the full-precision model; \(myq) is a quantized .myq file"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: directory + "/again.myq"))
    }
}
