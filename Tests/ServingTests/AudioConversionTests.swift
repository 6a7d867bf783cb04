import Foundation
import XCTest
@testable import Serving

final class AudioConversionTests: XCTestCase {
    private func sine(_ frequency: Double, rate: Int, seconds: Double) -> [Float] {
        (0..<Int(Double(rate) * seconds)).map { Float(0.5 * sin(2 * Double.pi * frequency * Double($0) / Double(rate))) }
    }

    private func rms(_ x: ArraySlice<Float>) -> Float { sqrt(x.map { $0 * $0 }.reduce(0, +) / Float(x.count)) }

    func testResampledToneMatchesTheIdealTone() {
        for rate in [8000, 22050, 44100, 48000] {
            let output = AudioConversion.resampleTo16k(sine(1000, rate: rate, seconds: 1), rate: rate)
            XCTAssertEqual(output.count, 16000, "rate \(rate)")
            let ideal = sine(1000, rate: 16000, seconds: 1)
            let errors = (200..<15800).map { output[$0] - ideal[$0] }
            let errorRMS = rms(errors[...])
            XCTAssertLessThan(errorRMS, 0.005, "rate \(rate)")
        }
    }

    func testDownsamplingRemovesTonesAboveTheNewNyquistFrequency() {
        // 10 kHz cannot exist at 16 kHz; a resampler without a low-pass filter would fold it to 6 kHz.
        let output = AudioConversion.resampleTo16k(sine(10_000, rate: 48000, seconds: 1), rate: 48000)
        XCTAssertLessThan(rms(output[200..<15800]), 0.01)
        let kept = AudioConversion.resampleTo16k(sine(3_000, rate: 48000, seconds: 1), rate: 48000)
        XCTAssertEqual(rms(kept[200..<15800]), 0.3536, accuracy: 0.01)
    }

    func testPCMDecodingOfEveryWidthAndDownmix() {
        // One frame of two channels: left = +half scale, right = -quarter scale.
        XCTAssertEqual(AudioConversion.monoFloat(pcm: [0x00, 0x40, 0x00, 0xE0], width: 2, channels: 2), [0.125])
        XCTAssertEqual(AudioConversion.monoFloat(pcm: [0xC0, 0x60], width: 1, channels: 2), [0.125])
        XCTAssertEqual(AudioConversion.monoFloat(pcm: [0x00, 0x00, 0x40, 0x00, 0x00, 0xE0], width: 3, channels: 2), [0.125])
        XCTAssertEqual(AudioConversion.monoFloat(pcm: [0, 0, 0, 0x40, 0, 0, 0, 0xE0], width: 4, channels: 2), [0.125])
        XCTAssertEqual(AudioConversion.monoFloat(pcm: [0x00, 0x80], width: 2, channels: 1), [-1])
        XCTAssertThrowsError(try AudioConversion.validate(rate: 16000, width: 5, channels: 1))
        XCTAssertThrowsError(try AudioConversion.validate(rate: 16000, width: 2, channels: 0))
        XCTAssertThrowsError(try AudioConversion.validate(rate: 10, width: 2, channels: 1))
    }

    func testResamplingSpeed() {
        let input = sine(440, rate: 44100, seconds: 10)
        let started = Date()
        let output = AudioConversion.resampleTo16k(input, rate: 44100)
        let elapsed = Date().timeIntervalSince(started)
        print("resampling 10 s of 44.1 kHz audio to 16 kHz: \(String(format: "%.3f", elapsed)) s (debug build)")
        XCTAssertEqual(output.count, 160000)
    }
}
