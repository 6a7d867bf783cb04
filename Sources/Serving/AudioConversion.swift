import Foundation

/// Converts audio at `rate` Hz to 16 kHz mono. The daemon can inject the `Audio` module's resampler;
/// `AudioConversion.resampleTo16k` is the built-in default.
public typealias Resampler = @Sendable (_ samples: [Float], _ rate: Int) -> [Float]

/// Decodes a complete audio file (such as WAV) to 16 kHz mono float samples; injected by the daemon.
public typealias AudioFileDecoder = @Sendable (_ file: Data) throws -> [Float]

/// An audio format the servers cannot convert.
public enum AudioFormatError: Error, Equatable, CustomStringConvertible {
    /// Sample width in bytes other than 1, 2, 3 or 4.
    case unsupportedWidth(Int)
    /// A channel count below 1 or above 32.
    case unsupportedChannels(Int)
    /// A sample rate outside 1000...384000 Hz.
    case unsupportedRate(Int)

    /// Human-readable explanation.
    public var description: String {
        switch self {
        case .unsupportedWidth(let w): return "unsupported sample width \(w) bytes (supported: 1, 2, 3, 4)"
        case .unsupportedChannels(let c): return "unsupported channel count \(c) (supported: 1-32)"
        case .unsupportedRate(let r): return "unsupported sample rate \(r) Hz (supported: 1000-384000)"
        }
    }
}

/// PCM decoding, down-mixing and resampling to Whisper's 16 kHz mono float format.
public enum AudioConversion {
    /// The sample rate the transcription backend expects.
    public static let targetRate = 16000

    /// Checks that a PCM format can be converted.
    public static func validate(rate: Int, width: Int, channels: Int) throws {
        guard (1...4).contains(width) else { throw AudioFormatError.unsupportedWidth(width) }
        guard (1...32).contains(channels) else { throw AudioFormatError.unsupportedChannels(channels) }
        guard (1000...384_000).contains(rate) else { throw AudioFormatError.unsupportedRate(rate) }
    }

    /// Decodes little-endian PCM (width 1 = unsigned 8-bit, 2/3/4 = signed) with interleaved channels,
    /// averaging channels to mono. `bytes.count` must be a multiple of `width * channels`; extra bytes are ignored.
    public static func monoFloat(pcm bytes: [UInt8], width: Int, channels: Int) -> [Float] {
        let frameSize = width * channels
        let frames = bytes.count / frameSize
        var out = [Float](repeating: 0, count: frames)
        let scale: Float = 1 / Float(channels)
        bytes.withUnsafeBufferPointer { p in
            for f in 0..<frames {
                var sum: Float = 0
                var i = f * frameSize
                for _ in 0..<channels {
                    switch width {
                    case 1: sum += (Float(p[i]) - 128) / 128
                    case 2: sum += Float(Int16(bitPattern: UInt16(p[i]) | UInt16(p[i + 1]) << 8)) / 32768
                    case 3:
                        let v = Int32(bitPattern: UInt32(p[i]) << 8 | UInt32(p[i + 1]) << 16 | UInt32(p[i + 2]) << 24)
                        sum += Float(v >> 8) / 8_388_608
                    default:
                        let v = UInt32(p[i]) | UInt32(p[i + 1]) << 8 | UInt32(p[i + 2]) << 16 | UInt32(p[i + 3]) << 24
                        sum += Float(Int32(bitPattern: v)) / 2_147_483_648
                    }
                    i += width
                }
                out[f] = sum * scale
            }
        }
        return out
    }

    /// Resamples to 16 kHz with a Hann-windowed sinc filter whose cut-off is the lower Nyquist frequency
    /// (so downsampling does not alias). Returns the input unchanged when `rate` is already 16000.
    public static func resampleTo16k(_ samples: [Float], rate: Int) -> [Float] {
        resample(samples, from: rate, to: targetRate)
    }

    /// Resamples `samples` from `from` Hz to `to` Hz with a Hann-windowed sinc filter (16 zero crossings per
    /// side at the lower Nyquist frequency). The filter weights are tabulated once per distinct fractional
    /// phase (`to / gcd(from, to)` of them, e.g. 1 for 48 kHz, 160 for 44.1 kHz), so the cost is one
    /// multiply-add per tap.
    public static func resample(_ samples: [Float], from: Int, to: Int) -> [Float] {
        guard from != to, from > 0, to > 0, !samples.isEmpty else { return samples }
        let g = gcd(from, to)
        let up = to / g  // L: output step in input samples is M / L
        let down = from / g  // M
        let outCount = samples.count * up / down
        let cutoff = min(1.0, Double(to) / Double(from))  // relative to the input Nyquist frequency
        let halfWidth = 16.0 / cutoff  // in input samples
        let reach = Int(halfWidth.rounded(.up))
        let taps = 2 * reach + 1
        let tabulate = up <= 4096
        // weights[phase * taps + (j + reach)] for input offset j relative to floor(t).
        func weights(phase: Int) -> [Float] {
            let frac = Double(phase) / Double(up)
            var w = [Float](repeating: 0, count: taps)
            for j in -reach...reach {
                let d = Double(j) - frac
                guard abs(d) < halfWidth else { continue }
                let arg = d * cutoff
                let sinc = arg == 0 ? 1.0 : sin(Double.pi * arg) / (Double.pi * arg)
                w[j + reach] = Float(sinc * (0.5 + 0.5 * cos(Double.pi * d / halfWidth)))
            }
            return w
        }
        var table: [Float] = []
        if tabulate {
            table.reserveCapacity(up * taps)
            for phase in 0..<up { table += weights(phase: phase) }
        }
        var out = [Float](repeating: 0, count: outCount)
        samples.withUnsafeBufferPointer { x in
            table.withUnsafeBufferPointer { tableWeights in
                for n in 0..<outCount {
                    let position = n * down
                    let base = position / up
                    let phase = position % up
                    let lo = max(-reach, -base)
                    let hi = min(reach, x.count - 1 - base)
                    if lo > hi { continue }
                    let computed = tabulate ? [] : weights(phase: phase)
                    var acc: Float = 0
                    var norm: Float = 0
                    computed.withUnsafeBufferPointer { computedWeights in
                        let w = tabulate ? UnsafeBufferPointer(rebasing: tableWeights[(phase * taps)...]) : computedWeights
                        for j in lo...hi {
                            let weight = w[j + reach]
                            acc += weight * x[base + j]
                            norm += weight
                        }
                    }
                    out[n] = norm != 0 ? acc / norm : 0
                }
            }
        }
        return out
    }

    private static func gcd(_ a: Int, _ b: Int) -> Int {
        var (a, b) = (a, b)
        while b != 0 { (a, b) = (b, a % b) }
        return a
    }
}
