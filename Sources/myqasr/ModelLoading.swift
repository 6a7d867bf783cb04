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
    do { return try QuantizedModelFile.loadModel(path: nameOrPath) } catch { throw CLIError("\(error)") }
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
