// Interleaved little-endian PCM: the one sample decoder (WAV files, Wyoming chunks, raw s16le requests)
// and a streaming converter to Whisper's input, mono float at 16 kHz.
//
// Sample scaling: integers by 1 / 2^(bits-1), so full scale maps to [-1, 1); 8-bit is unsigned with
// offset 128; floats pass through. Channels are averaged to mono frame by frame.
//
// PCMConverter takes the bytes in pieces of any size (a frame may straddle two pieces), keeps only
// the part of a frame still incomplete and the resampler's filter history, and appends finished
// 16 kHz samples to the caller's array. Its cost is bounded by the declared format: per input byte a
// constant amount of decoding, per output sample at most 2 × taps multiply-adds (Resampler.swift).

import Foundation

/// The format of a stream of interleaved PCM frames.
public struct PCMFormat: Equatable, Sendable {
    /// The sample encoding (integer or float, and its width).
    public var encoding: WAVSampleEncoding
    /// Number of interleaved channels.
    public var channelCount: Int
    /// Frames per second.
    public var sampleRate: Int

    /// Creates a format.
    public init(encoding: WAVSampleEncoding, channelCount: Int, sampleRate: Int) {
        self.encoding = encoding
        self.channelCount = channelCount
        self.sampleRate = sampleRate
    }

    /// Integer PCM of `width` bytes per sample (1 = unsigned 8-bit; 2, 3, 4 = signed), as Wyoming and raw
    /// s16le requests describe it.
    public init(width: Int, channelCount: Int, sampleRate: Int) throws {
        guard (1...4).contains(width) else {
            throw AudioError.unsupportedFormat(reason: "sample width \(width) bytes (supported: 1, 2, 3, 4)")
        }
        self.init(encoding: .integer(bits: 8 * width), channelCount: channelCount, sampleRate: sampleRate)
    }

    /// Bytes per frame (all channels).
    public var bytesPerFrame: Int { encoding.bytesPerSample * channelCount }

    /// Sample rates the daemon accepts from clients.
    public static let acceptedRates = 1000...384_000
    /// Channel counts the daemon accepts from clients.
    public static let acceptedChannels = 1...32

    /// Throws `AudioError.unsupportedFormat` unless the rate and the channel count are ones the daemon accepts
    /// (so no header can make conversion cost more than its declared length at `acceptedRates.upperBound`).
    public func checkAccepted() throws {
        guard Self.acceptedChannels.contains(channelCount) else {
            throw AudioError.unsupportedFormat(
                reason: "channel count \(channelCount) (supported: \(Self.acceptedChannels.lowerBound)-\(Self.acceptedChannels.upperBound))")
        }
        guard Self.acceptedRates.contains(sampleRate) else {
            throw AudioError.unsupportedFormat(
                reason: "sample rate \(sampleRate) Hz (supported: \(Self.acceptedRates.lowerBound)-\(Self.acceptedRates.upperBound))")
        }
    }

    /// Seconds of audio in `frames` frames.
    public func seconds(frames: Int) -> Double { Double(frames) / Double(sampleRate) }
}

/// The one PCM sample decoder.
public enum PCM {
    /// Decodes the whole frames in `bytes` (little-endian, interleaved) to interleaved Floats; a trailing
    /// partial sample is ignored.
    public static func decode(_ bytes: UnsafeRawBufferPointer, encoding: WAVSampleEncoding) -> [Float] {
        let count = bytes.count / encoding.bytesPerSample
        var out = [Float](repeating: 0, count: count)
        guard count > 0 else { return out }
        out.withUnsafeMutableBufferPointer { dst in
            switch encoding {
            case .integer(bits: 8):
                for i in 0..<count { dst[i] = (Float(bytes[i]) - 128) * (1.0 / 128.0) }
            case .integer(bits: 16):
                for i in 0..<count {
                    let v = Int16(bitPattern: UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8)
                    dst[i] = Float(v) * (1.0 / 32768.0)
                }
            case .integer(bits: 24):
                for i in 0..<count {
                    let b = 3 * i
                    // Place the 24 bits at the top of an Int32 and shift back down to sign-extend.
                    let u = UInt32(bytes[b]) << 8 | UInt32(bytes[b + 1]) << 16 | UInt32(bytes[b + 2]) << 24
                    dst[i] = Float(Int32(bitPattern: u) >> 8) * (1.0 / 8388608.0)
                }
            case .integer(bits: 32):
                for i in 0..<count {
                    let v = Int32(bitPattern: u32(bytes, 4 * i))
                    dst[i] = Float(Double(v) * (1.0 / 2147483648.0))
                }
            case .float(bits: 32):
                for i in 0..<count { dst[i] = Float(bitPattern: u32(bytes, 4 * i)) }
            case .float(bits: 64):
                for i in 0..<count {
                    let lo = UInt64(u32(bytes, 8 * i)), hi = UInt64(u32(bytes, 8 * i + 4))
                    dst[i] = Float(Double(bitPattern: lo | hi << 32))
                }
            default:
                // WAVDecoder and PCMFormat(width:) admit no other encoding.
                preconditionFailure("unsupported PCM encoding \(encoding)")
            }
        }
        return out
    }

