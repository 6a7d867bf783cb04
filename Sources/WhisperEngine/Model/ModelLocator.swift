import Foundation

/// The files of one installed CTranslate2 Whisper model.
public struct ModelDirectory: Sendable, Equatable {
    /// Short name: `tiny.en`, `base`, or the directory's last path component.
    public let name: String
    /// The directory holding the files.
    public let path: String
    /// `model.bin`, the CTranslate2 weights.
    public let modelBin: String
    /// `config.json`, see `ModelConfig`.
    public let configJSON: String
    /// `vocabulary.txt`, one token per line.
    public let vocabulary: String
    /// `tokenizer.json` (BPE merges), nil when the directory has none; the tokenizer then
    /// derives the merges from the vocabulary.
    public let tokenizerJSON: String?

    /// The files a usable model directory must hold.
    public static let requiredFiles = ["model.bin", "config.json", "vocabulary.txt"]

    /// Describes the model files under `path`; `tokenizerJSON` is set only when that file exists.
    public init(path: String, name: String? = nil) {
        let dir = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        self.path = dir
        self.name = name ?? URL(fileURLWithPath: dir).lastPathComponent
        modelBin = dir + "/model.bin"
        configJSON = dir + "/config.json"
        vocabulary = dir + "/vocabulary.txt"
        let tokenizer = dir + "/tokenizer.json"
        tokenizerJSON = FileManager.default.fileExists(atPath: tokenizer) ? tokenizer : nil
    }

    /// Required files that are missing, by file name.
    public func missingFiles() -> [String] {
        ModelDirectory.requiredFiles.filter { !FileManager.default.fileExists(atPath: path + "/" + $0) }
    }
}

/// Why a model could not be located.
public enum ModelLocatorError: Error, CustomStringConvertible, Equatable {
    /// A known model (`tiny.en`, `base`) is not installed (completely) under the models root.
    case notInstalled(name: String, directory: String, missing: [String], fetchCommand: String)
    /// A directory given by path lacks required files.
    case incompleteDirectory(path: String, missing: [String])
    /// Neither a known model name, an installed model, nor an existing directory or file.
    case unknownModel(name: String, root: String)
    /// A file that is not a quantized model file (it does not start with `ModelSource.quantizedMagic`).
    case notAModel(path: String)
    /// A quantized model file where a model directory (float weights) is needed.
    case quantizedModelFile(path: String)

    /// A one-line explanation that says how to fix it.
    public var description: String {
        switch self {
        case let .notInstalled(name, directory, missing, fetchCommand):
            return "model '\(name)' is not installed: \(directory) lacks \(missing.joined(separator: ", ")); "
                + "fetch it with: \(fetchCommand)"
        case let .incompleteDirectory(path, missing):
            return "\(path) is not a CTranslate2 Whisper model directory: it lacks \(missing.joined(separator: ", "))"
        case let .unknownModel(name, root):
            return "unknown model '\(name)': not one of \(ModelLocator.knownModels.joined(separator: ", ")), "
                + "not installed under \(root), and not a directory or file"
        case let .notAModel(path):
            return "\(path) is not a model: neither a CTranslate2 Whisper model directory nor a quantized model file "
                + "(made by `myqasr quantize`)"
        case let .quantizedModelFile(path):
            return "\(path) is a quantized model file; this needs a model directory with float weights "
                + "(\(ModelLocator.knownModels.joined(separator: ", ")) or a CTranslate2 directory)"
        }
    }
}

/// Finds models: `tiny.en` and `base` live at `<root>/<name>/`, anything else containing a `/`
/// (or naming an existing directory or file) is a path to a model directory or to a quantized
/// model file, told apart by content (`ModelSource`).
///
/// The root is `$MYQASR_MODELS_DIR`, else `$XDG_DATA_HOME/myqasr/models`, else
/// `~/.local/share/myqasr/models`, the same rule `scripts/fetch-models` uses.
public struct ModelLocator: Sendable {
    /// Models `scripts/fetch-models` can install.
    public static let knownModels = ["tiny.en", "base"]

