/// Why a Whisper vocabulary or merge list could not be loaded.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// The file at `path` could not be read.
    case unreadable(path: String, reason: String)
    /// `tokenizer.json` at `path` is not in the expected HuggingFace layout.
    case badTokenizerJSON(path: String, reason: String)
    /// A required special token (by its string, e.g. `<|endoftext|>`) is not in the vocabulary.
    case missingSpecialToken(String)
    /// The vocabulary lacks the byte-level symbol for `byte`, so some text could not be encoded.
    case missingByteSymbol(byte: UInt8, symbol: String)
    /// Merge number `index` (`left right`) uses a symbol, or produces one, that is not in the vocabulary.
    case mergeNotInVocabulary(index: Int, left: String, right: String)
    /// The vocabulary is empty.
    case emptyVocabulary

    /// A one-line, human-readable explanation.
    public var description: String {
        switch self {
        case let .unreadable(path, reason):
            return "\(path): cannot read tokenizer file: \(reason)"
        case let .badTokenizerJSON(path, reason):
            return "\(path): not a usable tokenizer.json: \(reason)"
        case let .missingSpecialToken(token):
            return "vocabulary has no special token '\(token)'; is this a Whisper vocabulary?"
        case let .missingByteSymbol(byte, symbol):
            return "vocabulary has no byte-level symbol '\(symbol)' for byte \(byte); every byte needs one"
        case let .mergeNotInVocabulary(index, left, right):
            return "merge \(index) ('\(left)' + '\(right)') uses or produces a symbol missing from the vocabulary"
        case .emptyVocabulary:
            return "vocabulary is empty"
        }
    }
}
