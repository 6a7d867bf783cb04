import Audio
import Foundation
import WhisperEngine
import XCTest

/// The engine on real speech with the real tiny.en and base weights.
final class RealSpeechTests: XCTestCase {
    func testJFKWithTinyEnGreedyIsExact() throws {
        let model = try Fixtures.model("tiny.en")
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        var options = TranscriptionOptions()
        options.decoding.beamSize = 1
        let transcript = try SpeechRecognizer(model: model).transcribe(samples: samples, options: options)
        XCTAssertEqual(plainWords(transcript.text),
                       "and so my fellow americans ask not what your country can do for you ask what you can do for your country")
        XCTAssertEqual(transcript.language, "en")
        XCTAssertFalse(transcript.segments.isEmpty)
        XCTAssertEqual(transcript.segments.first!.start, 0, accuracy: 0.5)
        XCTAssertLessThanOrEqual(transcript.segments.last!.end, 11.5)
    }

    func testAWindowReusesTheScratchThePreviousOneFreed() throws {
        let model = try Fixtures.model("tiny.en")
        let samples = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        let recognizer = try SpeechRecognizer(model: model)
        func minorFaults() -> Int {
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            return usage.ru_minflt
        }
        let first = try recognizer.transcribe(samples: samples).text
        let before = minorFaults()
        let second = try recognizer.transcribe(samples: samples).text
        let faults = minorFaults() - before
        XCTAssertEqual(first, second)
        // Each window allocates and frees tens of MB of scratch: with glibc's defaults the second
        // window faulted 11,698 pages (46 MB) in again, with the heap kept for reuse 18.
        XCTAssertLessThan(faults, 1500, "\(faults) page faults in a repeated window")
    }

    func testLongFormTranscriptionSeeksAcrossWindows() throws {
        let model = try Fixtures.model("tiny.en")
        // JFK, a second of silence, four LibriVox clips, JFK again: 44 s, two windows or more.
        let jfk = try loadAudio(path: try Fixtures.sample("jfk.wav"))
        var samples = jfk + [Float](repeating: 0, count: 16000)
        for clip in ["0870", "0880", "0890", "0920"] {
            samples += try loadAudio(path: try Fixtures.sample("librivox-\(clip).wav"))
        }
        samples += jfk
        let duration = Double(samples.count) / 16000
        XCTAssertGreaterThan(duration, 40)

        let transcript = try SpeechRecognizer(model: model).transcribe(samples: samples)
        let words = plainWords(transcript.text)
        let jfkWords = "ask not what your country can do for you ask what you can do for your country"
        XCTAssertTrue(words.hasPrefix("and so my fellow americans " + jfkWords), words)
        XCTAssertTrue(words.contains("john dashwood had then leisure"), words)
        XCTAssertTrue(words.contains("might have been made still more respectable"), words)
        XCTAssertTrue(words.hasSuffix(jfkWords), words)
        var previousEnd = 0.0
        for segment in transcript.segments {
            XCTAssertGreaterThanOrEqual(segment.start, previousEnd - 0.01, "segments go back in time")
            XCTAssertGreaterThanOrEqual(segment.end, segment.start)
            previousEnd = segment.end
        }
        XCTAssertTrue(transcript.segments.contains { $0.start > 30 }, "no segment after the first window")
        XCTAssertLessThanOrEqual(previousEnd, duration + 1)
    }

    func testBaseNamesTheLanguageAndLanguageCanBeForced() throws {
        let model = try Fixtures.model("base")
        let espeak = try Fixtures.tool("espeak-ng")
        let sentences = [
            ("fr", "Bonjour, je voudrais un café et un croissant, s'il vous plaît."),
            ("de", "Guten Morgen, ich hätte gern einen Kaffee und ein Brötchen, bitte."),
            ("es", "Buenos días, quisiera un café con leche y una tostada, por favor."),
        ]
        let recognizer = try SpeechRecognizer(model: model)
        for (code, sentence) in sentences {
            let samples = try speak(sentence, voice: code, espeak: espeak)
            XCTAssertEqual(try recognizer.detectLanguage(samples: samples).code, code, sentence)
            var options = TranscriptionOptions()
            options.decoding.beamSize = 1
            XCTAssertEqual(try recognizer.transcribe(samples: samples, options: options).language, code)
        }
        // Forcing a language overrides detection.
        var forced = TranscriptionOptions()
        forced.decoding.language = "de"
        forced.decoding.beamSize = 1
        let french = try speak(sentences[0].1, voice: "fr", espeak: espeak)
        XCTAssertEqual(try recognizer.transcribe(samples: french, options: forced).language, "de")
    }

    /// espeak-ng writes 22.05 kHz WAV: this also runs the resampler on real speech.
    private func speak(_ text: String, voice: String, espeak: String) throws -> [Float] {
        let path = NSTemporaryDirectory() + "myqasr-espeak-\(voice)-\(UUID().uuidString).wav"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: espeak)
        process.arguments = ["-v", voice, "-w", path, text]
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        return try loadAudio(path: path)
    }
}
