// swift-tools-version:6.1
import PackageDescription

// The architecture, one target per concern (README "Architecture"):
//   Units           byte sizes and precisions as people read and write them, one rule for every program
//   Audio           WAV and PCM decoding, resampling to 16 kHz, Whisper's log-mel front end
//   Tokenizer       Whisper's byte-level BPE vocabulary
//   CKernels        C hot loops (element-wise passes, packed low-bit products)
//   WhisperEngine   CTranslate2 model loading, encoder/decoder network, decoding
//   Quantization    myQASR: activation statistics, bit allocation, calibration, packed weights
//   Evaluation      word error rate with Whisper-style English normalisation
//   Capture         ALSA microphone capture, privacy ring buffer, voice activity
//   Serving         Unix-socket servers: Wyoming protocol and the control protocol, client memory accounting
//   SystemdSupport  sd_notify, watchdog, socket activation
//   myqasr          offline command-line tool
//   myqasrd         the daemon, wiring capture -> engine -> serving
//   myqasrctl       the daemon's control client
let v5: [SwiftSetting] = [.swiftLanguageMode(.v5)]

let package = Package(
    name: "myqasr",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "WhisperEngine", targets: ["WhisperEngine"]),
        .executable(name: "myqasr", targets: ["myqasr"]),
        .executable(name: "myqasrd", targets: ["myqasrd"]),
        .executable(name: "myqasrctl", targets: ["myqasrctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CALSA", pkgConfig: "alsa", providers: [.apt(["libasound2-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // Linux declarations Glibc does not give Swift (peer-credential layouts, prctl); nothing to link.
        .systemLibrary(name: "CLinux"),

        // A leaf below every program: `myqasr` (through Quantization), `myqasrctl` (which otherwise needs
        // only Serving) and DaemonCore share no lower target, and sizes and precision names belong in none of theirs.
        .target(name: "Units"),
        .target(name: "Audio", dependencies: ["COpenBLAS"], swiftSettings: v5),
        .target(name: "Tokenizer", swiftSettings: v5),
        // -O3 in every configuration: these loops are the network's element-wise hot path.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "WhisperEngine", dependencies: ["Audio", "Tokenizer", "CKernels", "COpenBLAS", "CZlib"], swiftSettings: v5),
        .target(name: "Quantization", dependencies: ["WhisperEngine", "Units", "CKernels", "COpenBLAS", "CZlib"],
                swiftSettings: v5),
        .target(name: "Evaluation", swiftSettings: v5),
        .target(
            name: "Capture",
            dependencies: ["CALSA", .product(name: "Logging", package: "swift-log")],
            swiftSettings: v5
        ),
        .target(
            name: "Serving",
            dependencies: [
                "Audio", "CLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: v5
        ),
        .target(name: "SystemdSupport", dependencies: ["CSystemd", "CLinux"], swiftSettings: v5),

        .executableTarget(
            name: "myqasr",
            dependencies: [
                "WhisperEngine", "Quantization", "Audio", "Evaluation", "Units",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: v5
        ),
        // The daemon's logic (configuration, model holder, worker, backends), a library so it is testable.
        .target(
            name: "DaemonCore",
            dependencies: [
                "WhisperEngine", "Quantization", "Audio", "Capture", "Serving", "SystemdSupport", "Units", "CLinux",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: v5
        ),
        // Kernel benchmark for the packed low-bit products (not a test): reports GFLOP/s.
        .executableTarget(name: "quant-bench", dependencies: ["Quantization", "WhisperEngine", "CKernels", "COpenBLAS", "Audio", "Evaluation"],
                         swiftSettings: v5),
        .executableTarget(
            name: "myqasrd",
            dependencies: [
                "DaemonCore", "Serving", "SystemdSupport", "Units", "WhisperEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: v5
        ),
        .executableTarget(
            name: "myqasrctl",
            dependencies: ["Serving", "Units", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: v5
        ),

        .testTarget(name: "UnitsTests", dependencies: ["Units"]),
        .testTarget(name: "AudioTests", dependencies: ["Audio"], swiftSettings: v5),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "TestSupport"], swiftSettings: v5),
        // Blocking socket clients and small test inputs shared by the serving and daemon tests (tests only).
        .target(name: "SocketTestSupport", swiftSettings: v5),
        // Tests only: the fixtures of integration tests (real models, samples, tools, built products) under
        // one policy (skip when missing, fail under MYQASR_REQUIRE_FIXTURES=1), and random-weight networks.
        .target(name: "TestSupport", dependencies: ["WhisperEngine"], swiftSettings: v5),
        .testTarget(name: "TestSupportTests", dependencies: ["TestSupport"], swiftSettings: v5),
        .testTarget(name: "WhisperEngineTests", dependencies: ["WhisperEngine", "TestSupport"], swiftSettings: v5),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization", "TestSupport", "Audio", "Units"],
                    swiftSettings: v5),
        .testTarget(name: "CLITests", dependencies: ["myqasr", "Quantization", "TestSupport"], swiftSettings: v5),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation"], swiftSettings: v5),
        .testTarget(name: "CaptureTests", dependencies: ["Capture"], swiftSettings: v5),
        .testTarget(name: "ServingTests", dependencies: ["Serving", "SystemdSupport", "SocketTestSupport", "TestSupport"],
                    swiftSettings: v5),
        .testTarget(
            name: "DaemonTests",
            dependencies: ["DaemonCore", "Quantization", "Serving", "SystemdSupport", "Audio", "SocketTestSupport", "TestSupport",
                           "myqasrd", "myqasrctl"],
            swiftSettings: v5
        ),
    ]
)
