// libFuzzer target: the WAV header parser and the PCM intake (module Audio).
// Invariants: what `layout` refuses, `decode` refuses; what it accepts, `decode` decodes to the frames it
// counted; an accepted format converts, in pieces of any size, to exactly the sample count promised from the
// header, without growing the array reserved for them (the daemon charges that reservation).
import Foundation

func fuzzWAV(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Data(bytes: data, count: size)
    guard let layout = try? WAVDecoder.layout(data: bytes) else {
        precondition((try? WAVDecoder.decode(data: bytes)) == nil, "decode accepted what layout refused")
        return 0
    }
    let buffer: AudioBuffer
    do { buffer = try WAVDecoder.decode(data: bytes) } catch { preconditionFailure("layout accepted, decode refused: \(error)") }
    let frames = layout.samples.count / layout.format.blockAlign
    precondition(buffer.frameCount == frames, "decode and layout disagree on the frame count")

    let format = PCMFormat(encoding: layout.format.encoding, channelCount: layout.format.channelCount,
                           sampleRate: layout.format.sampleRate)
    guard (try? format.checkAccepted()) != nil else { return 0 }
    guard let converter = try? PCMConverter(format: format) else { preconditionFailure("accepted format refused") }
    let expected = converter.outputCount(frames: frames)
    var output: [Float] = []
    output.reserveCapacity(expected)
    let capacity = output.capacity
    // Pieces of 1 to 256 bytes, chosen by the last byte of the input.
    let piece = Int(data[size - 1]) + 1
    bytes.withUnsafeBytes { raw in
        let payload = UnsafeRawBufferPointer(rebasing: raw[layout.samples])
        var offset = 0
        while offset < payload.count {
            let end = min(payload.count, offset + piece)
            precondition(output.count + converter.outputBound(afterAdding: end - offset) <= expected, "bound exceeded")
            converter.convert(UnsafeRawBufferPointer(rebasing: payload[offset..<end]), appendingTo: &output)
            offset = end
        }
    }
    converter.finish(appendingTo: &output)
    precondition(output.count == expected, "converted \(output.count) samples, the header promised \(expected)")
    precondition(output.capacity == capacity, "the sample array grew beyond its reservation")
    return 0
}
