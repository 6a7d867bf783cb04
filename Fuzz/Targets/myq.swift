// libFuzzer target: the `.myq` quantized-model loader (module Quantization).
// The checksum is made right before loading, so inputs get past it to the header and the sections. Invariant:
// loading never traps and never allocates beyond what the file's sizes allow (libFuzzer's memory limit).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

private let path = "/dev/shm/myqasr-fuzz-\(getpid()).myq"

private func le(_ bytes: [UInt8], _ at: Int, _ count: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<count { v |= UInt64(bytes[at + i]) << (8 * UInt64(i)) }
    return v
}

func fuzzMyq(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if bytes.count >= QuantizedModelFile.preambleSize {
        let dataOffset = le(bytes, 24, 8), dataLength = le(bytes, 32, 8)
        let (sum, overflow) = dataOffset.addingReportingOverflow(dataLength)
        let end = !overflow && sum <= UInt64(bytes.count) && sum >= 16 ? Int(sum) : bytes.count
        let crc = bytes.withUnsafeBytes { QuantizedModelFile.crc32Update(0, UnsafeRawBufferPointer(rebasing: $0[16..<end])) }
        for i in 0..<4 { bytes[12 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
    }
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else { return 0 }
    _ = try? QuantizedModelFile.load(path: path)
    return 0
}
