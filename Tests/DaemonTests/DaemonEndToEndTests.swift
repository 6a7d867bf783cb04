import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Serving
import XCTest

/// Low noise (about -66 dBFS), then `speech`, then more noise: what a quiet room around one utterance sounds like.
func microphoneSignal(speech: Data, leadSeconds: Double = 1, tailSeconds: Double = 2.5) -> Data {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    func noise(_ seconds: Double) -> Data {
        var samples = [Int16](repeating: 0, count: Int(seconds * 16000))
        for i in samples.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            samples[i] = Int16(truncatingIfNeeded: Int64(state >> 33) % 33 - 16)
        }
        return samples.withUnsafeBufferPointer { Data(buffer: $0) }
    }
    return noise(leadSeconds) + speech + noise(tailSeconds)
}

let jfkPhrase = "ask not what your country can do for you"

/// The code of an error answer from the daemon, if `error` is one.
func daemonErrorCode(_ error: Error) -> String? {
    if case let .daemon(code, _)? = error as? ControlClientError { return code }
    return nil
}

extension JSONValue {
    /// The elements, if this is an array.
    var elements: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
}

/// The daemon as a subprocess over real ALSA (file plugin + FIFO), real Unix sockets and a real NOTIFY_SOCKET.
final class DaemonEndToEndTests: XCTestCase {
    /// Live microphone -> listen; Wyoming and control transcription; status; SIGHUP budget change and a rejected
    /// bad configuration while serving continues; sd_notify READY/STATUS/RELOADING/MONOTONIC_USEC/STOPPING.
    func testMicrophoneToListenersSocketsReloadAndNotify() throws {
        let jfk = try Fixtures.sample("jfk.wav")
        let speech = try Fixtures.pcm16(ofWAV: jfk)
        // WATCHDOG_USEC as systemd sets it for WatchdogSec=2.
        let harness = try DaemonHarness(microphone: microphoneSignal(speech: speech),
                                        extraEnvironment: ["WATCHDOG_USEC": "2000000"])

        // READY=1 came with a STATUS= line naming the model; the watchdog is pinged.
        let ready = try harness.notify.waitFor(["READY=1"])
        XCTAssertTrue(ready.message.contains("STATUS=model tiny.en"), ready.message)
        try harness.notify.waitFor(["WATCHDOG=1"], after: ready.index, timeout: 10)

        // A listen client is subscribed before the microphone starts playing.
        let listener = try ListenCollector(socketPath: harness.controlSocket)
        try listener.ready()
        try harness.startMicrophone()
        let heard = try listener.waitFor(phrase: jfkPhrase, timeout: 120)
        XCTAssertTrue(heard.contains("fellow americans"), heard)

        // The utterance was counted and systemd's STATUS= line followed.
        try harness.notify.waitFor(["STATUS=", "1 utterance"])
        let client = try harness.client()
        var status = try client.status()
        XCTAssertEqual(status.modelName, "tiny.en")
        XCTAssertGreaterThanOrEqual(status.utterancesSeen, 1)
        XCTAssertEqual(status.captureState, .capturing)
        XCTAssertGreaterThan(status.memoryBytes, 100 * 1024 * 1024)
        XCTAssertNil(status.budgetBytes)
        XCTAssertEqual(status.layerBits?.count, 47)
        XCTAssertEqual(Set(status.layerBits?.values ?? [:].values), [32])

        // The float model in service, the utterance was also run through it with the statistics observing:
        // aggregates in the state directory, which the next budget's allocation uses.
        _ = try harness.daemon.waitForLog(timeout: 60, what: "the statistics pass") { $0.contains("statistics pass") ? true : nil }
        XCTAssertGreaterThanOrEqual(try client.status().statisticsSamples, 1)
        let statisticsFile = (harness.stateDirectory as NSString).appendingPathComponent("statistics.myqs")
        XCTAssertTrue(FileManager.default.fileExists(atPath: statisticsFile))

        // Wyoming over the Unix socket (describe names the model), and control `transcribe` with the WAV file.
        let wyoming = try WyomingTestClient(unixPath: harness.wyomingSocket)
        try wyoming.send(WyomingEvent(type: "describe"))
        let info = try wyoming.receive()
        XCTAssertEqual(info.type, "info")
        let program = info.data["asr"]?.elements?.first
        XCTAssertEqual(program?["models"]?.elements?.first?["name"]?.stringValue, "tiny.en")
        XCTAssertEqual(program?["models"]?.elements?.first?["languages"], ["en"])
        XCTAssertTrue(Fixtures.normalise(try wyoming.transcribe(pcm16: speech)).contains(jfkPhrase))
        let viaControl = try client.transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: jfk)))
        XCTAssertTrue(Fixtures.normalise(viaControl.text).contains(jfkPhrase), viaControl.text)
        XCTAssertEqual(viaControl.language, "en")

        // SIGHUP with a changed budget: RELOADING=1 + MONOTONIC_USEC, then READY=1, and the budget applies.
        let before = harness.notify.messages.all.count
        try DaemonHarness.configText(
            model: harness.modelDirectory, runtime: harness.runtimeDirectory, state: harness.stateDirectory,
            fifo: harness.feeder?.path, budget: "24MiB"
        ).write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        harness.daemon.signal(SIGHUP)
        let reloading = try harness.notify.waitFor(["RELOADING=1"], after: before)
        XCTAssertNotNil(reloading.message.range(of: #"MONOTONIC_USEC=\d+"#, options: .regularExpression), reloading.message)
        let reloaded = try harness.notify.waitFor(["READY=1"], after: reloading.index + 1)
        XCTAssertTrue(reloaded.message.contains("mixed 4-5-bit"), "STATUS= names the precision: \(reloaded.message)")
        status = try client.status()
        XCTAssertEqual(status.budgetBytes, 24 * 1024 * 1024)
        XCTAssertLessThanOrEqual(status.memoryBytes, status.budgetBytes!, "the budget is met")
        // myQASR's sweep from the statistics: 4 and 5 bits, more of the budget used than uniform 4-bit's 22.88 MiB.
        XCTAssertGreaterThan(status.memoryBytes, 23_994_432)
        XCTAssertEqual(status.layerBits?.count, 47)
        let personalised = status.layerBits ?? [:]
        XCTAssertEqual(Set(personalised.values), [4, 5], "the sensitivity sweep under 24 MiB")
        XCTAssertNotNil(status.lastRequantization)
        let afterSwap = try client.transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: jfk)))
        XCTAssertTrue(Fixtures.normalise(afterSwap.text).contains(jfkPhrase), afterSwap.text)

        // A budget no precision meets is refused with the smallest reachable size; the model in service stays.
        XCTAssertThrowsError(try client.setBudget(bytes: 2 * 1024 * 1024)) { error in
            XCTAssertEqual(daemonErrorCode(error), "impossible_budget", "\(error)")
            XCTAssertTrue("\(error)".contains("smallest reachable size"), "\(error)")
        }
        XCTAssertEqual(try client.status().budgetBytes, 24 * 1024 * 1024)

        // A bad file is rejected with key and reason; the old configuration stays and serving continues.
        let beforeBad = harness.notify.messages.all.count
        try (try String(contentsOfFile: harness.configPath, encoding: .utf8) + "\n[vad]\nstart_db = 500\n")
            .write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        harness.daemon.signal(SIGHUP)
        let badReload = try harness.notify.waitFor(["RELOADING=1"], after: beforeBad)
        try harness.notify.waitFor(["READY=1"], after: badReload.index + 1)
        // (TOML forbids a second [vad] table: the parser's message names the line.)
        let rejection = try harness.daemon.waitForLog(timeout: 10, what: "configuration rejected") { log in
            log.components(separatedBy: "\n").last { $0.contains("configuration rejected") }
        }
        XCTAssertTrue(rejection.contains(harness.configPath), rejection)
        status = try client.status()
        XCTAssertEqual(status.budgetBytes, 24 * 1024 * 1024, "the configuration in force stays")
        let stillServing = try WyomingTestClient(unixPath: harness.wyomingSocket)
        XCTAssertTrue(Fixtures.normalise(try stillServing.transcribe(pcm16: speech)).contains(jfkPhrase))

        // An out-of-range value in a well-formed file: the key and the reason are logged, and `reload` says so.
        try DaemonHarness.configText(
            model: harness.modelDirectory, runtime: harness.runtimeDirectory, state: harness.stateDirectory,
            fifo: harness.feeder?.path, budget: "none", extraVAD: "start_db = 500"
        ).write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try client.reload()) { error in
            XCTAssertTrue("\(error)".contains("vad.start_db"), "\(error)")
            XCTAssertTrue("\(error)".contains("out of range"), "\(error)")
        }
        _ = try harness.daemon.waitForLog(timeout: 10, what: "the rejected key") { $0.contains("key vad.start_db") ? true : nil }
        XCTAssertEqual(try client.status().budgetBytes, 24 * 1024 * 1024)

        // A file with an impossible budget is rejected like any invalid file; the configuration in force stays.
        try DaemonHarness.configText(
            model: harness.modelDirectory, runtime: harness.runtimeDirectory, state: harness.stateDirectory,
            fifo: harness.feeder?.path, budget: "2MiB"
        ).write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try client.reload()) { error in
            XCTAssertEqual(daemonErrorCode(error), "impossible_budget", "\(error)")
            XCTAssertTrue("\(error)".contains("every layer at 2 bits"), "\(error)")
        }
        status = try client.status()
        XCTAssertEqual(status.budgetBytes, 24 * 1024 * 1024)
        XCTAssertEqual(status.layerBits, personalised)

        // The control budget command applies at once.
        try client.setBudget(bytes: 512 * 1024 * 1024)
        status = try client.status()
        XCTAssertEqual(status.budgetBytes, 512 * 1024 * 1024)
        XCTAssertLessThanOrEqual(status.memoryBytes, status.budgetBytes!)
        XCTAssertEqual(Set(status.layerBits?.values ?? [:].values), [32], "the float model fits 512 MiB")

        // SIGTERM: STOPPING=1, listen streams end, clean exit, sockets removed.
        let beforeStop = harness.notify.messages.all.count
        XCTAssertEqual(harness.stop(), 0)
        try harness.notify.waitFor(["STOPPING=1"], after: beforeStop, timeout: 5)
        try listener.waitForEnd(timeout: 5)
        XCTAssertFalse(FileManager.default.fileExists(atPath: harness.controlSocket))
    }

    /// Started under a 24 MiB budget with no statistics: uniform 4 bits. The live utterance is gathered through
    /// the mapped float16 source behind the quantized model, and with `requantize_after = 1` the daemon quantizes
    /// again from the statistics on its own: myQASR's 4/5-bit mix, within the budget, while serving goes on. The
    /// candidate first runs in shadow on the next two live utterances (issue 20 item 3): its drift from the
    /// full-precision model on them is below uniform 4-bit's, so it is promoted; `status` then shows the served
    /// model's drift on the user's speech.
    func testStatisticsBehindAQuantizedModelTriggerRequantization() throws {
        let jfk = try Fixtures.sample("jfk.wav")
        let speech = try Fixtures.pcm16(ofWAV: jfk)
        let harness = try DaemonHarness(microphone: microphoneSignal(speech: speech), speed: 4, budget: "24MiB",
                                        modelSettings: "requantize_after = 1\nshadow_utterances = 2")
        let client = try harness.client()
        let before = try client.status()
        XCTAssertEqual(Set(before.layerBits?.values ?? [:].values), [4], "no statistics yet: uniform")
        XCTAssertEqual(before.statisticsSamples, 0)
        let listener = try ListenCollector(socketPath: harness.controlSocket)
        try listener.ready()
        try harness.startMicrophone()
        _ = try listener.waitFor(phrase: jfkPhrase, timeout: 120)
        // The candidate is built at idle priority; once it is in shadow, the user speaks again.
        _ = try harness.daemon.waitForLog(timeout: 300, what: "the candidate in shadow") { log in
            log.range(of: "candidate in shadow")
        }
        var more = Data()
        for _ in 0..<6 { more += microphoneSignal(speech: speech) }
        harness.feeder?.append(more)
        let swapped = try harness.daemon.waitForLog(timeout: 300, what: "re-quantization from the statistics") { log in
            log.components(separatedBy: "\n").first { $0.contains("model in service") && $0.contains("reason=statistics") }
        }
        XCTAssertTrue(swapped.contains("mixed 4-5-bit"), swapped)
        let log = harness.daemon.stderrText
        let shadowed = try XCTUnwrap(log.range(of: "candidate in shadow"), "the candidate did not go through shadow")
        let promoted = try XCTUnwrap(log.range(of: "candidate promoted"), log.suffix(3000).description)
        XCTAssertLessThan(shadowed.lowerBound, promoted.lowerBound)
        XCTAssertNil(log.range(of: "candidate discarded"))
        XCTAssertTrue(harness.daemon.stderrText.contains("model=mapped float16"), "gathered through the mapping")
        let after = try client.status()
        XCTAssertGreaterThanOrEqual(after.statisticsSamples, 3, "one sample built the candidate, two measured it")
        XCTAssertEqual(Set(after.layerBits?.values ?? [:].values), [4, 5])
        XCTAssertLessThanOrEqual(after.memoryBytes, 24 * 1024 * 1024)
        XCTAssertGreaterThan(after.memoryBytes, before.memoryBytes)
        // The statistics pass reads the mapped float16 source (page cache, RssFile), not an anonymous float32
        // copy; the log line above says so. RSS is printed, not asserted: one sample of it moves with what the
        // statistics and drift passes hold at that moment (141-192 MiB RssAnon in two runs).
        let anonymous = harness.daemon.statusKiB("RssAnon") ?? 0, file = harness.daemon.statusKiB("RssFile") ?? 0
        print("after the mapped pass and re-quantization: RssAnon \(anonymous) KiB, RssFile \(file) KiB")
        let text = try client.transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: jfk))).text
        XCTAssertTrue(Fixtures.normalise(text).contains(jfkPhrase), text)
        // The promoted model's own drift on the next live utterances, shown by status.
        harness.feeder?.append(microphoneSignal(speech: speech) + microphoneSignal(speech: speech))
        let deadline = Date().addingTimeInterval(300)
        var drift: Double?
        while drift == nil, Date() < deadline {
            drift = try client.status().model?.ownSpeechDrift
            if drift == nil { usleep(100_000) }
        }
        let measured = try XCTUnwrap(drift, "status never showed the served model's drift on the user's speech")
        XCTAssertGreaterThan(measured, 0)
        XCTAssertLessThan(measured, 1.5, "the self-check's bound")
        XCTAssertEqual(harness.stop(), 0)
    }

    /// A `status` runs library code that nothing else at rest runs (ICU's, for its dates, among it); once the daemon
    /// is idle those pages leave its resident set again (`Daemon.releaseAfterStatus`), so that a status bar polling
    /// the daemon does not keep them there. Here one `status` mapped 2.5 MiB of lib_FoundationICU.so, which held
    /// 248 KiB at rest.
    func testCodeAStatusRanLeavesTheResidentSetOnceIdle() throws {
        let harness = try DaemonHarness(microphone: nil)
        func icuKiB() -> Int { ResidentPages.bytes(ofFilesEndingWith: "/lib_FoundationICU.so", process: harness.daemon.pid) >> 10 }
        XCTAssertGreaterThan(icuKiB(), 0, "the daemon maps ICU")
        _ = try harness.client().status()
        _ = try Waiter<Int>.poll(timeout: 30, what: "ICU's pages leaving the resident set") {
            icuKiB() <= 1024 ? 1 : nil
        }
        XCTAssertEqual(harness.stop(), 0)
    }

    /// The Swift runtime and the daemon work under the kernel's memory-deny-write-execute (what the unit's
    /// MemoryDenyWriteExecute=yes enforces through seccomp): started through a launcher that sets
    /// PR_SET_MDWE (Linux 6.3+, inherited across execve), the daemon loads, captures and transcribes.
    func testRunsUnderMemoryDenyWriteExecute() throws {
        let python = "/usr/bin/python3"   // Debian's (scripts/setup), not whichever python3 PATH finds first
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw Fixtures.missing("no \(python) for the launcher: run scripts/setup")
        }
        let speech = try Fixtures.pcm16(ofWAV: try Fixtures.sample("jfk.wav"))
        let launcher = [python, "-c", """
            import ctypes, os, sys
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
                sys.exit("MDWE unavailable: errno %d" % ctypes.get_errno())
            if libc.prctl(66, 0, 0, 0, 0) != 1:  # PR_GET_MDWE
                sys.exit("MDWE unavailable: not in force")
            os.execv(sys.argv[1], sys.argv[1:])
            """]
        let harness: DaemonHarness
        do {
            harness = try DaemonHarness(microphone: microphoneSignal(speech: speech), speed: 4, launcher: launcher)
        } catch let error as HarnessError where "\(error)".contains("MDWE unavailable") {
            throw XCTSkip("the kernel has no PR_SET_MDWE: \(error)")
        }
        let listener = try ListenCollector(socketPath: harness.controlSocket)
        try listener.ready()
        try harness.startMicrophone()
        _ = try listener.waitFor(phrase: jfkPhrase, timeout: 120)
        XCTAssertEqual(harness.stop(), 0)
    }

    /// A microphone that does not exist: capture reports failure and keeps retrying, the sockets keep serving.
    /// Each capture event is logged once, by the capture itself (issue 18 item 7: the daemon logged them again).
    func testMissingMicrophoneIsRetriedWhileSocketsServe() throws {
        let wav = try Fixtures.sample("goforward.wav")
        let harness = try DaemonHarness(
            microphone: nil, logLevel: "debug",
            captureSection: "device = \"myqasr_test_no_such_pcm\"\nalsa_config = \"# nothing here\"")
        let lines = try harness.daemon.waitForLog(timeout: 30, what: "two capture retries") { log -> [Substring]? in
            let lines = log.split(separator: "\n")
            return lines.filter { $0.contains("retrying in") }.count >= 2 ? lines : nil
        }
        let events = lines.filter { $0.contains("retrying in") || $0.contains("unavailable") }
        XCTAssertTrue(events.allSatisfy { $0.contains("capture: retrying in") || $0.contains("capture: unavailable") },
                      "capture events are logged once, by the capture:\n\(events.joined(separator: "\n"))")
        XCTAssertEqual(lines.filter { $0.contains("unavailable") && $0.contains("warning") }.count, 1,
                       "one warning for the first failure; retries at debug")
        // Its name in `ps` and the journal, also after it ran itself again for OpenBLAS's kernels (`OpenBLASCore`).
        XCTAssertEqual(try String(contentsOfFile: "/proc/\(harness.daemon.pid)/comm", encoding: .utf8), "myqasrd\n")
        let client = try harness.client()
        XCTAssertEqual(try client.status().captureState, .failed)
        let result = try client.transcribe(wav: try Data(contentsOf: URL(fileURLWithPath: wav)))
        XCTAssertTrue(Fixtures.normalise(result.text).contains("forward"), result.text)
        XCTAssertEqual(harness.stop(), 0)
    }
}
