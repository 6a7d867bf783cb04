import DaemonCore
import Foundation
import XCTest

final class ConfigurationTests: XCTestCase {
    private var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// The shipped config/myqasrd.toml parses and states exactly the built-in defaults.
    func testShippedFileStatesTheDefaults() throws {
        let path = repositoryRoot + "/config/myqasrd.toml"
        let parsed = try DaemonConfiguration.load(path: path)
        XCTAssertEqual(parsed, DaemonConfiguration())
        XCTAssertEqual(parsed.model, "tiny.en")
        XCTAssertNil(parsed.memoryBudget)
        XCTAssertEqual(parsed.socketMode, 0o660)
        XCTAssertEqual(parsed.wyomingTCPPort, 10300)
        XCTAssertFalse(parsed.wyomingTCPEnabled)
    }

    func testValuesAreRead() throws {
        let c = try DaemonConfiguration.parse("""
            [model]
            name = "base"
            memory_budget = "24MiB"
            threads = 4
            requantize_after = 5
            [capture]
            device = "hw:1,0"
            ring_seconds = 5
            [vad]
            start_db = 15
            stop_db = 7.5
            [sockets]
            mode = 0o640
            runtime_directory = "/tmp/x"
            [wyoming_tcp]
            enabled = true
            port = 10301
            [limits]
            max_request_bytes = "4MiB"
            max_connections_per_user = 3
            max_buffered_bytes = "64MiB"
            max_connection_bytes = "8MiB"
            request_timeout = 7.5
            [log]
            level = "debug"
            """, source: "t.toml")
        XCTAssertEqual(c.model, "base")
        XCTAssertEqual(c.memoryBudget, 24 * 1024 * 1024)
        XCTAssertEqual(c.threads, 4)
        XCTAssertEqual(c.requantizeAfter, 5)
        XCTAssertEqual(c.captureDevice, "hw:1,0")
        XCTAssertEqual(c.ringSeconds, 5)
        XCTAssertEqual(c.vadStartDB, 15)
        XCTAssertEqual(c.vadStopDB, 7.5)
        XCTAssertEqual(c.socketMode, 0o640)
        XCTAssertEqual(c.controlSocketPath(environment: [:]), "/tmp/x/control.sock")
        XCTAssertTrue(c.wyomingTCPEnabled)
        XCTAssertEqual(c.wyomingTCPPort, 10301)
        XCTAssertEqual(c.maxRequestBytes, 4 * 1024 * 1024)
        XCTAssertEqual(c.maxConnectionsPerUser, 3)
        XCTAssertEqual(c.maxBufferedBytes, 64 << 20)
        XCTAssertEqual(c.maxConnectionBytes, 8 << 20)
        XCTAssertEqual(c.requestTimeout, 7.5)
        let options = c.connectionOptions(socketGroup: 5)
        XCTAssertEqual(options.maxConnectionsPerUser, 3)
        XCTAssertEqual(options.memory.limit, 64 << 20)
        XCTAssertEqual(options.memory.connectionLimit, 8 << 20)
        XCTAssertEqual(options.requestTimeout, .milliseconds(7500))
        XCTAssertEqual(options.peerPolicy.allowedGroup, 5)
        XCTAssertEqual(c.logLevel, .debug)
        XCTAssertEqual(c.capturePipeline.segmenter.detector.startThreshold, 15)
    }

    func testBudgetZeroAndNoneMeanUnlimited() throws {
        for text in ["memory_budget = 0", "memory_budget = \"0\"", "memory_budget = \"none\""] {
            XCTAssertNil(try DaemonConfiguration.parse("[model]\n\(text)\n", source: "t").memoryBudget, text)
        }
    }

    /// Unknown keys, wrong types and out-of-range values name the key and the reason.
    func testRejectionsNameKeyAndReason() {
        let cases: [(String, String, String)] = [
            ("[model]\nnmae = \"x\"\n", "model.nmae", "unknown key"),
            ("[modle]\n", "modle", "unknown key"),
            ("[model]\nthreads = \"two\"\n", "model.threads", "must be an integer"),
            ("[model]\nthreads = 0\n", "model.threads", "out of range"),
            ("[model]\nrequantize_after = -1\n", "model.requantize_after", "out of range"),
            ("[model]\nmemory_budget = \"24 parsecs\"\n", "model.memory_budget", "is not a size"),
            ("[capture]\nring_seconds = 1000\n", "capture.ring_seconds", "out of range"),
            ("[capture]\nenabled = \"yes\"\n", "capture.enabled", "true or false"),
            ("[vad]\nstart_db = 500\n", "vad.start_db", "out of range"),
            ("[sockets]\nmode = \"0666\"\n", "sockets.mode", "others"),
            ("[sockets]\ncontrol = \"../x.sock\"\n", "sockets.control", "file name"),
            ("[sockets]\nruntime_directory = \"relative\"\n", "sockets.runtime_directory", "absolute"),
            ("[wyoming_tcp]\nport = 70000\n", "wyoming_tcp.port", "out of range"),
            ("[log]\nlevel = \"loud\"\n", "log.level", "must be one of"),
            ("model = 3\n", "model", "must be a table"),
            ("[capture]\nalsa_config_file = \"/dev/zero\"\n", "capture.alsa_config_file", "not a regular file"),
            ("[limits]\nmax_connections_per_user = 0\n", "limits.max_connections_per_user", "out of range"),
            ("[limits]\nmax_buffered_bytes = \"10KiB\"\n", "limits.max_buffered_bytes", "between 1MiB and 1TiB"),
            ("[limits]\nmax_connection_bytes = \"none\"\n", "limits.max_connection_bytes", "between 1MiB and 1TiB"),
            ("[limits]\nrequest_timeout = 0.5\n", "limits.request_timeout", "out of range"),
        ]
        for (text, key, reason) in cases {
            XCTAssertThrowsError(try DaemonConfiguration.parse(text, source: "t.toml"), key) { error in
                guard let error = error as? ConfigurationError else { return XCTFail("\(error)") }
                XCTAssertEqual(error.key, key, text)
                XCTAssertTrue(error.reason.contains(reason), "\(error)")
                XCTAssertTrue(error.description.hasPrefix("t.toml: key \(key): "), error.description)
            }
        }
    }

