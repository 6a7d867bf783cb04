import Foundation
import XCTest
@testable import Audio

/// The deterministic 2 s test signal, identical to `test_signal()` in scripts/reference/logmel_reference.py.
enum ReferenceSignal {
    static func samples() -> [Float] {
        (0..<32000).map { n -> Float in
            if n >= 24000 && n < 28000 { return 0 }
            let t = Double(n) / 16000
            let x = 0.5 * sin(2 * Double.pi * 440.0 * t)
                + 0.25 * sin(2 * Double.pi * 3000.0 * t + 0.3)
                + 0.2 * sin(2 * Double.pi * (100.0 * t + (7000.0 - 100.0) * t * t / (2 * 2.0)))
            return Float(x)
        }
    }
}

final class LogMelTests: XCTestCase {
    private func assertMatchesShippedFilters(_ bank: MelFilterbank, _ reference: [(start: Int, weights: [Float])],
                                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(bank.nMels, reference.count, file: file, line: line)
        XCTAssertEqual(bank.nBins, 201, file: file, line: line)
        var worst: Float = 0
        for (m, row) in reference.enumerated() {
            var expected = [Float](repeating: 0, count: 201)
            for (i, w) in row.weights.enumerated() { expected[row.start + i] = w }
            for b in 0..<201 {
                let got = bank.weights[m * 201 + b]
                if expected[b] == 0 {
                    // Zeros of the triangle must be exact zeros, or the support would differ.
                    XCTAssertEqual(got, 0, "filter \(m) bin \(b)", file: file, line: line)
                } else {
                    worst = max(worst, abs(got - expected[b]) / expected[b])
                }
            }
        }
        XCTAssertLessThan(worst, 1e-5, "largest relative weight error", file: file, line: line)
    }

    func testFilterbankMatchesWhisperMelFilters() throws {
        assertMatchesShippedFilters(try MelFilterbank(nMels: 80), ReferenceData.mel80)
        assertMatchesShippedFilters(try MelFilterbank(nMels: 128), ReferenceData.mel128)
    }

    func testSlaneyMelScale() {
        XCTAssertEqual(MelFilterbank.hzToMel(1000), 15, accuracy: 1e-12)
        XCTAssertEqual(MelFilterbank.hzToMel(200), 3, accuracy: 1e-12)
        XCTAssertEqual(MelFilterbank.hzToMel(6400), 42, accuracy: 1e-9)  // 27 mel per factor 6.4 above 1 kHz
        for hz in [0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0] {
            XCTAssertEqual(MelFilterbank.melToHz(MelFilterbank.hzToMel(hz)), hz, accuracy: 1e-9)
        }
        XCTAssertThrowsError(try MelFilterbank(nMels: 0))
    }

    private func compare(_ spec: LogMelSpectrogram, frames: [Int], values: [Float], label: String,
                         file: StaticString = #filePath, line: UInt = #line) {
        var worst: Float = 0
        for (i, f) in frames.enumerated() {
            for m in 0..<spec.nMels {
                worst = max(worst, abs(spec[m, f] - values[i * spec.nMels + m]))
            }
        }
        print("\(label): largest |difference| from the numpy reference \(worst)")
        XCTAssertLessThan(worst, 1e-3, label, file: file, line: line)
    }

    func testLogMelMatchesNumpyReference80() throws {
        let frontEnd = try LogMelFrontEnd(nMels: 80)
        let spec = frontEnd.compute(samples: ReferenceSignal.samples(), paddingSamples: 0)
        XCTAssertEqual(spec.nMels, 80)
        XCTAssertEqual(spec.nFrames, ReferenceData.caseAFrameCount)
        XCTAssertEqual(spec.values.count, 80 * 200)
        compare(spec, frames: ReferenceData.caseAFrames, values: ReferenceData.caseAValues, label: "80 mels")
        var worstMean: Float = 0
        for f in 0..<spec.nFrames {
            let mean = (0..<80).reduce(Float(0)) { $0 + spec[$1, f] } / 80
            worstMean = max(worstMean, abs(mean - ReferenceData.caseAFrameMeans[f]))
        }
        XCTAssertLessThan(worstMean, 1e-3, "per-frame means over all 200 frames")
        // The silent stretch (frames 150..<175) sits at the clamp floor: global max − 8, scaled.
        let maxValue = spec.values.max()!
        XCTAssertEqual(spec[40, 162], maxValue - 2, accuracy: 1e-6)
    }

    func testLogMelMatchesNumpyReference128WithPadding() throws {
        let frontEnd = try LogMelFrontEnd(nMels: 128)
        let spec = frontEnd.compute(samples: ReferenceSignal.samples(), paddingSamples: 16000)
        XCTAssertEqual(spec.nMels, 128)
        XCTAssertEqual(spec.nFrames, ReferenceData.caseBFrameCount)
        compare(spec, frames: ReferenceData.caseBFrames, values: ReferenceData.caseBValues, label: "128 mels, padded")
    }

    func testFrameCountAndShortInputs() throws {
        let frontEnd = try LogMelFrontEnd()
        XCTAssertEqual(frontEnd.compute(samples: [], paddingSamples: 0).nFrames, 0)
        XCTAssertEqual(frontEnd.compute(samples: [Float](repeating: 0.1, count: 159)).nFrames, 0)
        XCTAssertEqual(frontEnd.compute(samples: [Float](repeating: 0.1, count: 160)).nFrames, 1)
        XCTAssertEqual(frontEnd.compute(samples: [Float](repeating: 0.1, count: 1000), paddingSamples: 480_000).nFrames, 3006)
        // Shorter than the reflect padding: still defined, finite, and within Whisper's value range.
        let tiny = frontEnd.compute(samples: [0.5, -0.25, 0.125], paddingSamples: 200)
        XCTAssertEqual(tiny.nFrames, 1)
        XCTAssertTrue(tiny.values.allSatisfy { $0.isFinite })
        // All-zero input: every value is log10(1e-10) scaled = (-10 + 4) / 4.
        let silent = frontEnd.compute(samples: [Float](repeating: 0, count: 1600))
        XCTAssertTrue(silent.values.allSatisfy { $0 == silent.values[0] })
        XCTAssertEqual(silent.values[0], -1.5, accuracy: 1e-6)
    }

