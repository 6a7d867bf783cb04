import Foundation

/// Why a manifest could not be read.
public enum ManifestError: Error, Equatable, CustomStringConvertible {
    /// The file could not be read (missing, unreadable, not UTF-8).
    case unreadable(path: String, reason: String)
    /// The file has no header line.
    case empty(path: String)
    /// The header lacks a required column.
    case missingColumn(path: String, column: String)
    /// A data row is malformed; `line` counts from 1, the header being line 1.
    case malformedRow(path: String, line: Int, reason: String)

    /// A one-line message naming the file and, for a bad row, its line.
    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read manifest \(path): \(reason)"
        case .empty(let path): return "manifest \(path) is empty (expected a header line)"
        case .missingColumn(let path, let column): return "manifest \(path): header has no '\(column)' column"
        case .malformedRow(let path, let line, let reason): return "manifest \(path), line \(line): \(reason)"
        }
    }
}

/// One utterance of a corpus manifest.
public struct ManifestEntry: Sendable, Equatable {
    /// Speaker or synthetic voice, e.g. `piper_joe`, `librivox`, `jfk`.
    public var voice: String
    /// Speaker gender as written in the manifest (`male`, `female`, `unknown`).
    public var gender: String
    /// Accent as written in the manifest (`US`, …).
    public var accent: String
    /// Acoustic condition: `clean`, `reverb`, `noise`, `room`.
    public var condition: String
    /// Audio path as written in the manifest, relative to the manifest's folder.
    public var file: String
    /// The audio path resolved against the manifest's folder.
    public var audioURL: URL
    /// Audio duration in seconds.
    public var duration: Double
    /// The exact reference transcript.
    public var text: String
    /// Unique utterance id.
    public var uttID: String
    /// Id of the sentence spoken (shared across voices for `subset == "shared"`).
    public var sentenceID: String
    /// `shared` (every voice speaks it) or `own`.
    public var subset: String
    /// `calib` (unlabelled calibration audio) or `test` (scored).
    public var split: String
    /// Columns beyond the required ones (e.g. the corpus's `engine`), by header name.
    public var extra: [String: String]
}

/// The corpus manifest: a UTF-8 TSV with a header line naming at least the columns
/// voice, gender, accent, condition, file, duration, text, utt_id, sentence_id, subset, split
/// (in any order; more columns are kept in ``ManifestEntry/extra``). Written by
/// `../shared/corpus/make_corpus.sh` and `scripts/fetch-samples`.
public struct Manifest: Sendable, Equatable {
    /// The required columns.
    public static let requiredColumns = ["voice", "gender", "accent", "condition", "file", "duration",
                                         "text", "utt_id", "sentence_id", "subset", "split"]

    /// The utterances, in file order.
    public var entries: [ManifestEntry]
    /// The folder that relative `file` paths are resolved against.
    public var baseDirectory: URL

    /// Creates a manifest from entries.
    public init(entries: [ManifestEntry], baseDirectory: URL) {
        self.entries = entries
        self.baseDirectory = baseDirectory
    }

    /// Reads the manifest at `url`; `file` paths resolve against its folder.
    /// - Throws: ``ManifestError``.
    public init(contentsOf url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw ManifestError.unreadable(path: url.path, reason: error.localizedDescription)
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ManifestError.unreadable(path: url.path, reason: "not valid UTF-8")
        }
        try self.init(tsv: text, baseDirectory: url.deletingLastPathComponent(), path: url.path)
    }

    /// Parses manifest text. `path` only names the source in error messages.
    /// - Throws: ``ManifestError``.
    public init(tsv: String, baseDirectory: URL, path: String = "<string>") throws {
        // "\r\n" is one Character in Swift, so unify line ends before splitting.
        var lines = tsv.replacingOccurrences(of: "\r\n", with: "\n").components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        guard let headerLine = lines.first, !headerLine.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw ManifestError.empty(path: path)
        }
        let header = Self.fields(headerLine)
        var column: [String: Int] = [:]
        for (i, name) in header.enumerated() where column[name] == nil { column[name] = i }
        for name in Self.requiredColumns where column[name] == nil {
            throw ManifestError.missingColumn(path: path, column: name)
        }
        var entries: [ManifestEntry] = []
        for (offset, line) in lines.enumerated().dropFirst() {
            let lineNumber = offset + 1
            if line.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { continue }
            let f = Self.fields(line)
            guard f.count == header.count else {
                throw ManifestError.malformedRow(
                    path: path, line: lineNumber,
                    reason: "\(f.count) tab-separated fields, the header has \(header.count)")
            }
            func value(_ name: String) -> String { f[column[name]!] }
            let durationText = value("duration")
            guard let duration = Double(durationText), duration.isFinite, duration >= 0 else {
                throw ManifestError.malformedRow(path: path, line: lineNumber,
                                                 reason: "duration '\(durationText)' is not a number of seconds")
            }
            let file = value("file")
            guard !file.isEmpty else {
                throw ManifestError.malformedRow(path: path, line: lineNumber, reason: "empty 'file' field")
            }
            guard !value("utt_id").isEmpty else {
                throw ManifestError.malformedRow(path: path, line: lineNumber, reason: "empty 'utt_id' field")
            }
            var extra: [String: String] = [:]
            for (i, name) in header.enumerated() where !Self.requiredColumns.contains(name) {
                extra[name] = f[i]
            }
            let audioURL = file.hasPrefix("/")
                ? URL(fileURLWithPath: file)
                : baseDirectory.appendingPathComponent(file)
            entries.append(ManifestEntry(
                voice: value("voice"), gender: value("gender"), accent: value("accent"),
                condition: value("condition"), file: file, audioURL: audioURL, duration: duration,
                text: value("text"), uttID: value("utt_id"), sentenceID: value("sentence_id"),
                subset: value("subset"), split: value("split"), extra: extra))
        }
        self.init(entries: entries, baseDirectory: baseDirectory)
    }

    /// The entries whose voice, condition and split are in the given sets; `nil` means any.
    public func filtered(voices: Set<String>? = nil, conditions: Set<String>? = nil,
                         splits: Set<String>? = nil) -> Manifest {
        Manifest(entries: entries.filter { e in
            (voices?.contains(e.voice) ?? true) && (conditions?.contains(e.condition) ?? true)
                && (splits?.contains(e.split) ?? true)
        }, baseDirectory: baseDirectory)
    }

    /// The distinct voices, in order of first appearance.
    public var voices: [String] { Self.distinct(entries.map(\.voice)) }

    /// The distinct conditions, in order of first appearance.
    public var conditions: [String] { Self.distinct(entries.map(\.condition)) }

    /// Total audio duration in seconds.
    public var totalDuration: Double { entries.reduce(0) { $0 + $1.duration } }

    static func fields(_ line: String) -> [String] {
        let trimmed = line.hasSuffix("\r") ? String(line.dropLast()) : line
        return trimmed.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
    }

    static func distinct(_ values: [String]) -> [String] {
        var seen = Set<String>()
        return values.filter { seen.insert($0).inserted }
    }
}