    func testCrossKeyChecksAndSyntaxErrors() throws {
        let dir = try ScratchDirectory()
        let path = dir.sub("c.toml")
        try "[vad]\nstart_db = 5\nstop_db = 9\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DaemonConfiguration.load(path: path)) { error in
            XCTAssertEqual((error as? ConfigurationError)?.key, "vad.stop_db")
        }
        try "[model\nname = 1\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DaemonConfiguration.load(path: path)) { error in
            XCTAssertTrue("\(error)".contains("not valid TOML"), "\(error)")
            XCTAssertTrue("\(error)".contains("line 1"), "\(error)")
        }
        try "[limits]\nmax_buffered_bytes = \"32MiB\"\nmax_connection_bytes = \"64MiB\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DaemonConfiguration.load(path: path)) { error in
            XCTAssertEqual((error as? ConfigurationError)?.key, "limits.max_connection_bytes")
        }
        try "[sockets]\ngroup = \"no-such-group-myqasr\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DaemonConfiguration.load(path: path)) { error in
            XCTAssertEqual((error as? ConfigurationError)?.key, "sockets.group")
        }
    }

    /// A table header with control characters, or with characters outside ASCII, made TOMLKit's parser abort the
    /// process (found by scripts/fuzz, kept in Fuzz/Corpus/config): refused first, as TOML refuses them.
    func testControlCharactersAreRefusedBeforeTheTOMLParserSeesThem() {
        let text = "[\u{01}\u{00}\u{00}\u{08}model]\nname = \"base\"\n"
        XCTAssertThrowsError(try DaemonConfiguration.parse(text, source: "t.toml")) { error in
            XCTAssertEqual("\(error)", "t.toml: not valid TOML: control character U+0001 at line 1, column 2")
        }
        XCTAssertThrowsError(try DaemonConfiguration.parse("[log]\nlevel = \"debug\u{7F}\"\n", source: "t.toml")) { error in
            XCTAssertTrue("\(error)".contains("U+007F at line 2, column 15"), "\(error)")
        }
        XCTAssertNoThrow(try DaemonConfiguration.parse("[log]\r\n\tlevel = \"debug\"\r\n", source: "t.toml"))
        // Outside ASCII where a key is expected (toml++ asserted on it); in strings and comments it is fine.
        XCTAssertThrowsError(try DaemonConfiguration.parse("[\u{FFFD}\u{FFFD}]\n", source: "t.toml")) { error in
            XCTAssertEqual("\(error)", "t.toml: not valid TOML: character U+FFFD outside a string or comment at line 1, column 2")
        }
        // A header that ends where its name should be ("[" and a newline: found by scripts/fuzz 600).
        for header in ["[;i]\n", "[[ ;]]\n", "  [\t=]\n", "[\n`\n", "[[ \r\n", "["] {
            XCTAssertThrowsError(try DaemonConfiguration.parse(header, source: "t.toml"), header) { error in
                XCTAssertTrue("\(error)".contains("a table name must start with"), "\(error)")
            }
        }
        let fine = try? DaemonConfiguration.parse(
            "# modèle\n[capture]\ndevice = \"micro \\\"é\\\"\" # é\nalsa_config = \'\'\'\npcm.é { }\n\'\'\'\n[model]\nname = 'ü'\n",
            source: "t.toml")
        XCTAssertEqual(fine?.captureDevice, "micro \"é\"")
        XCTAssertEqual(fine?.model, "ü")
        XCTAssertEqual(fine?.alsaConfigurationText, "pcm.é { }\n")
    }

    func testOverridesAndSearchPath() throws {
        let c = try DaemonConfiguration.load(
            path: nil, overrides: ConfigurationOverrides(model: "base", threads: 3, memoryBudget: "50MB", captureEnabled: false))
        XCTAssertEqual(c.model, "base")
        XCTAssertEqual(c.threads, 3)
        XCTAssertEqual(c.memoryBudget, 50_000_000)
        XCTAssertFalse(c.captureEnabled)
        XCTAssertThrowsError(try DaemonConfiguration.load(path: nil, overrides: ConfigurationOverrides(memoryBudget: "lots"))) {
            XCTAssertEqual(($0 as? ConfigurationError)?.key, "--budget")
        }
        XCTAssertEqual(DaemonConfiguration.searchPaths(environment: ["CONFIGURATION_DIRECTORY": "/etc/myqasr-x"]),
                       ["/etc/myqasr-x/myqasrd.toml", "/etc/myqasr/myqasrd.toml"])
        XCTAssertEqual(DaemonConfiguration().resolvedRuntimeDirectory(environment: ["RUNTIME_DIRECTORY": "/run/q"]), "/run/q")
        XCTAssertEqual(DaemonConfiguration().resolvedRuntimeDirectory(environment: [:]), "/run/myqasr")
        XCTAssertEqual(DaemonConfiguration().resolvedStateDirectory(environment: ["STATE_DIRECTORY": "/var/lib/q"]), "/var/lib/q")
        XCTAssertThrowsError(try DaemonConfiguration.locate(explicit: "/nonexistent/myqasrd.toml")) {
            XCTAssertTrue("\($0)".contains("no such file"))
        }
    }
}
