import ArgumentParser
import DaemonCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Units
import WhisperEngine

/// `myqasrd`: the on-device speech-recognition daemon (microphone -> Whisper -> Unix sockets).
@main
struct MyQASRDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "myqasrd",
        abstract: "On-device speech recognition daemon: transcribes the microphone and serves Unix sockets.",
        discussion: """
            The configuration is read from --config, else $CONFIGURATION_DIRECTORY/myqasrd.toml, else \
            /etc/myqasr/myqasrd.toml, else built-in defaults. Flags override the file. SIGHUP reloads the \
            configuration and model; SIGTERM stops. Exit status 78 means the configuration is invalid.
            """)

    @Option(name: .long, help: "Configuration file (TOML).")
    var config: String?

    @Option(name: .long, help: "Model: tiny.en, base, or a model directory.")
    var model: String?

    @Option(name: .long, help: "Threads per transcription worker.")
    var threads: Int?

    @Option(name: .long, help: "Memory budget for the weights: 24MiB, none, or auto (follows free memory).")
    var budget: String?

    @Option(name: .long, help: "ALSA capture device.")
    var device: String?

    @Flag(name: .long, help: "Do not capture the microphone (serve the sockets only).")
    var noCapture = false

    @Option(name: .long, help: "Directory for the sockets (default $RUNTIME_DIRECTORY or /run/myqasr).")
    var runtimeDirectory: String?

    @Option(name: .long, help: "State directory (default $STATE_DIRECTORY or /var/lib/myqasr).")
    var stateDirectory: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    @Flag(name: .long, help: "Check the configuration, the model and the memory budget as start-up does, print the settings, and exit.")
    var checkConfig = false

    /// ArgumentParser's entry point, after two things that must come before any other thread exists.
    static func main() async {
        // OpenBLAS's kernels for this CPU (may run the executable again).
        OpenBLASCore.chooseForThisCPU()
        // One C heap for every thread, which idle trims can return in full (`mq_use_one_heap`).
        WhisperModel.useOneHeap()
        do {
            var command = try parseAsRoot()
            if let daemon = command as? MyQASRDaemon { try await daemon.run() } else { try command.run() }
        } catch {
            exit(withError: error)
        }
    }

    func run() async throws {
        // First of all, so that a SIGHUP or SIGTERM during model loading does not kill the process.
        let signals = SignalWatcher()
        // Every file the daemon creates is its user's alone (the statistics are personal); the sockets get their
        // mode explicitly (sockets.mode). The unit sets UMask=0077 too; this covers other ways of running it.
        umask(0o077)
        // Before any audio exists: no core dump may hold it.
        let dumps = CoreDumps.disable()

        let source = Daemon.ConfigurationSource(
            explicitPath: config,
            overrides: ConfigurationOverrides(
                model: model, threads: threads, memoryBudget: budget, captureDevice: device,
                captureEnabled: noCapture ? false : nil, runtimeDirectory: runtimeDirectory,
                stateDirectory: stateDirectory, logLevel: logLevel))
        let loaded: DaemonConfiguration
        let path: String?
        do {
            (loaded, path) = try source.load()
        } catch {
            FileHandle.standardError.write(Data("myqasrd: configuration error: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
        if checkConfig {
            // Exactly what start-up checks before serving: the model loads, the budget's model is built and passes
            // its self-check.
            do {
                try await loaded.checkModelAndBudget()
            } catch {
                FileHandle.standardError.write(Data("myqasrd: \(error)\n".utf8))
                if case DaemonError.budget = error { throw ExitCode(78) }  // as at start-up
                throw ExitCode(1)
            }
            print("configuration \(path ?? "(built-in defaults)") is valid")
            print("model \(loaded.model), threads \(loaded.threads), budget \(loaded.memoryBudgetAuto ? "auto" : loaded.memoryBudget.map(ByteSize.format) ?? "none")")
            print("control socket \(loaded.controlSocketPath())")
            print("capture \(loaded.captureEnabled ? loaded.captureDevice : "off")")
            print("openblas kernels \(OpenBLASCore.name)")
            return
        }

        let level = loaded.logLevel
        LoggingSystem.bootstrap { label in DaemonLogHandler(label: label, level: level) }
        var logger = Logger(label: "myqasrd")
        logger.logLevel = level
        logger.info("starting", metadata: ["config": "\(path ?? "(defaults)")", "pid": "\(getpid())",
                                          "openblas": "\(OpenBLASCore.name)"])
        if dumps.dumpable || dumps.coreLimit != 0 {
            logger.warning("core dumps could not be turned off", metadata: [
                "dumpable": "\(dumps.dumpable)", "core_limit": "\(dumps.coreLimit)"])
        } else {
            logger.info("core dumps off (not dumpable, core limit 0)")
        }

        let daemon = Daemon(configuration: loaded, source: source, logger: logger)
        do {
            try await daemon.start()
        } catch {
            logger.critical("cannot start: \(error)")
            await daemon.shutdown()
            if case DaemonError.budget = error { throw ExitCode(78) }  // EX_CONFIG: a restart would not help
            throw ExitCode(1)
        }
        signals.setReloadHandler { [logger] in
            Task {
                logger.info("SIGHUP: reloading")
                do { try await daemon.reload() } catch { /* already logged with key and reason */ }
            }
        }
        let number = await signals.waitForStop()
        logger.info("signal \(number): shutting down")
        await daemon.shutdown()
        // A model build may still run on its idle-priority thread (shutdown does not wait for it). A normal
        // exit would run the libraries' exit handlers (OpenBLAS frees its buffers) under that thread's feet, and
        // the daemon died of SIGSEGV after a clean shutdown: everything is stopped and logged, so end here.
        fflush(nil)
        _exit(0)
    }
}
