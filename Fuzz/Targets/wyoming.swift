// libFuzzer target: the Wyoming event reader (module Serving).
// Invariants: the frames read do not depend on how the bytes are split; every event read encodes to bytes
// that read back as one event of the same type and payload.
import Foundation
import NIOCore

private let limits = WyomingFramingLimits(maxHeaderLength: 2048, maxDataLength: 8192, maxPayloadLength: 16384)

private func frames(_ bytes: UnsafeBufferPointer<UInt8>, splitAt cuts: [Int]) -> ([WyomingFrame], Bool) {
    var decoder = WyomingFrameDecoder(limits: limits)
    var buffer = ByteBuffer()
    var out: [WyomingFrame] = []
    var start = 0
    for cut in cuts + [bytes.count] where cut >= start {
        buffer.writeBytes(UnsafeBufferPointer(rebasing: bytes[start..<cut]))
        start = cut
        do {
            while let frame = try decoder.decodeFrame(&buffer) { out.append(frame) }
        } catch {
            return (out, true)
        }
    }
    return (out, false)
}

func fuzzWyoming(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let (whole, wholeFailed) = frames(bytes, splitAt: [])
    let cuts = size > 2 ? [Int(data[0]) % size, size / 2] : []
    let (split, splitFailed) = frames(bytes, splitAt: cuts.sorted())
    if !wholeFailed && !splitFailed {
        precondition(whole == split, "frames depend on how the bytes arrive")
    }
    for case .event(let event) in whole {
        var buffer = ByteBuffer()
        event.encode(into: &buffer)
        var decoder = WyomingFrameDecoder(limits: WyomingFramingLimits())
        guard case .event(let again)?? = try? decoder.decodeFrame(&buffer) else {
            preconditionFailure("an event read does not read back after encoding")
        }
        precondition(again.type == event.type && again.payload == event.payload, "event changed by encoding")
    }
    return 0
}
