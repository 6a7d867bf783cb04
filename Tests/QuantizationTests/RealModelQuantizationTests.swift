import Audio
import Foundation
import WhisperEngine
import WhisperTestSupport
import XCTest

@testable import Quantization

/// Compensated rounding on the real tiny.en: second moments from real speech, checked on
/// speech the calibration never heard.
final class RealModelQuantizationTests: XCTestCase {
    func testCompensatedRoundingKeepsTheEncoderCloserOnUnheardSpeech() throws {
        let model = try Fixtures.model("tiny.en")
        let covariance = InputCovariance()
        let recognizer = try SpeechRecognizer(model: model, threads: 2, observer: covariance)
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        for file in ["jfk.wav", "librivox-0870.wav", "librivox-0880.wav"] {
            _ = try recognizer.transcribe(samples: try loadAudio(path: try Fixtures.sample(file)), options: options)
        }
        XCTAssertEqual(covariance.rows(of: "encoder/conv2"), 3 * 1500, "every encoder frame of the three windows")
        XCTAssertGreaterThan(covariance.rows(of: "decoder/embeddings"), 20)

        func quantized(_ rounding: RoundingMethod) throws -> WhisperWeights {
            try Quantizer.quantize(model: model, statistics: nil,
                                   options: QuantizationOptions(target: .uniform(bits: 3), rounding: rounding),
                                   covariance: covariance).weights
        }
        let nearest = try quantized(.nearest), compensated = try quantized(.compensated)
        XCTAssertEqual(nearest.byteSize, compensated.byteSize)

        // Another speaker and another recording: the encoder's output error, relative to its size.
        let frontEnd = try LogMelFrontEnd(nMels: 80)
        let unheard = try loadAudio(path: try Fixtures.sample("librivox-0920.wav"))
        let mel = frontEnd.compute(samples: unheard, paddingSamples: WhisperAudio.nSamples).window(atFrame: 0).values
        func encoded(_ w: WhisperWeights) -> [Float] { WhisperNetwork(weights: w, threads: 2).encode(mel: mel).values }
        let reference = encoded(model.weights)
        func relativeError(_ y: [Float]) -> Double {
            var e = 0.0, n = 0.0
            for (a, b) in zip(reference, y) { e += Double(a - b) * Double(a - b); n += Double(a) * Double(a) }
            return e / n
        }
        // Measured: 0.064 against 0.184 (3 bits, every layer).
        let en = relativeError(encoded(nearest)), ec = relativeError(encoded(compensated))
        XCTAssertLessThan(ec, 0.8 * en, "compensated \(ec) vs nearest \(en)")
    }
}
