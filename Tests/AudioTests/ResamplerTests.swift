import Foundation
import XCTest
@testable import Audio

final class ResamplerTests: XCTestCase {
    private func tone(_ hz: Double, rate: Int, seconds: Double, amplitude: Double = 0.5, phase: Double = 0.1) -> [Float] {
        let n = Int(Double(rate) * seconds)
        return (0..<n).map { Float(amplitude * sin(2 * Double.pi * hz * Double($0) / Double(rate) + phase)) }
    }

    /// Least-squares fit of a sinusoid at `hz` over `segment`: its amplitude and the RMS of what is left over.
    private func fit(_ y: ArraySlice<Float>, hz: Double, rate: Int) -> (amplitude: Double, residualRMS: Double) {
        var cc = 0.0, ss = 0.0, cs = 0.0, yc = 0.0, ys = 0.0
        for (i, v) in y.enumerated() {
            let w = 2 * Double.pi * hz * Double(i) / Double(rate)
            let c = cos(w), s = sin(w)
            cc += c * c; ss += s * s; cs += c * s; yc += Double(v) * c; ys += Double(v) * s
        }
        let det = cc * ss - cs * cs
        let a = (yc * ss - ys * cs) / det, b = (ys * cc - yc * cs) / det
        var res = 0.0
        for (i, v) in y.enumerated() {
            let w = 2 * Double.pi * hz * Double(i) / Double(rate)
            let r = Double(v) - a * cos(w) - b * sin(w)
            res += r * r
        }
        return ((a * a + b * b).squareRoot(), (res / Double(y.count)).squareRoot())
    }

    private func rms(_ y: ArraySlice<Float>) -> Double {
        (y.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(y.count)).squareRoot()
    }

    private func db(_ ratio: Double) -> Double { 20 * log10(ratio) }

    /// Checks a passband tone and a tone above the output Nyquist frequency for one rate pair.
    private func checkResponse(from inRate: Int, to outRate: Int, pass: Double, stop: Double,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let amplitude = 0.5
        let passOut = try Resampler.resample(tone(pass, rate: inRate, seconds: 1, amplitude: amplitude), from: inRate, to: outRate)
        XCTAssertEqual(passOut.count, outRate, file: file, line: line)
        // Skip the edges, where the filter runs into the zeros outside the signal.
        let mid = passOut[(outRate / 10)..<(outRate - outRate / 10)]
        let (a, residual) = fit(mid, hz: pass, rate: outRate)
        let gainDB = db(a / amplitude)
        XCTAssertLessThan(abs(gainDB), 0.1, "passband gain \(gainDB) dB", file: file, line: line)
        // Nearly everything is the tone at the intended frequency: a wrong frequency leaves a large residual.
        XCTAssertLessThan(db(residual / amplitude), -70, "residual after fitting \(pass) Hz", file: file, line: line)

        let stopOut = try Resampler.resample(tone(stop, rate: inRate, seconds: 1, amplitude: amplitude), from: inRate, to: outRate)
        let level = db(rms(stopOut[(outRate / 10)..<(outRate - outRate / 10)]) / (amplitude / 2.0.squareRoot()))
        XCTAssertLessThan(level, -60, "\(stop) Hz tone comes out at \(level) dB", file: file, line: line)
        print("resample \(inRate)->\(outRate): \(pass) Hz gain \(String(format: "%.4f", gainDB)) dB, \(stop) Hz at \(String(format: "%.1f", level)) dB")
    }

    func test48kTo16kFrequencyResponse() throws {
        try checkResponse(from: 48000, to: 16000, pass: 1000, stop: 12000)
        // Also just above the output Nyquist frequency, and high in the passband.
        try checkResponse(from: 48000, to: 16000, pass: 5000, stop: 8600)
    }

    func test44100To16kFrequencyResponse() throws {
        try checkResponse(from: 44100, to: 16000, pass: 1000, stop: 12000)
        try checkResponse(from: 44100, to: 16000, pass: 3150, stop: 19000)
    }

