import Foundation
import XCTest

/// scripts/install staged into a DESTDIR with the built binaries (no model download).
final class InstallScriptTests: XCTestCase {
    private var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    func testStagedInstallLayout() throws {
        let dest = try ScratchDirectory()
        let (status, out, err) = try runTool("/bin/bash", [
            repositoryRoot + "/scripts/install", "--destdir", dest.path, "--prefix", "/opt/myqasr",
            "--bin-dir", Fixtures.productsDirectory.path, "--no-model",
        ])
        XCTAssertEqual(status, 0, out + err)
        let fm = FileManager.default
        for binary in ["myqasrd", "myqasrctl"] {
            XCTAssertTrue(fm.isExecutableFile(atPath: dest.path + "/opt/myqasr/bin/" + binary), binary)
        }
        let service = try String(contentsOfFile: dest.path + "/opt/myqasr/lib/systemd/system/myqasrd.service", encoding: .utf8)
        XCTAssertTrue(service.contains("ExecStart=/opt/myqasr/bin/myqasrd\n"), "ExecStart rewritten for the prefix")
        XCTAssertFalse(service.contains("/usr/local"), "no path of another prefix is left")
        XCTAssertTrue(fm.fileExists(atPath: dest.path + "/opt/myqasr/lib/systemd/system/myqasrd.socket"))
        XCTAssertTrue(fm.fileExists(atPath: dest.path + "/opt/myqasr/share/doc/myqasr/daemon.md"))
        let config = dest.path + "/etc/myqasr/myqasrd.toml"
        let text = try String(contentsOfFile: config, encoding: .utf8)
        XCTAssertTrue(text.contains("name = \"/opt/myqasr/share/myqasr/models/tiny.en\""), "model in the system location")
        XCTAssertTrue(text.contains("group = \"myqasr\""))

        // An existing configuration is kept.
        try "# edited by the admin\n".write(toFile: config, atomically: true, encoding: .utf8)
        let (again, _, _) = try runTool("/bin/bash", [
            repositoryRoot + "/scripts/install", "--destdir", dest.path, "--prefix", "/opt/myqasr",
            "--bin-dir", Fixtures.productsDirectory.path, "--no-model",
        ])
        XCTAssertEqual(again, 0)
        XCTAssertEqual(try String(contentsOfFile: config, encoding: .utf8), "# edited by the admin\n")
    }
}
