import Foundation

/// A rule that edits one row of next-token logits in place before a token is chosen.
///
/// `sampled` is the row's sequence after the start sequence, prompt and prefix (Whisper's
/// `tokens[sample_begin:]`): the tokens chosen so far in this window.
public protocol LogitFilter {
    /// Applies the rule to `logits` (one row, `nVocab` entries), setting forbidden tokens to `-infinity`.
    func apply(_ logits: UnsafeMutableBufferPointer<Float>, sampled: [Int])
}

extension LogitFilter {
    /// Applies the rule to an array holding one row of logits.
    public func apply(_ logits: inout [Float], sampled: [Int]) {
        logits.withUnsafeMutableBufferPointer { apply($0, sampled: sampled) }
    }
}

/// Sets `logits[ids]` to `-infinity`, skipping ids outside the row.
@inline(__always)
func suppress(_ logits: UnsafeMutableBufferPointer<Float>, _ ids: [Int]) {
    for id in ids where id >= 0 && id < logits.count { logits[id] = -.infinity }
}

/// Sets `logits[range]` to `-infinity`, clamped to the row.
@inline(__always)
func suppress(_ logits: UnsafeMutableBufferPointer<Float>, _ range: Range<Int>) {
    let lo = Swift.max(range.lowerBound, 0), hi = Swift.min(range.upperBound, logits.count)
    guard lo < hi else { return }
    for i in lo..<hi { logits[i] = -.infinity }
}

/// Whisper's `SuppressBlank`: at the first sampled position, forbids the blank token(s) and
/// `<|endoftext|>` (the model config's `suppress_ids_begin`), so a window never starts empty.
public struct SuppressBlankFilter: LogitFilter {
    /// Tokens forbidden at the first sampled position.
    public let tokens: [Int]

    /// Creates the rule for `tokens` (normally `[encode(" "), endOfText]`).
    public init(tokens: [Int]) { self.tokens = tokens }

    /// Suppresses `tokens` when nothing has been sampled yet.
    public func apply(_ logits: UnsafeMutableBufferPointer<Float>, sampled: [Int]) {
        if sampled.isEmpty { suppress(logits, tokens) }
    }
}

/// Whisper's `SuppressTokens`: forbids a fixed set of tokens at every position.
public struct SuppressTokensFilter: LogitFilter {
    /// The forbidden tokens, sorted and without duplicates.
    public let tokens: [Int]

    /// Creates the rule for `tokens`.
    public init(tokens: [Int]) { self.tokens = Array(Set(tokens)).sorted() }

    /// Suppresses every token of the set.
    public func apply(_ logits: UnsafeMutableBufferPointer<Float>, sampled: [Int]) {
        suppress(logits, tokens)
    }
}

/// Whisper's `ApplyTimestampRules` (the current openai/whisper version):
///
/// - `<|notimestamps|>` is never sampled;
/// - timestamps come in pairs, except directly before `<|endoftext|>`: after a lone
///   timestamp only a timestamp or `<|endoftext|>` may follow; after a pair only text;
/// - timestamps never decrease, and a segment's closing timestamp must be strictly greater
///   than its opening one (a new segment may start at the previous segment's end);
/// - the first sampled token must be a timestamp no later than `maxInitialTimestampIndex` steps;
/// - when the total probability of all timestamps exceeds that of every single text token,
///   a timestamp is forced.
public struct TimestampRulesFilter: LogitFilter {
    /// `<|endoftext|>`.
    public let endOfText: Int
    /// `<|notimestamps|>`.
    public let noTimestamps: Int
    /// `<|0.00|>`; every id from here up is a timestamp.
    public let timestampBegin: Int
    /// Latest allowed first timestamp, in timestamp steps (0.02 s); `nil` = any.
    public let maxInitialTimestampIndex: Int?

    /// Creates the rule from the tokenizer's control tokens.
    public init(endOfText: Int, noTimestamps: Int, timestampBegin: Int, maxInitialTimestampIndex: Int?) {
        self.endOfText = endOfText
        self.noTimestamps = noTimestamps
        self.timestampBegin = timestampBegin
        self.maxInitialTimestampIndex = maxInitialTimestampIndex
    }

    /// Applies every timestamp rule to one row.
    public func apply(_ logits: UnsafeMutableBufferPointer<Float>, sampled: [Int]) {
        let tb = timestampBegin
        let n = logits.count
        if noTimestamps >= 0 && noTimestamps < n { logits[noTimestamps] = -.infinity }

        let count = sampled.count
        let lastWasTimestamp = count >= 1 && sampled[count - 1] >= tb
        let penultimateWasTimestamp = count < 2 || sampled[count - 2] >= tb
        if lastWasTimestamp {
            if penultimateWasTimestamp {
                suppress(logits, tb..<n)           // has to be text (or end of text)
            } else {
                suppress(logits, 0..<endOfText)    // has to be a timestamp or end of text
            }
        }

        if let lastTimestamp = sampled.last(where: { $0 >= tb }) {
            // Timestamps must not decrease; a closing timestamp must also be strictly later.
            let firstAllowed = (lastWasTimestamp && !penultimateWasTimestamp) ? lastTimestamp : lastTimestamp + 1
            suppress(logits, tb..<firstAllowed)
        }

        if count == 0 {
            suppress(logits, 0..<tb)               // a window starts with a timestamp
            if let maxIndex = maxInitialTimestampIndex {
                suppress(logits, (tb + maxIndex + 1)..<n)
            }
        }

        // If the timestamps together outweigh every single text token, force a timestamp.
        let view = UnsafeBufferPointer(logits)
        let timestampLogSum = LogitMath.logSumExp(view, tb..<n)
        let maxText = Double(LogitMath.max(view, 0..<Swift.min(tb, n)))
        if timestampLogSum > maxText {
            suppress(logits, 0..<tb)
        }
    }
}
