import Foundation
import WhisperEngine

/// Keeps every input row the chosen layers see, in the order they arrive: the paired inputs of
/// asymmetric targets (`AsymmetricTarget`) need the float model's rows and the partly
/// quantized model's rows side by side, which no aggregate can give. Used only while
/// quantizing from calibration audio, on the few hundred decoder rows of a calibration set;
/// the rows live in memory and go with the recorder.
public final class LayerInputRecorder: ActivationObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [String: (width: Int, values: [Float])] = [:]
    private let accepts: @Sendable (String) -> Bool

    /// A recorder for the layers `accepts` names.
    public init(accepts: @escaping @Sendable (String) -> Bool) {
        self.accepts = accepts
    }

    /// Appends the layer's input rows (the network calls this).
    public func observe(layer: String, input: UnsafeBufferPointer<Float>, output: UnsafeBufferPointer<Float>, rows: Int) {
        guard rows > 0, input.count % rows == 0, accepts(layer) else { return }
        let width = input.count / rows
        lock.lock()
        defer { lock.unlock() }
        var entry = recorded.removeValue(forKey: layer) ?? (width, [])
        guard entry.width == width else { recorded[layer] = entry; return }
        entry.values.append(contentsOf: input)
        recorded[layer] = entry
    }

    /// The rows `layer` saw, `[rows, width]` row-major, or `nil` if it saw none.
    public func inputs(of layer: String) -> (rows: Int, width: Int, values: [Float])? {
        lock.lock()
        defer { lock.unlock() }
        guard let e = recorded[layer], !e.values.isEmpty else { return nil }
        return (e.values.count / e.width, e.width, e.values)
    }
}
