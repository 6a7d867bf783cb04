/// One step of a word alignment between a reference and a hypothesis.
public enum AlignmentStep: Sendable, Equatable {
    /// The words agree.
    case match(String)
    /// The reference word `reference` was recognised as `hypothesis`.
    case substitution(reference: String, hypothesis: String)
    /// The reference word was not recognised.
    case deletion(String)
    /// The hypothesis has a word the reference does not.
    case insertion(String)
}

/// Edit counts of a word alignment; add them up (`+`) for corpus-level scores.
public struct WordErrorCounts: Sendable, Equatable, CustomStringConvertible {
    /// Reference words replaced by other words.
    public var substitutions: Int
    /// Reference words missing from the hypothesis.
    public var deletions: Int
    /// Hypothesis words not in the reference.
    public var insertions: Int
    /// Number of words in the reference (hits + substitutions + deletions).
    public var referenceWords: Int

    /// Creates counts; `referenceWords` must be at least `substitutions + deletions`.
    public init(substitutions: Int = 0, deletions: Int = 0, insertions: Int = 0, referenceWords: Int = 0) {
        self.substitutions = substitutions
        self.deletions = deletions
        self.insertions = insertions
        self.referenceWords = referenceWords
    }

    /// No edits and no words.
    public static let zero = WordErrorCounts()

    /// Substitutions + deletions + insertions.
    public var errors: Int { substitutions + deletions + insertions }

    /// Reference words recognised correctly.
    public var hits: Int { referenceWords - substitutions - deletions }

    /// Word error rate: errors / reference words. 0 when there are neither errors nor reference
    /// words; `Double.infinity` when an empty reference meets a non-empty hypothesis.
    public var wordErrorRate: Double {
        if referenceWords == 0 { return errors == 0 ? 0 : .infinity }
        return Double(errors) / Double(referenceWords)
    }

    /// Sums two sets of counts (corpus WER = total edits / total reference words).
    public static func + (lhs: WordErrorCounts, rhs: WordErrorCounts) -> WordErrorCounts {
        WordErrorCounts(substitutions: lhs.substitutions + rhs.substitutions,
                        deletions: lhs.deletions + rhs.deletions,
                        insertions: lhs.insertions + rhs.insertions,
                        referenceWords: lhs.referenceWords + rhs.referenceWords)
    }

    /// Adds `rhs` into `lhs`.
    public static func += (lhs: inout WordErrorCounts, rhs: WordErrorCounts) { lhs = lhs + rhs }

    /// For example `WER 12.50% (S=1 D=0 I=0, N=8)`.
    public var description: String {
        let rate = wordErrorRate.isFinite ? String(format: "%.2f%%", wordErrorRate * 100) : "inf"
        return "WER \(rate) (S=\(substitutions) D=\(deletions) I=\(insertions), N=\(referenceWords))"
    }
}

/// A word alignment with its counts.
public struct WordAlignment: Sendable, Equatable {
    /// The steps, in reference order.
    public let steps: [AlignmentStep]
    /// The counts of `steps`.
    public let counts: WordErrorCounts
}

/// Word error rate by Levenshtein alignment over words.
///
/// Among minimal alignments, ties are broken in favour of a match or substitution, then a deletion,
/// then an insertion, so the total edit count is always the minimum and the S/D/I split is stable.
public enum WordErrorRate {
    /// Aligns two word sequences (already normalised and split).
    public static func align(reference: [String], hypothesis: [String]) -> WordAlignment {
        let n = reference.count, m = hypothesis.count
        // cost[i][j]: edits to turn reference[..<i] into hypothesis[..<j]
        var cost = [[Int]](repeating: [Int](repeating: 0, count: m + 1), count: n + 1)
        for i in 0...n { cost[i][0] = i }
        for j in 0...m { cost[0][j] = j }
        if n > 0 && m > 0 {
            for i in 1...n {
                for j in 1...m {
                    let diagonal = cost[i - 1][j - 1] + (reference[i - 1] == hypothesis[j - 1] ? 0 : 1)
                    cost[i][j] = min(diagonal, cost[i - 1][j] + 1, cost[i][j - 1] + 1)
                }
            }
        }
        var steps: [AlignmentStep] = []
        var counts = WordErrorCounts(referenceWords: n)
        var i = n, j = m
        while i > 0 || j > 0 {
            if i > 0, j > 0 {
                let same = reference[i - 1] == hypothesis[j - 1]
                if cost[i][j] == cost[i - 1][j - 1] + (same ? 0 : 1) {
                    if same {
                        steps.append(.match(reference[i - 1]))
                    } else {
                        steps.append(.substitution(reference: reference[i - 1], hypothesis: hypothesis[j - 1]))
                        counts.substitutions += 1
                    }
                    i -= 1; j -= 1
                    continue
                }
            }
            if i > 0, cost[i][j] == cost[i - 1][j] + 1 {
                steps.append(.deletion(reference[i - 1]))
                counts.deletions += 1
                i -= 1
            } else {
                steps.append(.insertion(hypothesis[j - 1]))
                counts.insertions += 1
                j -= 1
            }
        }
        return WordAlignment(steps: steps.reversed(), counts: counts)
    }

    /// Counts edits between two texts after normalising both with `normalizer`
    /// (pass `nil` to compare the texts as they are, split on whitespace).
    public static func counts(reference: String, hypothesis: String,
                              normalizer: EnglishTextNormalizer? = EnglishTextNormalizer()) -> WordErrorCounts {
        align(reference: words(reference, normalizer), hypothesis: words(hypothesis, normalizer)).counts
    }

    /// Corpus-level counts: the sum of the edits of every pair over the sum of their reference words.
    public static func corpus<S: Sequence>(_ pairs: S, normalizer: EnglishTextNormalizer? = EnglishTextNormalizer())
        -> WordErrorCounts where S.Element == (reference: String, hypothesis: String) {
        pairs.reduce(WordErrorCounts.zero) { total, pair in
            total + counts(reference: pair.reference, hypothesis: pair.hypothesis, normalizer: normalizer)
        }
    }

    /// The words of `text`, normalised first when a normaliser is given.
    static func words(_ text: String, _ normalizer: EnglishTextNormalizer?) -> [String] {
        let prepared = normalizer.map { $0.normalize(text) } ?? text
        return prepared.split(whereSeparator: { $0.isWhitespace }).map(String.init)
    }
}
