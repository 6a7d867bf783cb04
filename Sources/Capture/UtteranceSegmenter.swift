import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Timing rules for cutting utterances, plus the detector thresholds.
public struct SegmenterConfiguration: Sendable, Equatable {
    /// Frame-level detector thresholds.
    public var detector: VoiceActivityConfiguration
    /// Speech must last this long (in frames above the stop threshold, starting with one
    /// above the start threshold) before an utterance is confirmed; shorter clicks are ignored.
    public var minimumSpeechDuration: TimeInterval
    /// Silence that ends an utterance; it is included at the utterance's end.
    public var hangover: TimeInterval
    /// Audio kept from before the start of speech and put at the utterance's start.
    public var preRoll: TimeInterval
    /// Utterances are cut at this length; speech that goes on continues in the next one.
    public var maximumUtteranceDuration: TimeInterval

    /// Creates a configuration; defaults: 0.15 s minimum speech, 0.6 s hang-over,
    /// 0.3 s pre-roll, 30 s maximum.
    public init(
        detector: VoiceActivityConfiguration = VoiceActivityConfiguration(),
        minimumSpeechDuration: TimeInterval = 0.15,
        hangover: TimeInterval = 0.6,
        preRoll: TimeInterval = 0.3,
        maximumUtteranceDuration: TimeInterval = 30
    ) {
        self.detector = detector
        self.minimumSpeechDuration = minimumSpeechDuration
        self.hangover = hangover
        self.preRoll = preRoll
        self.maximumUtteranceDuration = maximumUtteranceDuration
    }

    func validate() throws {
        try detector.validate()
        guard minimumSpeechDuration >= 0, hangover >= 0, preRoll >= 0 else {
            throw CaptureError.invalidParameter("minimum speech, hang-over and pre-roll must not be negative")
        }
        guard maximumUtteranceDuration <= 600,
              maximumUtteranceDuration >= preRoll + minimumSpeechDuration + hangover + detector.frameDuration
        else {
            throw CaptureError.invalidParameter(
                "maximum utterance length (\(maximumUtteranceDuration) s) must be at most 600 s and cover pre-roll, minimum speech and hang-over")
        }
    }
}

/// Cuts a 16 kHz mono stream into `Utterance`s with a `VoiceActivityDetector`.
///
/// Feed it consecutive chunks of any size with `process(_:at:)`; it analyses fixed frames,
/// keeps a pre-roll of the most recent audio, and returns each utterance when it ends
/// (hang-over of silence, maximum length, a gap in the stream positions, or `finish()`).
/// Working memory is allocated once at the maximum length and zeroed after every
/// utterance, so audio is never left behind in reallocated or freed buffers.
/// Not thread-safe: use it from one thread (the pipeline's consumer thread).
public final class UtteranceSegmenter {
    /// The rules in use.
    public let configuration: SegmenterConfiguration

    private enum State {
        case idle
        case candidate(voicedFrames: Int)
        case speech(silentFrames: Int)
    }

    private var detector: VoiceActivityDetector
    private let frameLength: Int
    private let minimumSpeechFrames: Int
    private let hangoverFrames: Int
    private let maximumSamples: Int

    private var state = State.idle
    /// The frame being assembled.
    private let frame: UnsafeMutableBufferPointer<Float>
    private var frameFill = 0
    /// Stream position of the frame's first sample.
    private var framePosition: Int64 = 0
    /// Stream position expected for the next sample (nil before the first chunk).
    private var expectedPosition: Int64?
    /// Circular pre-roll of the most recent idle samples.
    private let preRoll: UnsafeMutableBufferPointer<Float>
    private var preRollFill = 0
    private var preRollHead = 0
    /// The utterance being assembled.
    private let utterance: UnsafeMutableBufferPointer<Float>
    private var utteranceFill = 0
    private var utterancePosition: Int64 = 0
    /// Samples of pre-roll at the utterance's start (not speech).
    private var utterancePreRoll = 0

