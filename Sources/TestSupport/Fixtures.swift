import Foundation
import WhisperEngine
import XCTest

/// What integration tests need from outside the repository, under one policy: real models
/// (`scripts/fetch-models`), speech samples (`scripts/fetch-samples`) and the tools `scripts/setup`
/// installs, never committed. A missing fixture skips the test, unless MYQASR_REQUIRE_FIXTURES=1
/// (as `scripts/test` sets), where it fails it. Every test target asks for its fixtures here, so no
/// test can skip for a missing fixture when the flag is set.
public enum Fixtures {
    /// Whether missing fixtures fail rather than skip (MYQASR_REQUIRE_FIXTURES=1).
    public static var required: Bool { ProcessInfo.processInfo.environment["MYQASR_REQUIRE_FIXTURES"] == "1" }

    /// The error for a missing fixture: a skip, or under MYQASR_REQUIRE_FIXTURES=1 a failure.
    public static func missing(_ message: String) -> Error {
        required ? FixtureError(message: message) : XCTSkip(message)
    }

    /// A fixture that must be present is not.
    public struct FixtureError: Error, CustomStringConvertible {
        /// What is missing.
        public let message: String
        /// The message with the reason it is an error.
        public var description: String { "fixture missing with MYQASR_REQUIRE_FIXTURES=1: \(message)" }
    }

    // MARK: Models

    /// An installed model's files (`ModelLocator`: `tiny.en`, `base`, under the models root).
    public static func modelDirectory(_ name: String) throws -> ModelDirectory {
        do {
            return try ModelLocator().resolve(name)
        } catch let error as ModelLocatorError {
            throw missing("model \(name): \(error)")
        }
    }

    private static let cacheLock = NSLock()
    nonisolated(unsafe) private static var models: [String: WhisperModel] = [:]   // guarded by cacheLock

    /// A loaded model (cached across tests).
    public static func model(_ name: String) throws -> WhisperModel {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        if let m = models[name] { return m }
        let m = try WhisperModel.load(directory: try modelDirectory(name))
        models[name] = m
        return m
    }

    // MARK: Samples and tools

    /// Where `scripts/fetch-samples` puts the speech samples.
    public static var samplesDirectory: String {
        let env = ProcessInfo.processInfo.environment
        let cache = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")
        return cache + "/myqasr/samples"
    }

    /// Path of a fetched sample such as `jfk.wav`.
    public static func sample(_ file: String) throws -> String {
        let path = samplesDirectory + "/" + file
        guard FileManager.default.fileExists(atPath: path) else {
            throw missing("speech sample \(path) is missing: run scripts/fetch-samples")
        }
        return path
    }

    /// Path of a command-line tool `scripts/setup` installs, searched on PATH (then /usr/bin, /bin).
    public static func tool(_ name: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":") + ["/usr/bin", "/bin"] {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw missing("\(name) is not installed: run scripts/setup")
    }

    // MARK: Built products

    /// The directory holding the built products (next to the test bundle).
    public static var productsDirectory: URL {
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            return bundle.bundleURL.deletingLastPathComponent()
        }
        return Bundle.main.bundleURL
    }

    /// Path of a built executable of this package (`myqasr`, `myqasrd`, `myqasrctl`). Not a fixture:
    /// the test build builds them, so one that is missing fails the test whatever the flag says.
    /// `MYQASR_TEST_BINARIES=DIR` takes them from DIR instead (to run a test against another build, such as the
    /// code before a fix).
    public static func binary(_ name: String) throws -> String {
        let directory = ProcessInfo.processInfo.environment["MYQASR_TEST_BINARIES"].map { URL(fileURLWithPath: $0) }
        let path = (directory ?? productsDirectory).appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: path) else { throw NotBuilt(path: path) }
        return path
    }

    /// A product of this package that should have been built with the tests is not there.
    public struct NotBuilt: Error, CustomStringConvertible {
        /// Where it was looked for.
        public let path: String
        /// One line.
        public var description: String { "\(path) is not built (swift build --build-tests builds it)" }
    }
}

/// Lower-case, punctuation removed, single spaces: the comparison the engine issue asks for.
public func plainWords(_ text: String) -> String {
    let kept = text.lowercased().unicodeScalars.map { CharacterSet.alphanumerics.contains($0) || $0 == "'" ? Character($0) : " " }
    return String(kept).split(separator: " ").joined(separator: " ")
}