    /// Decodes the whole frames in `bytes` and averages their channels to mono.
    public static func decodeMono(_ bytes: UnsafeRawBufferPointer, format: PCMFormat) -> [Float] {
        let frames = bytes.count / format.bytesPerFrame
        let interleaved = decode(UnsafeRawBufferPointer(rebasing: bytes[0..<(frames * format.bytesPerFrame)]),
                                 encoding: format.encoding)
        return downmixToMono(interleaved, channelCount: format.channelCount)
    }

    static func u32(_ p: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(p[at]) | UInt32(p[at + 1]) << 8 | UInt32(p[at + 2]) << 16 | UInt32(p[at + 3]) << 24
    }
}

/// Converts a PCM stream, fed in pieces, to mono float samples at `outputRate` (16 kHz for Whisper).
/// Holds no more than one incomplete frame of input and the resampler's filter history.
/// Use from one thread at a time.
public final class PCMConverter {
    /// The input format.
    public let format: PCMFormat
    /// The output sample rate.
    public let outputRate: Int
    private let resampler: Resampler?
    private var partial: [UInt8] = []
    /// Whole input frames received so far.
    public private(set) var framesIn = 0
    /// Samples produced so far.
    public private(set) var samplesOut = 0

    /// Creates a converter. Throws `AudioError.invalidArgument` for a rate or channel count below 1.
    public init(format: PCMFormat, outputRate: Int = 16000) throws {
        guard format.channelCount >= 1, format.sampleRate >= 1, outputRate >= 1 else {
            throw AudioError.invalidArgument("PCM format needs at least one channel and a positive rate")
        }
        self.format = format
        self.outputRate = outputRate
        resampler = format.sampleRate == outputRate ? nil : try Resampler(from: format.sampleRate, to: outputRate)
    }

    /// Output samples a whole stream of `frames` input frames yields.
    public func outputCount(frames: Int) -> Int {
        resampler?.outputCount(forInputCount: frames) ?? frames
    }

    /// Most samples that converting `byteCount` more bytes and then finishing can still add.
    public func outputBound(afterAdding byteCount: Int) -> Int {
        let frames = framesIn + (partial.count + byteCount) / format.bytesPerFrame
        return outputCount(frames: frames) - samplesOut
    }

    /// Bytes of working memory besides the output: the filter table and the incomplete frame.
    public var workingBytes: Int { (resampler?.tableBytes ?? 0) + format.bytesPerFrame }

    /// Decodes the whole frames of `bytes` (with any incomplete frame left from the previous call) and
    /// appends the samples that are now determined to `output`.
    public func convert(_ bytes: UnsafeRawBufferPointer, appendingTo output: inout [Float]) {
        let frameSize = format.bytesPerFrame
        var mono: [Float]
        if partial.isEmpty {
            let whole = bytes.count - bytes.count % frameSize
            mono = PCM.decodeMono(UnsafeRawBufferPointer(rebasing: bytes[0..<whole]), format: format)
            partial = Array(bytes[whole...])
        } else {
            // Complete the frame left over from the previous piece, then the rest.
            let need = frameSize - partial.count
            if bytes.count < need {
                partial += bytes
                return
            }
            var frame = partial
            frame += bytes[0..<need]
            mono = frame.withUnsafeBytes { PCM.decodeMono($0, format: format) }
            let rest = UnsafeRawBufferPointer(rebasing: bytes[need...])
            let whole = rest.count - rest.count % frameSize
            mono += PCM.decodeMono(UnsafeRawBufferPointer(rebasing: rest[0..<whole]), format: format)
            partial = Array(rest[whole...])
        }
        framesIn += mono.count
        if let resampler { mono = resampler.process(mono) }
        samplesOut += mono.count
        output += mono
    }

    /// Ends the stream: appends the resampler's last samples. An incomplete last frame is dropped.
    public func finish(appendingTo output: inout [Float]) {
        partial = []
        guard let resampler else { return }
        let tail = resampler.flush()
        samplesOut += tail.count
        output += tail
    }
}
