// Module `Audio`: see README "Architecture".
//
// What lives here:
//   Audio.swift      errors, the decoded-audio buffer, the one-call loaders
//   WAV.swift        RIFF/WAVE decoding and raw s16le PCM conversion
//   PCM.swift        the PCM sample decoder, streaming conversion to 16 kHz mono
//   Resampler.swift  windowed-sinc (Kaiser) rational resampler, channel downmix
//   LogMel.swift     Whisper's log-mel front end (STFT + Slaney mel + log scaling)

import Foundation

/// Everything that can go wrong while reading, decoding or converting audio.
///
/// Every case that concerns an input names its source (a file path, or the name the
/// caller gave to an in-memory buffer) so that a message in a log says which input failed.
public enum AudioError: Error, Equatable, CustomStringConvertible {
    /// The file could not be opened or read at all.
    case unreadable(source: String, reason: String)
    /// The bytes do not start with a `RIFF....WAVE` header.
    case notWAV(source: String, reason: String)
    /// The stream ends before a structure that has to be complete (header, `fmt ` chunk).
    case truncated(source: String, reason: String)
    /// A chunk the decoder needs (`fmt ` or `data`) does not occur in the file.
    case missingChunk(source: String, chunk: String)
    /// The sample encoding is well formed but not one this decoder handles
    /// (A-law, µ-law, ADPCM, MP3-in-WAV, odd bit depths, ...).
    case unsupportedEncoding(source: String, reason: String)
    /// The header contradicts itself or describes something impossible (zero channels,
    /// zero sample rate, a block alignment that does not fit the sample size, ...).
    case invalidFormat(source: String, reason: String)
    /// A caller passed a parameter outside its domain (a non-positive sample rate, ...).
    case invalidArgument(String)
    /// A well-formed format outside what the daemon accepts from clients (a rate outside 1-384 kHz, more than
    /// 32 channels, a sample width other than 1-4 bytes).
    case unsupportedFormat(reason: String)

    /// A one-line, human-readable explanation naming the input and the reason.
    public var description: String {
        switch self {
        case let .unreadable(source, reason):
            return "cannot read audio file '\(source)': \(reason)"
        case let .notWAV(source, reason):
            return "'\(source)' is not a WAV file: \(reason)"
        case let .truncated(source, reason):
            return "'\(source)' is truncated: \(reason)"
        case let .missingChunk(source, chunk):
            return "'\(source)' has no '\(chunk)' chunk"
        case let .unsupportedEncoding(source, reason):
            return "'\(source)' uses an unsupported sample encoding: \(reason)"
        case let .invalidFormat(source, reason):
            return "'\(source)' has an invalid format header: \(reason)"
        case let .invalidArgument(reason):
            return "invalid audio argument: \(reason)"
        case let .unsupportedFormat(reason):
            return "unsupported \(reason)"
        }
    }
}

/// Decoded PCM audio: interleaved `Float` samples, nominally in [-1, 1).
///
/// Layout: `samples[frame * channelCount + channel]`, so `samples.count == frameCount * channelCount`.
public struct AudioBuffer: Equatable, Sendable {
    /// Frames per second.
    public var sampleRate: Int
    /// Number of interleaved channels (at least 1).
    public var channelCount: Int
    /// Interleaved samples, `frameCount * channelCount` of them.
    public var samples: [Float]

    /// Creates a buffer from interleaved samples. `samples.count` should be a multiple of `channelCount`.
    public init(sampleRate: Int, channelCount: Int, samples: [Float]) {
        self.sampleRate = sampleRate
        self.channelCount = channelCount
        self.samples = samples
    }

    /// Number of sample frames (one sample per channel each).
    public var frameCount: Int { channelCount > 0 ? samples.count / channelCount : 0 }

    /// Duration in seconds.
    public var duration: Double { sampleRate > 0 ? Double(frameCount) / Double(sampleRate) : 0 }

    /// The samples of one channel, de-interleaved. `channel` must be in `0..<channelCount`.
    public func channel(_ channel: Int) -> [Float] {
        precondition(channel >= 0 && channel < channelCount, "channel \(channel) out of range 0..<\(channelCount)")
        let n = frameCount
        var out = [Float](repeating: 0, count: n)
        samples.withUnsafeBufferPointer { src in
            for i in 0..<n { out[i] = src[i * channelCount + channel] }
        }
        return out
    }

    /// The mono mixdown: the average of all channels, frame by frame.
    public func mono() -> [Float] {
        downmixToMono(samples, channelCount: channelCount)
    }
}

/// Averages interleaved multichannel samples into one channel.
///
/// - Parameters:
///   - interleaved: `frames * channelCount` samples, `[frame * channelCount + channel]`.
///   - channelCount: number of channels, at least 1. Trailing samples that do not fill a frame are ignored.
/// - Returns: `frames` mono samples, each the arithmetic mean of its frame's channels.
public func downmixToMono(_ interleaved: [Float], channelCount: Int) -> [Float] {
    precondition(channelCount >= 1, "channelCount must be at least 1")
    if channelCount == 1 { return interleaved }
    let frames = interleaved.count / channelCount
    var out = [Float](repeating: 0, count: frames)
    let scale = 1 / Float(channelCount)
    interleaved.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBufferPointer { dst in
            for f in 0..<frames {
                var sum: Float = 0
                let base = f * channelCount
                for c in 0..<channelCount { sum += src[base + c] }
                dst[f] = sum * scale
            }
        }
    }
    return out
}

/// Reads a WAV file and returns it as mono samples at `targetRate` (Whisper wants 16000).
///
/// Channels are averaged, then the signal is resampled with the anti-aliased
/// windowed-sinc `Resampler` when the file's rate differs from `targetRate`.
/// - Throws: `AudioError` naming the file and the reason when it cannot be read or decoded.
public func loadAudio(path: String, targetRate: Int = 16000) throws -> [Float] {
    let buffer = try WAVDecoder.decode(contentsOf: path)
    return try conform(buffer, targetRate: targetRate)
}

/// Decodes WAV bytes held in memory (for example received over a socket) into mono samples at `targetRate`.
///
/// - Parameters:
///   - data: a complete RIFF/WAVE byte stream.
///   - targetRate: the output sample rate; 16000 for Whisper.
///   - name: how errors refer to this input.
/// - Throws: `AudioError` when the bytes are not a WAV stream this module decodes.
public func decodeAudio(data: Data, targetRate: Int = 16000, name: String = "<memory>") throws -> [Float] {
    let buffer = try WAVDecoder.decode(data: data, name: name)
    return try conform(buffer, targetRate: targetRate)
}

/// Downmixes to mono and resamples to `targetRate`.
private func conform(_ buffer: AudioBuffer, targetRate: Int) throws -> [Float] {
    guard targetRate > 0 else { throw AudioError.invalidArgument("target sample rate must be positive, got \(targetRate)") }
    let mono = buffer.mono()
    if buffer.sampleRate == targetRate { return mono }
    return try Resampler.resample(mono, from: buffer.sampleRate, to: targetRate)
}