    func testPureToneLandsInItsMelBand() throws {
        let frontEnd = try LogMelFrontEnd()
        let samples = (0..<16000).map { Float(0.5 * sin(2 * Double.pi * 1000 * Double($0) / 16000)) }
        let spec = frontEnd.compute(samples: samples)
        let frame = 50
        let loudest = (0..<80).max { spec[$0, frame] < spec[$1, frame] }!
        // The filter whose centre is nearest 1 kHz (centres are the mel points 1...80 of 0...8 kHz).
        let centres = (1...80).map { MelFilterbank.melToHz(Double($0) * MelFilterbank.hzToMel(8000) / 81) }
        let nearest = centres.indices.min { abs(centres[$0] - 1000) < abs(centres[$1] - 1000) }!
        XCTAssertEqual(loudest, nearest)
    }

    func testWindowPadsWithZerosAfterLog() throws {
        let frontEnd = try LogMelFrontEnd()
        let spec = frontEnd.compute(samples: ReferenceSignal.samples())  // 200 frames
        let w = spec.window(atFrame: 150)
        XCTAssertEqual(w.nMels, 80)
        XCTAssertEqual(w.nFrames, 3000)
        for m in [0, 39, 79] {
            for f in 0..<50 { XCTAssertEqual(w[m, f], spec[m, 150 + f]) }
            for f in 50..<3000 { XCTAssertEqual(w[m, f], 0) }
        }
        let inside = spec.window(atFrame: 10, frameCount: 20)
        XCTAssertEqual(inside.values.count, 80 * 20)
        XCTAssertEqual(inside[7, 0], spec[7, 10])
        XCTAssertEqual(inside[7, 19], spec[7, 29])
        XCTAssertTrue(spec.window(atFrame: 500, frameCount: 4).values.allSatisfy { $0 == 0 })
    }

    /// Decoding reads the audio's own frames (samples.count / 160): with nFFT samples of padding
    /// they, and the global maximum the clamp uses, are those of Whisper's 30 s of padding.
    func testTheAudiosFramesNeedOnlyNFFTSamplesOfPadding() throws {
        let frontEnd = try LogMelFrontEnd()
        // A quiet signal (with a silent gap, clamped) and a loud last 10 ms: the frames that hold
        // the global maximum straddle the end of the audio.
        var samples = ReferenceSignal.samples().map { $0 * 0.05 } + [Float](repeating: 0, count: 1234)
        for i in (samples.count - 160)..<samples.count { samples[i] = i % 2 == 0 ? 0.9 : -0.9 }
        let content = samples.count / WhisperAudio.hopLength
        let whole = frontEnd.compute(samples: samples, paddingSamples: WhisperAudio.nSamples)
        let short = frontEnd.compute(samples: samples, paddingSamples: WhisperAudio.nFFT)
        XCTAssertGreaterThanOrEqual(short.nFrames, content)
        // The same up to float rounding (the products run over blocks of another size).
        func largestDifference(_ a: LogMelSpectrogram, _ b: LogMelSpectrogram, frames: Int) -> Float {
            let x = a.window(atFrame: 0, frameCount: frames).values, y = b.window(atFrame: 0, frameCount: frames).values
            return zip(x, y).map { abs($0 - $1) }.max() ?? 0
        }
        XCTAssertLessThan(largestDifference(short, whole, frames: content), 1e-5)
        // Less padding misses the frames that straddle the end: the clamp moves.
        let tooLittle = frontEnd.compute(samples: samples, paddingSamples: 0)
        XCTAssertGreaterThan(largestDifference(tooLittle, whole, frames: content - 2), 0.01)
    }

    func testFastLog10() {
        var worst: Double = 0
        var x: Float = 1e-10
        while x < 1e4 {
            worst = max(worst, abs(Double(fastLog10(x)) - log10(Double(x))))
            x = x.nextUp * 1.0007
        }
        for v: Float in [1, 10, 1e-10, 0.5, 2, 1.4142135, 1.4142137, 3.0e-7] {
            worst = max(worst, abs(Double(fastLog10(v)) - log10(Double(v))))
        }
        XCTAssertLessThan(worst, 2e-6)
        XCTAssertEqual(fastLog10(1), 0)
    }

    func testThirtySecondsIsFast() throws {
        let frontEnd = try LogMelFrontEnd()
        let samples = (0..<480_000).map { Float(0.3 * sin(Double($0) * 0.05) + 0.1 * sin(Double($0) * 0.7)) }
        _ = frontEnd.compute(samples: samples)  // warm up OpenBLAS threads
        let start = Date()
        let runs = 5
        var spec: LogMelSpectrogram?
        for _ in 0..<runs { spec = frontEnd.compute(samples: samples, paddingSamples: 0) }
        let ms = Date().timeIntervalSince(start) * 1000 / Double(runs)
        print(String(format: "log-mel of 30 s (3000 frames): %.2f ms per call", ms))
        XCTAssertEqual(spec?.nFrames, 3000)
        // Generous bound: debug builds and a shared 2-core machine. Release measures a few ms.
        XCTAssertLessThan(ms, 1000)
    }
}
