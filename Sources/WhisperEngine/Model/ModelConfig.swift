import Foundation

/// The decoding settings CTranslate2 stores next to a Whisper model in `config.json`.
///
/// Keys read: `suppress_ids`, `suppress_ids_begin`, `lang_ids` (lists of token ids) and
/// `alignment_heads` (list of `[layer, head]`). A missing key reads as an empty list; any
/// other key is ignored.
public struct ModelConfig: Sendable, Equatable {
    /// Tokens never sampled (`suppress_ids`): mostly punctuation-like symbols and specials.
    public var suppressIDs: [Int]
    /// Tokens not allowed as the first sampled token (`suppress_ids_begin`): the space and `<|endoftext|>`.
    public var suppressIDsBegin: [Int]
    /// Language tokens the model can detect (`lang_ids`).
    public var languageIDs: [Int]
    /// Cross-attention heads that follow the alignment between text and audio (`alignment_heads`),
    /// used for word timestamps.
    public var alignmentHeads: [(layer: Int, head: Int)]

    /// Creates a configuration from explicit values.
    public init(suppressIDs: [Int] = [], suppressIDsBegin: [Int] = [], languageIDs: [Int] = [],
                alignmentHeads: [(layer: Int, head: Int)] = []) {
        self.suppressIDs = suppressIDs
        self.suppressIDsBegin = suppressIDsBegin
        self.languageIDs = languageIDs
        self.alignmentHeads = alignmentHeads
    }

    /// Reads `config.json` at `path`. An unreadable or malformed file gives
    /// `ModelFileError.badConfig` naming the file and the problem.
    public init(contentsOf path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ModelFileError.badConfig(path: path, reason: "cannot read config: \((error as NSError).localizedDescription)")
        }
        try self.init(data: data, path: path)
    }

    /// Parses `config.json` content; `path` is used in messages only.
    public init(data: Data, path: String) throws {
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw ModelFileError.badConfig(path: path, reason: "not valid JSON")
        }
        let raw: RawConfig
        do {
            raw = try JSONDecoder().decode(RawConfig.self, from: data)
        } catch let error as Swift.DecodingError {
            throw ModelFileError.badConfig(path: path, reason: ModelConfig.explain(error))
        } catch {
            throw ModelFileError.badConfig(path: path, reason: "not valid JSON: \(error)")
        }
        func ids(_ list: [Int]?, _ key: String) throws -> [Int] {
            let list = list ?? []
            if let bad = list.first(where: { $0 < 0 }) {
                throw ModelFileError.badConfig(path: path, reason: "'\(key)' contains the negative token id \(bad)")
            }
            return list
        }
        suppressIDs = try ids(raw.suppress_ids, "suppress_ids")
        suppressIDsBegin = try ids(raw.suppress_ids_begin, "suppress_ids_begin")
        languageIDs = try ids(raw.lang_ids, "lang_ids")
        alignmentHeads = try (raw.alignment_heads ?? []).enumerated().map { index, pair in
            guard pair.count == 2, pair[0] >= 0, pair[1] >= 0 else {
                throw ModelFileError.badConfig(
                    path: path, reason: "'alignment_heads' entry \(index) is \(pair), expected [layer, head] with non-negative values")
            }
            return (layer: pair[0], head: pair[1])
        }
    }

    /// Equal when all lists are equal, alignment heads in order.
    public static func == (a: ModelConfig, b: ModelConfig) -> Bool {
        a.suppressIDs == b.suppressIDs && a.suppressIDsBegin == b.suppressIDsBegin && a.languageIDs == b.languageIDs
            && a.alignmentHeads.map { [$0.layer, $0.head] } == b.alignmentHeads.map { [$0.layer, $0.head] }
    }

    private struct RawConfig: Decodable {
        var suppress_ids: [Int]?
        var suppress_ids_begin: [Int]?
        var lang_ids: [Int]?
        var alignment_heads: [[Int]]?
    }

    private static func explain(_ error: Swift.DecodingError) -> String {
        func where_(_ path: [CodingKey]) -> String {
            path.isEmpty ? "the top level" : "'" + path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
                .joined(separator: ".").replacingOccurrences(of: ".[", with: "[") + "'"
        }
        switch error {
        case let .typeMismatch(type, context):
            return "\(where_(context.codingPath)) is not of the expected type (\(type)); token ids and heads are integers"
        case let .valueNotFound(type, context):
            return "\(where_(context.codingPath)) is null, expected \(type)"
        case let .keyNotFound(key, context):
            return "\(where_(context.codingPath)) lacks the key '\(key.stringValue)'"
        case let .dataCorrupted(context):
            // Some Foundation versions report a fractional number read as Int this way.
            if context.codingPath.isEmpty { return "a value is not of the expected type (token ids and heads are integers)" }
            return "\(where_(context.codingPath)) is invalid: \(context.debugDescription)"
        @unknown default:
            return "malformed: \(error)"
        }
    }
}
