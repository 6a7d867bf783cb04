import Audio
import Foundation
import Quantization
import TestSupport
import WhisperEngine
import XCTest

/// A statistics pass behind a quantized model in service (`StatisticsPass.run(served:)`): the encoder's layers as
/// on the full-precision model, the decoder's behind the served model's encoder.
final class StatisticsPassTests: XCTestCase {
    func testTheDecodersStatisticsAreGatheredBehindTheServedEncoder() throws {
        let model = try Fixtures.model("tiny.en")
        let identity = ModelIdentity.of(model)
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        let options = QuantizationOptions(target: .uniform(bits: 3), groupSize: 64, calibrate: false)
        let served = model.withWeights(try Quantizer.quantize(model: model, statistics: nil, options: options).weights)

        let plain = try StatisticsPass.run(model: model, identity: identity, samples: samples)
        let behind = try StatisticsPass.run(model: model, identity: identity, samples: samples, served: served)
        XCTAssertEqual(behind.text, plain.text, "the text is the full-precision model's")
        XCTAssertEqual(behind.statistics.sampleCount, 1)
        // The same pass on the full-precision model with the served encoder's layers in place of its own.
        var encoder: [String: any WeightMatrix] = [:]
        for layer in served.weights.linearLayers where !WhisperWeights.isDecoderLayer(layer.name) {
            encoder[layer.name] = layer.weight
        }
        let hybrid = try StatisticsPass.run(model: model.withWeights(model.weights.replacing(encoder)), identity: identity,
                                            samples: samples)

        var decoderLayers = 0
        for layer in model.weights.linearLayers {
            let name = layer.name
            let gathered = try XCTUnwrap(behind.statistics.layer(name), name)
            let key = InputCovariance.key(for: name)
            let gatheredMoment = behind.statistics.secondMoments?.kept(key)
            XCTAssertNotNil(gatheredMoment, name)
            let expected = WhisperWeights.isDecoderLayer(name) ? hybrid.statistics : plain.statistics
            XCTAssertEqual(gathered, expected.layer(name), name)
            XCTAssertEqual(gatheredMoment, expected.secondMoments?.kept(key), name)
            if WhisperWeights.isDecoderLayer(name) {
                decoderLayers += 1
                // The cross-attention's keys and values read the encoder's output: a quantized encoder's differs.
                if name.hasSuffix("/attention/linear_1") {
                    XCTAssertNotEqual(gathered, plain.statistics.layer(name), name)
                    XCTAssertNotEqual(gatheredMoment, plain.statistics.secondMoments?.kept(key), name)
                }
            }
        }
        XCTAssertEqual(decoderLayers, 4 * 7 + 1, "tiny.en's four decoder blocks and the token embedding")
    }

    func testAServedModelThatIsNotAQuantizedFormOfTheModelIsRefused() throws {
        let model = try Fixtures.model("tiny.en")
        let samples = [Float](repeating: 0, count: 16_000)
        XCTAssertThrowsError(try StatisticsPass.run(model: model, identity: ModelIdentity.of(model), samples: samples,
                                                    served: model)) {
            XCTAssertEqual($0 as? StatisticsPassError, .servedModelNotQuantizedFromThisModel)
        }
    }
}