    /// Creates a segmenter.
    /// - Throws: `CaptureError.invalidParameter` for inconsistent settings.
    public init(configuration: SegmenterConfiguration = SegmenterConfiguration()) throws {
        try configuration.validate()
        self.configuration = configuration
        detector = try VoiceActivityDetector(configuration: configuration.detector)
        let rate = Double(CaptureFormat.sampleRate)
        frameLength = configuration.detector.frameLength
        let frameSeconds = Double(frameLength) / rate
        minimumSpeechFrames = max(1, Int((configuration.minimumSpeechDuration / frameSeconds).rounded(.up)))
        hangoverFrames = max(1, Int((configuration.hangover / frameSeconds).rounded(.up)))
        maximumSamples = Int(configuration.maximumUtteranceDuration * rate)
        frame = .allocate(capacity: frameLength)
        frame.initialize(repeating: 0)
        preRoll = .allocate(capacity: max(1, Int(configuration.preRoll * rate)))
        preRoll.initialize(repeating: 0)
        utterance = .allocate(capacity: maximumSamples)
        utterance.initialize(repeating: 0)
    }

    deinit {
        for buffer in [frame, preRoll, utterance] {
            explicit_bzero(buffer.baseAddress!, buffer.count * MemoryLayout<Float>.stride)
            buffer.deallocate()
        }
    }

    /// Whether an utterance (confirmed or not yet) is being assembled.
    public var isInUtterance: Bool {
        if case .idle = state { return false }
        return true
    }

    /// Stream position where the confirmed utterance being assembled starts, nil when none is (idle, or speech
    /// not yet confirmed).
    public var confirmedUtteranceStart: Int64? {
        if case .speech = state { return utterancePosition }
        return nil
    }

    /// Seconds of the confirmed utterance being assembled since its speech began (its pre-roll not counted);
    /// 0 when none is.
    public var confirmedSpeechDuration: TimeInterval {
        guard case .speech = state else { return 0 }
        return Double(utteranceFill - utterancePreRoll) / Double(CaptureFormat.sampleRate)
    }

    /// A copy of the confirmed utterance being assembled (`.inProgress`), for a partial transcript; nil when none
    /// is. The segmenter goes on as if it had not been asked.
    public func snapshot() -> Utterance? {
        guard case .speech = state, utteranceFill > 0 else { return nil }
        return Utterance(copying: UnsafeBufferPointer(rebasing: utterance[0..<utteranceFill]),
                         streamPosition: utterancePosition, endReason: .inProgress)
    }

    /// The detector's current noise floor in dBFS (nil before the first frame).
    public var noiseFloor: Float? { detector.noiseFloor }

    /// Analyses `samples`, which start at stream position `position`, and returns the
    /// utterances that ended within them. A position other than the end of the previous
    /// chunk is treated as a gap: speech in progress ends there (`.gap`).
    public func process(_ samples: UnsafeBufferPointer<Float>, at position: Int64) -> [Utterance] {
        var finished: [Utterance] = []
        if let expected = expectedPosition, expected != position {
            if case .speech = state, let cut = emit(reason: .gap, includingPartialFrame: true) {
                finished.append(cut)
            }
            discardWorkingAudio()
        }
        if frameFill == 0 { framePosition = position }
        expectedPosition = position + Int64(samples.count)
        var index = 0
        while index < samples.count {
            let take = min(frameLength - frameFill, samples.count - index)
            (frame.baseAddress! + frameFill).update(from: samples.baseAddress! + index, count: take)
            frameFill += take
            index += take
            if frameFill == frameLength {
                if let done = processFrame() { finished.append(done) }
                frameFill = 0
                framePosition += Int64(frameLength)
            }
        }
        return finished
    }

    /// Convenience for arrays; see `process(_:at:)`.
    public func process(_ samples: [Float], at position: Int64) -> [Utterance] {
        samples.withUnsafeBufferPointer { process($0, at: position) }
    }

    /// Ends the stream: returns confirmed speech in progress (`.endOfStream`), discards an
    /// unconfirmed start, zeroes all working audio, and resets the noise floor.
    public func finish() -> Utterance? {
        var result: Utterance?
        if case .speech = state {
            result = emit(reason: .endOfStream, includingPartialFrame: true)
        }
        discardWorkingAudio()
        detector.reset()
        expectedPosition = nil
        return result
    }

    /// Discards everything in progress without emitting it, zeroing all working audio.
    public func reset() {
        discardWorkingAudio()
        detector.reset()
        expectedPosition = nil
    }

    // MARK: - Frames

