import ArgumentParser
import Foundation
import Quantization
import Units
import WhisperEngine

extension CalibrationObjective: ExpressibleByArgument {}
extension SensitivityOrder: ExpressibleByArgument {}
extension RoundingMethod: ExpressibleByArgument {}

/// `--widths`.
enum WidthChoice: String, ExpressibleByArgument, CaseIterable {
    case median, error
}

/// `myqasr quantize`: a per-user quantized model under a memory budget.
struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a model for one user under a memory budget (myQASR).",
        discussion: """
            Every layer starts at --start-bits; layers are then lowered one width at a time \
            (8, 6, 5, 4, 3, 2) in order of their median |output| until the whole model (every \
            weight at its stored precision, scales, norms, biases and positions included) fits \
            the budget, so layers never differ by more than one width. With --calibrate, each \
            layer's clipping is then searched to keep its output close to the full-precision \
            output (off by default: on tiny.en it raised the word error rate, see \
            docs/myqasr-method.md).

            Statistics come from --stats (made by `myqasr stats`, as the daemon gathers them) or \
            from --calibration audio run through the model now. Codes are then chosen by \
            error-compensated rounding (GPTQ, in three passes that each refit the group scales by \
            least squares) from the layers' input second moments: whole, in memory only, with \
            --calibration; on diagonal blocks of 384 inputs, as the daemon keeps them, from the \
            file with --stats. `--budget B --stats FILE` with no other option makes exactly the \
            model the daemon serves from those statistics. With --calibration, the audio is run a second time \
            once the encoder is quantized, so that the decoder is rounded for the inputs the \
            quantized encoder gives it (--single-pass skips this). On tiny.en compensated \
            rounding lowered the word error rate at 3 and 4 bits (docs/myqasr-method.md).

            Every layer whose inputs come in whole blocks of 32 is stored rotated: a signed \
            Hadamard transform per block spreads outlier weights before the groups are scaled \
            (the product rotates its input to match). Measured better at 3 and 4 bits; \
            --no-rotation stores the weights as they are.

            Each group of 32 input features shares a scale, except under a budget with codes \
            rounded to nearest, or with compensated rounding under a budget below every layer at \
            4 bits in groups of 32: there groups of 64 save scale bytes for the sweep to keep more \
            layers one width higher (measured better without second moments, and with compensated \
            rounding below that size but not at it: docs/myqasr-method.md sections 10, 14 and 21). \
            --group-size overrides it.

            Budgets: 24MiB (or 24M), 24MB, 25165824 (bytes), 0.5GiB.

            Examples:
              myqasr quantize --model tiny.en --budget 24MiB --stats me.myqs --out me.myq
              myqasr quantize --model tiny.en --budget 20MiB --calibration mine/*.wav --out me.myq
              myqasr quantize --model tiny.en --uniform 4 --stats me.myqs --out u4.myq
            """
    )

    @Option(name: .shortAndLong, help: "Full-precision model: tiny.en, base, or a CTranslate2 model directory.")
    var model = "tiny.en"

    @Option(help: "Memory budget for the whole model's weights (24MiB, 24MB, 25165824, 0.5GiB).")
    var budget: String?

    @Option(help: "Put every layer at this width (2, 3, 4, 5, 6 or 8) instead of a budget.")
    var uniform: Int?

    @Option(help: "Statistics file from `myqasr stats`.")
    var stats: String?

    @Option(parsing: .upToNextOption, help: "Unlabelled WAV files to gather statistics and calibration activations from.")
    var calibration: [String] = []

    @Option(help: "Calibration objective: cosine or mse.")
    var objective: CalibrationObjective = .cosine

    @Option(help: "Which layers lose bits first: descending (largest median |output| first; measured better on tiny.en) or ascending.")
    var order: SensitivityOrder = .descending

    @Option(help: "Input features per scale: 32, 64 or 128 (default: 32, or 64 under a budget as said above).")
    var groupSize: Int?

    @Option(help: "How a budget is shared: median (myQASR's sweep by median |output|) or error (by expected output error).")
    var widths: WidthChoice = .median

    @Flag(help: "With --widths error, let layers take any widths, not only two adjacent ones.")
    var anyWidths = false

    var widthRule: WidthRule { widths == .median ? .sensitivity : .expectedError(adjacentWidths: !anyWidths) }

    @Option(help: "The width every layer starts the sweep at.")
    var startBits = 8

    @Flag(help: "Search each layer's clip ratio (calibration) instead of using each group's full range.")
    var calibrate = false

    @Flag(help: "Plain round-to-nearest over each group's full range (the default; overrides --calibrate).")
    var noCalibration = false

    @Flag(help: "With --calibrate and --stats, search a clip ratio per group instead of per layer.")
    var perGroupClip = false

    @Option(help: """
        How codes are chosen: compensated (each rounding error is carried onto the inputs not yet \
        rounded, weighted by the inputs' second moments; needs --calibration or --stats, and is then \
        the default) or nearest.
        """)
    var rounding: RoundingMethod?

    @Flag(help: """
        With --calibration and compensated rounding, take the decoder's second moments from the float model's \
        pass too, instead of running the audio again behind the quantized encoder.
        """)
    var singlePass = false

    @Flag(help: "Store the weights as they are instead of rotated by blocks of 32 input features.")
    var noRotation = false

    @Option(help: "Activation rows kept per layer for calibration with --calibration (memory only).")
    var calibrationRows = 256

    @Option(help: "Beam width while running the calibration audio.")
    var beamSize = 1

    @Option(help: "Worker threads for the network.")
    var threads = 2

    @Option(help: "Where to write the quantized model (.myq).")
    var out: String

    /// Whether clip ratios are searched: `--calibrate` without `--no-calibration`.
    var useCalibration: Bool { calibrate && !noCalibration }

    func validate() throws {
        guard (budget == nil) != (uniform == nil) else { throw ValidationError("give exactly one of --budget and --uniform") }
        if let budget { _ = try parsedBudget(budget) }
        guard stats == nil || calibration.isEmpty else { throw ValidationError("give --stats or --calibration, not both") }
        if budget != nil || useCalibration {
            guard stats != nil || !calibration.isEmpty else {
                throw ValidationError("give --stats FILE or --calibration FILES... (needed for a budget and for calibration)")
            }
        }
        if rounding == .compensated {
            guard stats != nil || !calibration.isEmpty else {
                throw ValidationError("--rounding compensated needs --calibration FILES... or --stats FILE")
            }
            guard !useCalibration else { throw ValidationError("--rounding compensated cannot be combined with --calibrate") }
        }
        if let uniform, !BitAllocator.defaultAllowedBits.contains(uniform) {
            throw ValidationError("--uniform must be one of 2, 3, 4, 5, 6, 8")
        }
        if let groupSize, !QuantizedMatrix.supportedGroupSizes.contains(groupSize) {
            throw ValidationError("--group-size must be one of \(QuantizedMatrix.supportedGroupSizes.map(String.init).joined(separator: ", "))")
        }
        guard calibrationRows >= 1, beamSize >= 1, threads >= 1 else {
            throw ValidationError("--calibration-rows, --beam-size and --threads must be at least 1")
        }
    }

    func parsedBudget(_ text: String) throws -> Int {
        do { return try ByteSize.parse(text) } catch { throw ValidationError("--budget: \(error)") }
    }

    func run() throws {
        let start = Date()
        let whisper = try loadFullPrecisionModel(model, for: "quantization and its calibration")
        var statistics: ActivationStatistics?
        var reservoir: ActivationReservoir?
        if let stats {
            do { statistics = try StatisticsFile.load(path: stats) } catch { throw CLIError("\(error)") }
        } else if !calibration.isEmpty {
            // Second moments are kept (in memory only) unless nearest rounding or the clip search was asked for.
            let s = ActivationStatistics(modelIdentity: ModelIdentity.of(whisper),
                                         momentBlockSize: rounding != .nearest && !useCalibration ? 0 : nil)
            var observers: [ActivationObserver] = [s]
            if useCalibration {
                let r = ActivationReservoir(capacity: calibrationRows)
                reservoir = r
                observers.append(r)
            }
            try runCalibrationAudio(model: whisper, files: calibration, threads: threads, beamSize: beamSize,
                                    observer: ObserverGroup(observers), statistics: s)
            statistics = s
            print(String(format: "ran %d calibration files in %.1f s", calibration.count, Date().timeIntervalSince(start)))
        }
        // Compensated rounding whenever second moments are at hand, unless told otherwise.
        let effectiveRounding = rounding ?? (statistics?.secondMoments != nil && !useCalibration ? .compensated : .nearest)
        let target: QuantizationOptions.Target = try budget.map { .budget(try parsedBudget($0)) } ?? .uniform(bits: uniform!)
        let options = QuantizationOptions(target: target, widths: widthRule, objective: objective, order: order, groupSize: groupSize,
                                          startBits: startBits, calibrate: useCalibration, perGroupClip: perGroupClip,
                                          rounding: effectiveRounding, rotate: !noRotation)
        let result: QuantizationResult
        do {
            // With calibration audio, the decoder's second moments are gathered again behind the quantized encoder.
            let again: ((WhisperWeights) throws -> InputCovariance)? = calibration.isEmpty || singlePass ? nil : { partial in
                let moments = InputCovariance(accepts: { WhisperWeights.isDecoderLayer($0) })
                try runCalibrationAudio(model: whisper.withWeights(partial), files: calibration, threads: threads,
                                        beamSize: beamSize, observer: moments, statistics: nil)
                return moments
            }
            result = try Quantizer.quantize(model: whisper, statistics: statistics, options: options, activations: reservoir,
                                            decoderSecondMoments: again)
        } catch {
            throw CLIError("\(error)")
        }
        do {
            try QuantizedModelFile.write(weights: result.weights, metadata: result.metadata, to: out)
        } catch {
            throw CLIError("\(error)")
        }
        printReport(result.report, title: "\(whisper.name) -> \(out)")
        print(String(format: "done in %.1f s", Date().timeIntervalSince(start)))
    }

    func printReport(_ r: QuantizationReport, title: String) {
        print(title)
        print(pad("layer", 40) + lpad("shape", 12) + lpad("bits", 5) + lpad("KiB", 9) + lpad("median|y|", 11) + lpad("clip", 6)
              + lpad("err@1", 10) + lpad("err", 10) + lpad("expected", 10))
        for l in r.layers {
            let sens = l.sensitivity.map { String(format: "%.4g", $0) } ?? "-"
            let e1 = l.unclippedError.map { String(format: "%.3g", $0) } ?? "-"
            let e = l.calibratedError.map { String(format: "%.3g", $0) } ?? "-"
            let expected = l.expectedError.map { String(format: "%.3g", $0) } ?? "-"
            print(pad(l.name, 40) + lpad("\(l.outFeatures)x\(l.inFeatures)", 12) + lpad("\(l.bits)", 5)
                  + lpad(String(format: "%.1f", Double(l.bytes) / 1024), 9) + lpad(sens, 11)
                  + lpad(String(format: "%.2f", l.clipRatio), 6) + lpad(e1, 10) + lpad(e, 10) + lpad(expected, 10))
        }
        var histogram: [Int: Int] = [:]
        for l in r.layers { histogram[l.bits, default: 0] += 1 }
        print("widths: " + histogram.keys.sorted().map { "\($0) bits x\(histogram[$0]!)" }.joined(separator: ", "))
        print("total \(ByteSize.formatExact(r.totalBytes)) = layers \(ByteSize.format(r.totalBytes - r.fixedBytes)) + "
              + "float rest \(ByteSize.format(r.fixedBytes)); float32 model \(ByteSize.formatExact(r.floatBytes)), "
              + String(format: "%.2fx smaller", Double(r.floatBytes) / Double(r.totalBytes)))
        if let budget = r.budget { print("budget \(ByteSize.formatExact(budget)), \(budget - r.totalBytes) bytes to spare") }
    }
}
