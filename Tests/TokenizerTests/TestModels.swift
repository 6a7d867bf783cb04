import Foundation
import XCTest

/// Finds an installed model directory the way `ModelLocator` does (this test target cannot
/// depend on WhisperEngine): `$MYQASR_MODELS_DIR`, else `$XDG_DATA_HOME/myqasr/models`,
/// else `~/.local/share/myqasr/models`.
enum TestModels {
    static func directory(_ name: String) throws -> String {
        let env = ProcessInfo.processInfo.environment
        let root: String
        if let dir = env["MYQASR_MODELS_DIR"], !dir.isEmpty {
            root = dir
        } else if let xdg = env["XDG_DATA_HOME"], !xdg.isEmpty {
            root = xdg + "/myqasr/models"
        } else {
            root = NSHomeDirectory() + "/.local/share/myqasr/models"
        }
        let dir = root + "/" + name
        for file in ["vocabulary.txt", "tokenizer.json"] where !FileManager.default.fileExists(atPath: dir + "/" + file) {
            throw XCTSkip("model '\(name)' is not installed at \(dir); run scripts/fetch-models \(name)")
        }
        return dir
    }
}
