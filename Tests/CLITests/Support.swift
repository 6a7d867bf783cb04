import Foundation
import XCTest

/// The built `myqasr` executable and the fixtures its tests use.
enum MyQASRTool {
    /// Path of `myqasr`, built next to the test bundle.
    static func binary() throws -> String {
        var dir = Bundle.main.bundleURL
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            dir = bundle.bundleURL.deletingLastPathComponent()
        }
        let path = dir.appendingPathComponent("myqasr").path
        guard FileManager.default.isExecutableFile(atPath: path) else { throw XCTSkip("myqasr is not built at \(path)") }
        return path
    }

    /// A speech sample from `scripts/fetch-samples`: a skip when missing, a failure under
    /// MYQASR_REQUIRE_FIXTURES=1 (as `scripts/test` sets).
    static func sample(_ name: String) throws -> String {
        let environment = ProcessInfo.processInfo.environment
        let cache = environment["XDG_CACHE_HOME"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.cache")
        let path = cache + "/myqasr/samples/" + name
        guard FileManager.default.fileExists(atPath: path) else {
            let message = "speech sample missing at \(path): run scripts/fetch-samples"
            if environment["MYQASR_REQUIRE_FIXTURES"] == "1" { throw FixtureMissing(description: message) }
            throw XCTSkip(message)
        }
        return path
    }

    /// A fixture that must be present (MYQASR_REQUIRE_FIXTURES=1) is not.
    struct FixtureMissing: Error, CustomStringConvertible {
        let description: String
    }

    /// Runs `myqasr` with `arguments` (and `environment`, when given) to completion.
    static func run(_ arguments: [String], environment: [String: String]? = nil) throws
        -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try binary())
        process.arguments = arguments
        if let environment { process.environment = environment }
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
}
