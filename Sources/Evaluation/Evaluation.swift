// Module `Evaluation`: see README "Architecture".
//
// Word error rate with Whisper-style English normalisation, and the corpus manifest reader.
//   EnglishTextNormalizer.swift   lower-casing, contractions, numbers, spellings, symbols
//   EnglishNumberNormalizer.swift spelled-out numbers to digits
//   EnglishSpellings.swift        British -> American spellings
//   WordErrorRate.swift           Levenshtein word alignment, per utterance and per corpus
//   Manifest.swift                the corpus manifest TSV (../shared/corpus, scripts/fetch-samples)
