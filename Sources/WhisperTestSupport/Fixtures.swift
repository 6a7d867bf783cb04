import Foundation
import WhisperEngine
import XCTest

/// Real models and speech for integration tests, fetched by `scripts/setup`
/// (`scripts/fetch-models`, `scripts/fetch-samples`), never committed.
/// Missing fixtures skip the test, unless MYQASR_REQUIRE_FIXTURES=1 (as `scripts/test` sets),
/// where they fail it.
public enum Fixtures {
    /// Whether missing fixtures fail rather than skip (MYQASR_REQUIRE_FIXTURES=1).
    public static var required: Bool { ProcessInfo.processInfo.environment["MYQASR_REQUIRE_FIXTURES"] == "1" }

    /// Where `scripts/fetch-samples` puts the speech samples.
    public static var samplesDirectory: String {
        let env = ProcessInfo.processInfo.environment
        let cache = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")
        return cache + "/myqasr/samples"
    }

    private static let cacheLock = NSLock()
    nonisolated(unsafe) private static var models: [String: WhisperModel] = [:]

    /// A loaded model (cached across tests), or a skip / failure when it is not installed.
    public static func model(_ name: String) throws -> WhisperModel {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        if let m = models[name] { return m }
        do {
            let m = try WhisperModel.load(name)
            models[name] = m
            return m
        } catch let error as ModelLocatorError {
            throw missing("model \(name): \(error)")
        }
    }

    /// Path of a fetched sample such as `jfk.wav`, or a skip / failure when absent.
    public static func sample(_ file: String) throws -> String {
        let path = samplesDirectory + "/" + file
        guard FileManager.default.fileExists(atPath: path) else {
            throw missing("sample \(path) is missing; run scripts/fetch-samples")
        }
        return path
    }

    /// Path of an installed command-line tool, or a skip / failure when absent.
    public static func tool(_ name: String) throws -> String {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let path = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw missing("\(name) is not installed; run scripts/setup")
    }

    private static func missing(_ message: String) -> Error {
        required ? FixtureError(message: message) : XCTSkip(message)
    }

    /// A fixture that must be present is not.
    public struct FixtureError: Error, CustomStringConvertible {
        /// What is missing.
        public let message: String
        /// The message with the reason it is an error.
        public var description: String { "fixture missing with MYQASR_REQUIRE_FIXTURES=1: \(message)" }
    }
}

/// Lower-case, punctuation removed, single spaces: the comparison the engine issue asks for.
public func plainWords(_ text: String) -> String {
    let kept = text.lowercased().unicodeScalars.map { CharacterSet.alphanumerics.contains($0) || $0 == "'" ? Character($0) : " " }
    return String(kept).split(separator: " ").joined(separator: " ")
}
