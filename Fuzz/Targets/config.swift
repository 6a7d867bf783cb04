// libFuzzer target: the daemon's TOML configuration (DaemonConfiguration.swift, ByteSize.swift).
// Invariants: parsing never traps; a configuration that parses and validates has its values in their ranges.
import Foundation

func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let configuration = try? DaemonConfiguration.parse(text, source: "fuzz"),
          (try? configuration.validate(source: "fuzz")) != nil else { return 0 }
    precondition((1...64).contains(configuration.threads))
    precondition((1...4096).contains(configuration.maxConnections))
    precondition(configuration.maxConnectionBytes <= configuration.maxBufferedBytes)
    precondition(configuration.memoryBudget.map { $0 >= 1 << 20 } ?? true)
    precondition(configuration.vadStopDB <= configuration.vadStartDB)
    return 0
}
