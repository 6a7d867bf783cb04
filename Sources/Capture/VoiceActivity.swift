import Foundation

// Why a hand-written detector: Debian 12 does not package libfvad (the WebRTC VAD;
// `apt-cache search fvad` finds nothing), and only Debian packages may be used here.
// The detector below is deliberately simple and inspectable: frame energy in dB
// relative to an adaptive noise floor, with separate start/stop thresholds
// (hysteresis) and an absolute level below which nothing counts as speech. Timing
// rules (minimum speech, hang-over, pre-roll, maximum length) live in
// `UtteranceSegmenter`.

/// Thresholds of the frame-level voice-activity detector.
public struct VoiceActivityConfiguration: Sendable, Equatable {
    /// Length of one analysis frame in seconds (30 ms = 480 samples at 16 kHz).
    public var frameDuration: TimeInterval
    /// A frame starts speech when its level is this many dB above the noise floor.
    public var startThreshold: Float
    /// Once speaking, a frame counts as speech while its level is this many dB above the
    /// noise floor (lower than `startThreshold`: hysteresis).
    public var stopThreshold: Float
    /// Frames quieter than this (dBFS, full-scale sine = -3 dBFS) never count as speech,
    /// whatever the noise floor, so digital silence plus faint hiss does not trigger.
    public var minimumLevel: Float
    /// How fast the noise floor may rise during speech, in dB per second (slow, so that a
    /// long utterance is not swallowed by its own level).
    public var noiseFloorRise: Float
    /// How fast the noise floor may rise outside speech, in dB per second (faster, so that
    /// growing background noise is followed rather than taken for speech). The floor falls
    /// quickly to quieter frames in either case.
    public var idleNoiseFloorRise: Float

    /// Creates a configuration; defaults suit a close-talking microphone.
    public init(
        frameDuration: TimeInterval = 0.03,
        startThreshold: Float = 12,
        stopThreshold: Float = 6,
        minimumLevel: Float = -55,
        noiseFloorRise: Float = 1,
        idleNoiseFloorRise: Float = 5
    ) {
        self.frameDuration = frameDuration
        self.startThreshold = startThreshold
        self.stopThreshold = stopThreshold
        self.minimumLevel = minimumLevel
        self.noiseFloorRise = noiseFloorRise
        self.idleNoiseFloorRise = idleNoiseFloorRise
    }

    /// Samples per analysis frame at `CaptureFormat.sampleRate`.
    public var frameLength: Int { Int((frameDuration * Double(CaptureFormat.sampleRate)).rounded()) }

    func validate() throws {
        guard frameDuration >= 0.005, frameDuration <= 0.1 else {
            throw CaptureError.invalidParameter("VAD frame duration must be within 5...100 ms, got \(frameDuration) s")
        }
        guard startThreshold > 0, stopThreshold > 0, stopThreshold <= startThreshold else {
            throw CaptureError.invalidParameter(
                "VAD thresholds must satisfy 0 < stop (\(stopThreshold) dB) <= start (\(startThreshold) dB)")
        }
        guard noiseFloorRise >= 0, idleNoiseFloorRise >= 0 else {
            throw CaptureError.invalidParameter(
                "noise floor rise rates must not be negative, got \(noiseFloorRise) and \(idleNoiseFloorRise)")
        }
    }
}

/// The detector's view of one frame.
public struct VoiceActivityDecision: Sendable, Equatable {
    /// Frame level in dBFS (mean square relative to a full-scale square wave).
    public var level: Float
    /// Noise floor in dBFS before this frame updated it.
    public var noiseFloor: Float
    /// The frame is loud enough to start speech.
    public var startsSpeech: Bool
    /// The frame is loud enough to keep speech going.
    public var continuesSpeech: Bool
}

/// Frame-level voice-activity detector: energy above an adaptive noise floor.
public struct VoiceActivityDetector: Sendable {
    /// The thresholds in use.
    public let configuration: VoiceActivityConfiguration
    /// Current noise-floor estimate in dBFS (nil before the first frame).
    public private(set) var noiseFloor: Float?

    /// Creates a detector.
    /// - Throws: `CaptureError.invalidParameter` for inconsistent thresholds.
    public init(configuration: VoiceActivityConfiguration = VoiceActivityConfiguration()) throws {
        try configuration.validate()
        self.configuration = configuration
    }

    /// Level of a frame in dBFS, floored at -120 dB.
    public static func level(of frame: UnsafeBufferPointer<Float>) -> Float {
        guard !frame.isEmpty else { return -120 }
        var sum: Float = 0
        for sample in frame { sum += sample * sample }
        let meanSquare = sum / Float(frame.count)
        return max(-120, 10 * log10(max(meanSquare, 1e-12)))
    }

    /// Classifies one frame and updates the noise floor.
    /// - Parameters:
    ///   - frame: samples in -1...1, normally `configuration.frameLength` of them.
    ///   - inSpeech: whether the caller is inside (possible) speech; selects the slower
    ///     noise-floor rise.
    public mutating func analyse(_ frame: UnsafeBufferPointer<Float>, inSpeech: Bool = false) -> VoiceActivityDecision {
        let level = Self.level(of: frame)
        let floor = noiseFloor ?? level
        let loudEnough = level >= configuration.minimumLevel
        let decision = VoiceActivityDecision(
            level: level,
            noiseFloor: floor,
            startsSpeech: loudEnough && level - floor >= configuration.startThreshold,
            continuesSpeech: loudEnough && level - floor >= configuration.stopThreshold
        )
        if level < floor {
            // Fall quickly towards quieter frames: pauses between words reset the floor.
            noiseFloor = floor + 0.5 * (level - floor)
        } else {
            let seconds = Float(frame.count) / Float(CaptureFormat.sampleRate)
            let rise = inSpeech ? configuration.noiseFloorRise : configuration.idleNoiseFloorRise
            noiseFloor = min(level, floor + rise * seconds)
        }
        return decision
    }

    /// Forgets the noise floor (the next frame sets it afresh).
    public mutating func reset() {
        noiseFloor = nil
    }
}