    func testUpsamplingKeepsToneAndAddsNoImages() throws {
        let out = try Resampler.resample(tone(1000, rate: 16000, seconds: 1), from: 16000, to: 48000)
        XCTAssertEqual(out.count, 48000)
        let mid = out[4800..<43200]
        let (a, residual) = fit(mid, hz: 1000, rate: 48000)
        XCTAssertLessThan(abs(db(a / 0.5)), 0.1)
        // Images of 1 kHz at 15 and 17 kHz would show up in the residual.
        XCTAssertLessThan(db(residual / 0.5), -70)
    }

    func testOddRatesAndLengths() throws {
        for (inRate, outRate) in [(8000, 16000), (11025, 16000), (22050, 16000), (96000, 16000), (16000, 44100), (16001, 16000)] {
            let input = tone(440, rate: inRate, seconds: 0.25)
            let out = try Resampler.resample(input, from: inRate, to: outRate)
            let expected = (input.count * outRate + inRate - 1) / inRate
            XCTAssertEqual(out.count, expected, "\(inRate)->\(outRate)")
            let (a, _) = fit(out[(out.count / 5)..<(out.count * 4 / 5)], hz: 440, rate: outRate)
            XCTAssertEqual(a, 0.5, accuracy: 0.006, "\(inRate)->\(outRate)")
        }
    }

    func testDCIsPreserved() throws {
        let out = try Resampler.resample([Float](repeating: 0.3, count: 4410), from: 44100, to: 16000)
        for v in out[100..<(out.count - 100)] { XCTAssertEqual(v, 0.3, accuracy: 1e-5) }
    }

    func testStreamingMatchesOneShot() throws {
        var rng = SystemRandomNumberGenerator()
        let input: [Float] = (0..<20000).map { _ in Float.random(in: -1...1, using: &rng) }
        for (inRate, outRate) in [(44100, 16000), (48000, 16000), (16000, 22050)] {
            let whole = try Resampler.resample(input, from: inRate, to: outRate)
            let r = try Resampler(from: inRate, to: outRate)
            var streamed: [Float] = []
            var i = 0
            while i < input.count {
                let n = min(input.count - i, Int.random(in: 1...700, using: &rng))
                streamed += r.process(Array(input[i..<(i + n)]))
                i += n
            }
            streamed += r.flush()
            XCTAssertEqual(streamed.count, whole.count, "\(inRate)->\(outRate)")
            XCTAssertEqual(streamed, whole, "\(inRate)->\(outRate)")
            // After flush the resampler starts a fresh stream.
            XCTAssertEqual(r.process(input) + r.flush(), whole)
        }
    }

    func testEqualRatesAndInvalidRates() throws {
        let x: [Float] = [0.1, -0.2, 0.3]
        XCTAssertEqual(try Resampler.resample(x, from: 16000, to: 16000), x)
        XCTAssertEqual(try Resampler.resample([], from: 48000, to: 16000), [])
        XCTAssertThrowsError(try Resampler(from: 0, to: 16000)) { error in
            XCTAssertEqual(error as? AudioError, .invalidArgument("sample rates must be positive, got 0 -> 16000"))
        }
        XCTAssertThrowsError(try Resampler.resample(x, from: 16000, to: -1))
    }

    func testDownmix() {
        XCTAssertEqual(downmixToMono([1, 0, 0.5, 0.5, -1, 0], channelCount: 2), [0.5, 0.5, -0.5])
        XCTAssertEqual(downmixToMono([0.25, 0.5], channelCount: 1), [0.25, 0.5])
        XCTAssertEqual(downmixToMono([0.3, 0.6, 0.9, 1], channelCount: 3), [0.6], "a partial trailing frame is ignored")
    }

    func testBesselI0() {
        // Reference values of I0 (Abramowitz & Stegun table 9.8).
        XCTAssertEqual(Resampler.besselI0(0), 1, accuracy: 1e-15)
        XCTAssertEqual(Resampler.besselI0(1), 1.2660658777520082, accuracy: 1e-13)
        XCTAssertEqual(Resampler.besselI0(5), 27.239871823604442, accuracy: 1e-11)
    }
}
