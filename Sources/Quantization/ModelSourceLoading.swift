import WhisperEngine

extension ModelSource {
    /// Loads the model this source names: a directory's float network (`WhisperModel.load`), or a
    /// quantized model file with the vocabulary and configuration of the installed model it was made
    /// from (`QuantizedModelFile.loadModel`).
    public func load() throws -> WhisperModel {
        switch self {
        case let .float(directory): return try WhisperModel.load(directory: directory)
        case let .quantized(path): return try QuantizedModelFile.loadModel(path: path)
        }
    }
}
