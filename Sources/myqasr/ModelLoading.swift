import Foundation
import Quantization
import WhisperEngine

// Every subcommand resolves its --model through here, so a name means the same thing everywhere.

/// Loads `tiny.en`, `base`, a model directory, or a `.myq` quantized model (whose vocabulary
/// and configuration come from its source model, which must be installed and match).
func loadAnyModel(_ nameOrPath: String) throws -> WhisperModel {
    guard isQuantizedModelFile(nameOrPath) else {
        do { return try WhisperModel.load(nameOrPath) } catch { throw CLIError("\(error)") }
    }
    do {
        let (weights, metadata) = try QuantizedModelFile.load(path: nameOrPath)
        let name = URL(fileURLWithPath: nameOrPath).lastPathComponent
        if let vocabulary = metadata.sourceVocabularyDigest {
            // The vocabulary is all the file needs from its source: the source's weights stay unread.
            let paired = try WhisperModel.load(metadata.sourceModelName, weights: weights)
            let installed = ModelIdentity.vocabularyDigest(paired)
            guard installed == vocabulary else {
                throw CLIError("\(nameOrPath) was made from \(metadata.sourceModelName) with vocabulary \(vocabulary), but the "
                    + "installed \(metadata.sourceModelName) has \(installed)")
            }
            return WhisperModel(name: name, weights: weights, config: paired.config, tokenizer: paired.tokenizer)
        }
        // Files from before the vocabulary digest: check the source's whole identity.
        let source = try WhisperModel.load(metadata.sourceModelName)
        let identity = ModelIdentity.of(source)
        guard identity == metadata.sourceModelDigest else {
            throw CLIError("\(nameOrPath) was made from \(metadata.sourceModelDigest), but the installed "
                + "\(metadata.sourceModelName) is \(identity)")
        }
        return WhisperModel(name: name, weights: weights, config: source.config, tokenizer: source.tokenizer)
    } catch let e as CLIError {
        throw e
    } catch {
        throw CLIError("\(error)")
    }
}

/// Loads a full-precision model (`tiny.en`, `base`, a model directory) for work that must start from float
/// weights (`purpose`, e.g. "statistics"); a `.myq` file or a model with quantized layers is refused.
func loadFullPrecisionModel(_ nameOrPath: String, for purpose: String) throws -> WhisperModel {
    guard !isQuantizedModelFile(nameOrPath) else {
        throw CLIError("\(purpose) need the full-precision model; \(nameOrPath) is a quantized .myq file "
            + "(give the model it was made from, e.g. tiny.en)")
    }
    let whisper: WhisperModel
    do { whisper = try WhisperModel.load(nameOrPath) } catch { throw CLIError("\(error)") }
    guard whisper.weights.linearLayers.allSatisfy({ $0.weight is FloatMatrix }) else {
        throw CLIError("\(purpose) need the full-precision model; \(nameOrPath) is quantized")
    }
    return whisper
}

/// Whether `nameOrPath` names a `.myq` quantized model file.
func isQuantizedModelFile(_ nameOrPath: String) -> Bool {
    nameOrPath.hasSuffix("." + QuantizedModelFile.fileExtension)
}
