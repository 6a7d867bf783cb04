import Foundation
import XCTest
@testable import Audio

final class PCMTests: XCTestCase {
    private func sine(_ frequency: Double, rate: Int, seconds: Double) -> [Float] {
        (0..<Int(Double(rate) * seconds)).map { Float(0.5 * sin(2 * Double.pi * frequency * Double($0) / Double(rate))) }
    }

    private func rms(_ x: ArraySlice<Float>) -> Float { sqrt(x.map { $0 * $0 }.reduce(0, +) / Float(x.count)) }

    private func monoFloat(_ bytes: [UInt8], width: Int, channels: Int) throws -> [Float] {
        let format = try PCMFormat(width: width, channelCount: channels, sampleRate: 16000)
        return bytes.withUnsafeBytes { PCM.decodeMono($0, format: format) }
    }

    func testEveryWidthAndDownmix() throws {
        // One frame of two channels: left = +half scale, right = -quarter scale.
        XCTAssertEqual(try monoFloat([0x00, 0x40, 0x00, 0xE0], width: 2, channels: 2), [0.125])
        XCTAssertEqual(try monoFloat([0xC0, 0x60], width: 1, channels: 2), [0.125])
        XCTAssertEqual(try monoFloat([0x00, 0x00, 0x40, 0x00, 0x00, 0xE0], width: 3, channels: 2), [0.125])
        XCTAssertEqual(try monoFloat([0, 0, 0, 0x40, 0, 0, 0, 0xE0], width: 4, channels: 2), [0.125])
        XCTAssertEqual(try monoFloat([0x00, 0x80], width: 2, channels: 1), [-1])
        // A trailing partial frame is ignored.
        XCTAssertEqual(try monoFloat([0x00, 0x80, 0x01], width: 2, channels: 1), [-1])
        XCTAssertThrowsError(try PCMFormat(width: 5, channelCount: 1, sampleRate: 16000))
    }

    /// The daemon's intake accepts 1-384 kHz and 1-32 channels; anything else is refused from the header.
    func testAcceptedFormats() throws {
        XCTAssertNoThrow(try PCMFormat(width: 2, channelCount: 1, sampleRate: 1000).checkAccepted())
        XCTAssertNoThrow(try PCMFormat(width: 1, channelCount: 32, sampleRate: 384_000).checkAccepted())
        for (rate, channels) in [(1, 1), (999, 1), (384_001, 1), (16000, 0), (16000, 33)] {
            XCTAssertThrowsError(try PCMFormat(width: 2, channelCount: channels, sampleRate: rate).checkAccepted()) { error in
                guard case AudioError.unsupportedFormat = error else { return XCTFail("\(error)") }
            }
        }
        XCTAssertEqual("\(AudioError.unsupportedFormat(reason: "sample rate 1 Hz (supported: 1000-384000)"))",
                       "unsupported sample rate 1 Hz (supported: 1000-384000)")
    }

    /// Fed in pieces of any size (frames straddling pieces), the converter gives exactly what one-shot decoding
    /// and resampling give, and exactly the count it promised.
    func testConverterInPiecesMatchesOneShot() throws {
        let format = PCMFormat(encoding: .integer(bits: 24), channelCount: 2, sampleRate: 44100)
        var bytes: [UInt8] = []
        for (i, v) in sine(440, rate: 44100, seconds: 0.5).enumerated() {
            for channel in 0..<2 {
                let value = Int32(Double(v) * (channel == 0 ? 1 : -0.5) * 8_388_607)
                let u = UInt32(bitPattern: value)
                bytes += [UInt8(u & 0xFF), UInt8((u >> 8) & 0xFF), UInt8((u >> 16) & 0xFF)]
            }
            _ = i
        }
        let frames = bytes.count / 6
        let mono = bytes.withUnsafeBytes { PCM.decodeMono($0, format: format) }
        let expected = try Resampler.resample(mono, from: 44100, to: 16000)

        for piece in [1, 5, 6, 1000, 4097] {
            let converter = try PCMConverter(format: format)
            XCTAssertEqual(converter.outputCount(frames: frames), expected.count)
            var out: [Float] = []
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + piece)
                XCTAssertLessThanOrEqual(out.count + converter.outputBound(afterAdding: end - offset), expected.count)
                bytes[offset..<end].withUnsafeBytes { converter.convert($0, appendingTo: &out) }
                offset = end
            }
            converter.finish(appendingTo: &out)
            XCTAssertEqual(out, expected, "pieces of \(piece) bytes")
        }
    }

    func testResampledToneMatchesTheIdealTone() throws {
        for rate in [8000, 22050, 44100, 48000] {
            let output = try Resampler.resample(sine(1000, rate: rate, seconds: 1), from: rate, to: 16000)
            XCTAssertEqual(output.count, 16000, "rate \(rate)")
            let ideal = sine(1000, rate: 16000, seconds: 1)
            let errors = (200..<15800).map { output[$0] - ideal[$0] }
            XCTAssertLessThan(rms(errors[...]), 0.005, "rate \(rate)")
        }
    }

    /// Rates whose ratio to 16 kHz reduces to a huge L (44101 Hz: L = 16000) use the interpolated table: the
    /// table stays within 256 KiB and the tone comes out as with a nearby exact ratio.
    func testAwkwardRatesUseABoundedTable() throws {
        for rate in [44101, 383_999, 1001] {
            let resampler = try Resampler(from: rate, to: 16000)
            XCTAssertLessThanOrEqual(resampler.tableBytes, 256 * 1024, "rate \(rate)")
            let input = sine(200, rate: rate, seconds: 0.5)
            let output = try Resampler.resample(input, from: rate, to: 16000)
            XCTAssertEqual(output.count, resampler.outputCount(forInputCount: input.count))
            let ideal = sine(200, rate: 16000, seconds: 0.5)
            let errors = (400..<7600).map { output[$0] - ideal[$0] }
            XCTAssertLessThan(rms(errors[...]), 0.005, "rate \(rate)")
        }
    }
}
