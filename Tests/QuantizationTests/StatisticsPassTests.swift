import Audio
import Foundation
import Quantization
import TestSupport
import WhisperEngine
import XCTest

/// A statistics pass beside a quantized model in service (`StatisticsPass.run(served:)`): every layer as on the
/// full-precision model, and the decoder's layers also behind the served model's encoder when it stands in.
final class StatisticsPassTests: XCTestCase {
    private func served(_ model: WhisperModel, bits: Int) throws -> WhisperModel {
        let options = QuantizationOptions(target: .uniform(bits: bits), calibrate: false)
        return model.withWeights(try Quantizer.quantize(model: model, statistics: nil, options: options).weights)
    }

    func testTheDecoderIsAlsoObservedBehindTheServedEncoder() throws {
        let model = try Fixtures.model("tiny.en")
        let identity = ModelIdentity.of(model)
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        let served = try served(model, bits: 4)
        XCTAssertTrue(StatisticsPass.standsIn(served))

        let plain = try StatisticsPass.run(model: model, identity: identity, samples: samples)
        let both = try StatisticsPass.run(model: model, identity: identity, samples: samples, served: served)
        XCTAssertEqual(both.text, plain.text, "the text is the full-precision model's")
        XCTAssertEqual(both.statistics.sampleCount, 1)
        // The decoder's layers of the same pass on the full-precision model with the served encoder's layers in place
        // of its own, folded into the plain pass's.
        var encoder: [String: any WeightMatrix] = [:]
        for layer in served.weights.linearLayers where !WhisperWeights.isDecoderLayer(layer.name) {
            encoder[layer.name] = layer.weight
        }
        let hybrid = try StatisticsPass.run(model: model.withWeights(model.weights.replacing(encoder)), identity: identity,
                                            samples: samples).statistics
        let hybridRows = try XCTUnwrap(hybrid.layer("decoder/layer_0/ffn/linear_0")?.inputRowCount)

        var decoderLayers = 0
        for layer in model.weights.linearLayers {
            let name = layer.name, key = InputCovariance.key(for: name)
            let gathered = try XCTUnwrap(both.statistics.layer(name), name)
            let alone = try XCTUnwrap(plain.statistics.layer(name), name)
            XCTAssertNotNil(both.statistics.secondMoments?.kept(key), name)
            if WhisperWeights.isDecoderLayer(name) {
                decoderLayers += 1
                XCTAssertEqual(gathered.inputRowCount, alone.inputRowCount + (hybrid.layer(name)?.inputRowCount ?? 0), name)
                XCTAssertEqual(gathered.outputHistogram.total,
                               alone.outputHistogram.total + (hybrid.layer(name)?.outputHistogram.total ?? 0), name)
                if key == name {
                    XCTAssertEqual(both.statistics.secondMoments?.rows(of: name),
                                   (plain.statistics.secondMoments?.rows(of: name) ?? 0)
                                       + (hybrid.secondMoments?.rows(of: name) ?? 0), name)
                }
                // The cross-attention's keys and values read the encoder's output: a quantized encoder's differs.
                if name.hasSuffix("/attention/linear_1") {
                    XCTAssertNotEqual(both.statistics.secondMoments?.kept(key), plain.statistics.secondMoments?.kept(key), name)
                }
            } else {
                XCTAssertEqual(gathered, alone, name)
                XCTAssertEqual(both.statistics.secondMoments?.kept(key), plain.statistics.secondMoments?.kept(key), name)
            }
        }
        XCTAssertEqual(decoderLayers, 4 * 7 + 1, "tiny.en's four decoder blocks and the token embedding")
        XCTAssertGreaterThan(hybridRows, 0)
    }

    /// Below 4 bits, or a float model, the served model does not stand in: the pass is the plain one.
    func testAServedModelBelowFourBitsDoesNotStandIn() throws {
        let model = try Fixtures.model("tiny.en")
        let identity = ModelIdentity.of(model)
        let samples = try loadAudio(path: try Fixtures.sample("goforward.wav"))
        let plain = try StatisticsPass.run(model: model, identity: identity, samples: samples).statistics
        for served in [try served(model, bits: 3), model] {
            XCTAssertFalse(StatisticsPass.standsIn(served))
            let pass = try StatisticsPass.run(model: model, identity: identity, samples: samples, served: served).statistics
            XCTAssertEqual(StatisticsFile.digest(pass), StatisticsFile.digest(plain))
        }
    }

    /// A served model of another shape is refused (its encoder cannot stand in for this model's).
    func testAServedModelOfAnotherShapeIsRefused() throws {
        let model = try Fixtures.model("tiny.en")
        var rng = SeededGenerator(seed: 5)
        let small = RandomWhisper.make(rng: &rng)
        let options = QuantizationOptions(target: .uniform(bits: 4), calibrate: false)
        let quantized = try Quantizer.quantize(name: "small", weights: small, statistics: nil, options: options).weights
        let other = WhisperModel(name: "small", weights: quantized, config: model.config, tokenizer: model.tokenizer)
        XCTAssertTrue(StatisticsPass.standsIn(other))
        XCTAssertThrowsError(try StatisticsPass.run(model: model, identity: ModelIdentity.of(model),
                                                    samples: [Float](repeating: 0, count: 16_000), served: other)) {
            XCTAssertEqual($0 as? StatisticsPassError, .servedModelNotOfThisModel)
        }
    }
}
