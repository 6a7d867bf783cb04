import Foundation
import Quantization
import WhisperEngine

// Every subcommand resolves its --model through here, so a name means the same thing everywhere.

/// What `nameOrPath` names (`ModelSource`: a model directory or a quantized model file, told by content).
private func modelSource(_ nameOrPath: String) throws -> ModelSource {
    do { return try ModelLocator().source(for: nameOrPath) } catch { throw CLIError("\(error)") }
}

/// Loads `tiny.en`, `base`, a model directory, or a quantized model file (whose vocabulary and
/// configuration come from its source model, which must be installed and match).
func loadAnyModel(_ nameOrPath: String) throws -> WhisperModel {
    let source = try modelSource(nameOrPath)
    do { return try source.load() } catch { throw CLIError("\(error)") }
}

/// Loads a full-precision model (`tiny.en`, `base`, a model directory) for work that must start from float
/// weights (`purpose`, e.g. "statistics"); a quantized model file or a model with quantized layers is refused.
func loadFullPrecisionModel(_ nameOrPath: String, for purpose: String) throws -> WhisperModel {
    guard case let .float(directory) = try modelSource(nameOrPath) else {
        throw CLIError("\(purpose) need the full-precision model; \(nameOrPath) is a quantized model file "
            + "(give the model it was made from, e.g. tiny.en)")
    }
    let whisper: WhisperModel
    do { whisper = try WhisperModel.load(directory: directory) } catch { throw CLIError("\(error)") }
    guard whisper.weights.linearLayers.allSatisfy({ $0.weight is FloatMatrix }) else {
        throw CLIError("\(purpose) need the full-precision model; \(nameOrPath) is quantized")
    }
    return whisper
}
