// libFuzzer target: the control protocol's line framing, request parser and audio intake (module Serving).
// Invariants: a parsed request re-encodes to JSON that parses to the same value (finite numbers); a
// `transcribe` request's audio converts to at most `maxAudioSeconds` of samples, charged exactly while held,
// and every charge is given back.
import Foundation
import NIOCore

private func finite(_ value: JSONValue) -> Bool {
    switch value {
    case .number(let n): return n.isFinite
    case .array(let a): return a.allSatisfy(finite)
    case .object(let o): return o.values.allSatisfy(finite)
    default: return true
    }
}

func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var framing = LineFraming(maxLength: 1 << 16)
    var buffer = ByteBuffer(bytes: UnsafeBufferPointer(start: data, count: size))
    var lines: [ByteBuffer] = []
    while let line = try? framing.next(&buffer) { lines.append(line) }
    if let last = try? framing.last(&buffer) { lines.append(last) }
    let configuration = ControlServerConfiguration(maxAudioSeconds: 30)
    for line in lines {
        if let value = try? JSONValue.parse(line.readableBytesView), finite(value) {
            let again = try? JSONValue.parse(value.jsonData())
            precondition(again == value, "JSON changed by a round trip")
        }
        guard let request = try? ControlSessionHandler.parse(line) else { continue }
        switch request.command {
        case .budget:
            if let bytes = try? ControlSessionHandler.budgetBytes(request.fields["bytes"]) { precondition(bytes > 0) }
        case .transcribe:
            let pool = ClientMemoryPool(limit: 64 << 20, connectionLimit: 64 << 20)
            let account = pool.account(user: nil, privileged: true)
            if let decoded = try? IntakeAudio.decode(request.fields, configuration: configuration, memory: account) {
                precondition(decoded.samples.count <= 30 * 16000 + 1, "more audio than the limit allows")
                precondition(pool.usedBytes == decoded.charge.held, "charge and pool disagree")
                precondition(decoded.charge.held >= decoded.samples.capacity * 4, "samples held beyond their charge")
                decoded.charge.release()
            }
            precondition(pool.usedBytes == 0, "a charge was not given back")
        default:
            break
        }
    }
    return 0
}