    private func processFrame() -> Utterance? {
        let decision = detector.analyse(UnsafeBufferPointer(frame), inSpeech: isInUtterance)
        switch state {
        case .idle:
            if decision.startsSpeech {
                beginUtterance(withPreRoll: true)
                appendFrame()
                if minimumSpeechFrames <= 1 {
                    state = .speech(silentFrames: 0)
                } else {
                    state = .candidate(voicedFrames: 1)
                }
            } else {
                pushPreRoll(UnsafeBufferPointer(frame))
            }
            return nil

        case let .candidate(voiced):
            appendFrame()
            if decision.continuesSpeech {
                state = voiced + 1 >= minimumSpeechFrames ? .speech(silentFrames: 0) : .candidate(voicedFrames: voiced + 1)
            } else {
                // Too short to be speech: return the audio to the pre-roll and go back to idle.
                abandonCandidate()
            }
            return nil

        case let .speech(silent):
            if utteranceFill + frameLength > maximumSamples {
                let cut = emit(reason: .maximumLength, includingPartialFrame: false)
                beginUtterance(withPreRoll: false)
                appendFrame()
                state = .speech(silentFrames: decision.continuesSpeech ? 0 : 1)
                return cut
            }
            appendFrame()
            let silentNow = decision.continuesSpeech ? 0 : silent + 1
            if silentNow >= hangoverFrames {
                let done = emit(reason: .silence, includingPartialFrame: false)
                state = .idle
                return done
            }
            state = .speech(silentFrames: silentNow)
            return nil
        }
    }

    private func beginUtterance(withPreRoll: Bool) {
        utteranceFill = 0
        utterancePreRoll = 0
        utterancePosition = framePosition
        if withPreRoll && preRollFill > 0 {
            // Oldest pre-roll sample first.
            let start = (preRollHead - preRollFill + preRoll.count) % preRoll.count
            for offset in 0..<preRollFill {
                utterance[offset] = preRoll[(start + offset) % preRoll.count]
            }
            utteranceFill = preRollFill
            utterancePreRoll = preRollFill
            utterancePosition = framePosition - Int64(preRollFill)
        }
        zeroPreRoll()
    }

    private func appendFrame() {
        (utterance.baseAddress! + utteranceFill).update(from: frame.baseAddress!, count: frameLength)
        utteranceFill += frameLength
    }

    private func abandonCandidate() {
        let keep = min(utteranceFill, preRoll.count)
        let tail = UnsafeBufferPointer(rebasing: utterance[(utteranceFill - keep)..<utteranceFill])
        pushPreRoll(tail)
        zeroUtterance()
        state = .idle
    }

    /// Packs the utterance being assembled into an `Utterance` and zeroes the working copy.
    private func emit(reason: Utterance.EndReason, includingPartialFrame: Bool) -> Utterance? {
        if includingPartialFrame && frameFill > 0 {
            let room = min(frameFill, maximumSamples - utteranceFill)
            (utterance.baseAddress! + utteranceFill).update(from: frame.baseAddress!, count: room)
            utteranceFill += room
        }
        guard utteranceFill > 0 else { return nil }
        let result = Utterance(copying: UnsafeBufferPointer(rebasing: utterance[0..<utteranceFill]),
                               streamPosition: utterancePosition, endReason: reason)
        zeroUtterance()
        return result
    }

    private func pushPreRoll(_ samples: UnsafeBufferPointer<Float>) {
        let capacity = preRoll.count
        guard capacity > 0, Int(configuration.preRoll * Double(CaptureFormat.sampleRate)) > 0 else { return }
        let source = samples.count > capacity ? UnsafeBufferPointer(rebasing: samples[(samples.count - capacity)...]) : samples
        for sample in source {
            preRoll[preRollHead] = sample
            preRollHead = (preRollHead + 1) % capacity
        }
        preRollFill = min(capacity, preRollFill + source.count)
    }

    private func zeroPreRoll() {
        explicit_bzero(preRoll.baseAddress!, preRoll.count * MemoryLayout<Float>.stride)
        preRollFill = 0
        preRollHead = 0
    }

    private func zeroUtterance() {
        explicit_bzero(utterance.baseAddress!, max(utteranceFill, 1) * MemoryLayout<Float>.stride)
        utteranceFill = 0
    }

    private func discardWorkingAudio() {
        zeroUtterance()
        zeroPreRoll()
        explicit_bzero(frame.baseAddress!, frame.count * MemoryLayout<Float>.stride)
        frameFill = 0
        state = .idle
    }
}