    /// Directory holding one sub-directory per installed model.
    public let root: String
    /// True when `root` came from the environment rule rather than the caller.
    private let rootIsDefault: Bool

    /// A locator over `root`, or over the default root computed from `environment`.
    public init(root: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let root {
            self.root = ModelLocator.expandTilde(root, environment: environment)
            rootIsDefault = false
        } else {
            self.root = ModelLocator.defaultRoot(environment: environment)
            rootIsDefault = true
        }
    }

    /// `$MYQASR_MODELS_DIR`, else `$XDG_DATA_HOME/myqasr/models`, else `$HOME/.local/share/myqasr/models`.
    public static func defaultRoot(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let dir = environment["MYQASR_MODELS_DIR"], !dir.isEmpty { return expandTilde(dir, environment: environment) }
        if let xdg = environment["XDG_DATA_HOME"], !xdg.isEmpty { return xdg + "/myqasr/models" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.local/share/myqasr/models"
    }

    /// The directory a model called `name` is installed in.
    public func directory(for name: String) -> String { root + "/" + name }

    /// The command that installs `name` where this locator looks.
    public func fetchCommand(for name: String) -> String {
        rootIsDefault ? "scripts/fetch-models \(name)" : "scripts/fetch-models --dir \(root) \(name)"
    }

    /// Resolves `tiny.en`, `base`, another installed name, or a directory path to its files,
    /// checking that the required files exist; a quantized model file is refused
    /// (`quantizedModelFile`): use `source(for:)` where one is welcome.
    public func resolve(_ nameOrPath: String) throws -> ModelDirectory {
        switch try source(for: nameOrPath) {
        case let .float(directory): return directory
        case let .quantized(path): throw ModelLocatorError.quantizedModelFile(path: path)
        }
    }

    /// What `nameOrPath` names: `tiny.en`, `base`, another installed name or a directory path
    /// (`.float`, its required files checked), or a file that starts with the quantized model
    /// magic (`.quantized`), whatever the file is called. Any other file is `notAModel`.
    public func source(for nameOrPath: String) throws -> ModelSource {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        let looksLikePath = nameOrPath.contains("/") || nameOrPath == "." || nameOrPath == ".." || nameOrPath.hasPrefix("~")
        if !looksLikePath && !nameOrPath.isEmpty {
            let installed = directory(for: nameOrPath)
            let known = ModelLocator.knownModels.contains(nameOrPath)
            if known || (fm.fileExists(atPath: installed, isDirectory: &isDir) && isDir.boolValue) {
                let dir = ModelDirectory(path: installed, name: nameOrPath)
                let missing = dir.missingFiles()
                guard missing.isEmpty else {
                    if known {
                        throw ModelLocatorError.notInstalled(name: nameOrPath, directory: installed, missing: missing,
                                                             fetchCommand: fetchCommand(for: nameOrPath))
                    }
                    throw ModelLocatorError.incompleteDirectory(path: installed, missing: missing)
                }
                return .float(dir)
            }
        }
        let path = ModelLocator.expandTilde(nameOrPath, environment: ProcessInfo.processInfo.environment)
        guard !path.isEmpty, fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelLocatorError.unknownModel(name: nameOrPath, root: root)
        }
        guard isDir.boolValue else {
            guard ModelSource.isQuantizedModelFile(atPath: path) else { throw ModelLocatorError.notAModel(path: path) }
            return .quantized(path: path)
        }
        let dir = ModelDirectory(path: URL(fileURLWithPath: path).standardizedFileURL.path)
        let missing = dir.missingFiles()
        guard missing.isEmpty else { throw ModelLocatorError.incompleteDirectory(path: dir.path, missing: missing) }
        return .float(dir)
    }

    private static func expandTilde(_ path: String, environment: [String: String]) -> String {
        guard path == "~" || path.hasPrefix("~/") else { return path }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + path.dropFirst()
    }
}
