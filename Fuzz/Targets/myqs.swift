// libFuzzer target: the `.myqs` statistics loader (module Quantization).
// The length field and the checksum are made consistent with the input before decoding, so inputs get past
// them to the fields. Invariant: decoding never traps; what decodes encodes back to a file that decodes the same.
import Foundation

func fuzzMyqs(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if bytes.count >= 20 {
        // "MYQS" | version u32 | payload length u64 | payload | CRC32 of everything before it.
        let payload = UInt64(bytes.count - 20)
        for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: payload >> (8 * UInt64(i))) }
        let crc = StatisticsFile.crc(Array(bytes[0..<(bytes.count - 4)]))
        for i in 0..<4 { bytes[bytes.count - 4 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
    }
    guard let statistics = try? StatisticsFile.decode(bytes, path: "fuzz.myqs") else { return 0 }
    let again = StatisticsFile.encode(statistics)
    guard let reread = try? StatisticsFile.decode(again, path: "fuzz.myqs") else {
        preconditionFailure("statistics that decoded do not decode after encoding")
    }
    precondition(StatisticsFile.encode(reread) == again, "statistics changed by a round trip")
    return 0
}
