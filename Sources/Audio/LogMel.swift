// Whisper's log-mel spectrogram front end, reproducing openai/whisper `audio.log_mel_spectrogram`:
//
//   audio  [N]                     16 kHz mono Float; `paddingSamples` zeros appended → length T = N + pad
//   padded [T + 400]               reflect padding of n_fft/2 = 200 on both sides (torch.stft center=True)
//   frames [nFrames, 400]          frame t = padded[160 t ..< 160 t + 400], nFrames = T / 160
//                                  (torch yields 1 + T/160 frames; Whisper drops the last: stft[..., :-1])
//   power  [nFrames, 201]          |Σ_n hann[n] x[n] e^{-2πikn/400}|², periodic Hann of length 400
//   mel    [nMels, nFrames]        filterbank [nMels, 201] · powerᵀ  (librosa Slaney mel, norm="slaney")
//   log    [nMels, nFrames]        log10(max(mel, 1e-10)); then max(log, globalMax − 8); then (x + 4) / 4
//
// The result is row-major [nMels, nFrames]: value(mel m, frame t) = values[m * nFrames + t].
//
// Why a matrix-product DFT rather than an FFT: n_fft = 400 = 2⁴·5² is not a power of two, and only
// 201 bins of one fixed size are ever needed, so the DFT is a fixed linear map that OpenBLAS's sgemm
// runs at near peak speed on whole blocks of frames, with no mixed-radix FFT code to get right.
// Two symmetries cut the work by four against the plain [B, 400]·[400, 402] product:
//  1. The periodic Hann window has w[n] = w[400 − n]. With e[n] = x[n] + x[400−n], o[n] = x[n] − x[400−n]
//     (e[0] = x[0], e[200] = x[200]):
//       Re X[k] =  Σ_{n=0}^{200} e[n] w[n] cos(2πkn/400),   Im X[k] = −Σ_{n=1}^{199} o[n] w[n] sin(2πkn/400)
//  2. cos(2π(200−k)n/400) = (−1)ⁿ cos(2πkn/400) and sin(2π(200−k)n/400) = −(−1)ⁿ sin(2πkn/400), so
//     splitting each sum into even-n and odd-n parts, computed for k = 0...100 only,
//       A± = Σ_even e·C ± Σ_odd e·C,  B± = Σ_even o·S ± Σ_odd o·S
//       |X[k]|² = A₊² + B₊²,   |X[200−k]|² = A₋² + B₋²
// That is four sgemms of about [B, 100]·[100, 101] per block of B frames. The mel projection is one
// more sgemm, [nMels, 201]·[201, B].

import COpenBLAS
import Foundation

/// Whisper's fixed audio hyper-parameters (openai/whisper `audio.py`).
public enum WhisperAudio {
    /// Sample rate the models expect, in Hz.
    public static let sampleRate = 16000
    /// STFT window and FFT length in samples (25 ms).
    public static let nFFT = 400
    /// STFT hop in samples (10 ms).
    public static let hopLength = 160
    /// Seconds of audio per encoder window.
    public static let chunkLength = 30
    /// Samples per encoder window (480 000).
    public static let nSamples = chunkLength * sampleRate
    /// Mel frames per encoder window (3000).
    public static let nFrames = nSamples / hopLength
    /// Number of STFT bins kept, n_fft / 2 + 1 = 201.
    public static let nBins = nFFT / 2 + 1
}

/// A log-mel spectrogram: `nMels` rows of `nFrames` frames, row-major.
///
/// Shape `[nMels, nFrames]`; `values[mel * nFrames + frame]`.
public struct LogMelSpectrogram: Equatable, Sendable {
    /// Number of mel bands (rows).
    public let nMels: Int
    /// Number of frames (columns), 100 per second of audio.
    public let nFrames: Int
    /// Row-major values, `nMels * nFrames` of them.
    public var values: [Float]

    /// Creates a spectrogram from row-major values; `values.count` must equal `nMels * nFrames`.
    public init(nMels: Int, nFrames: Int, values: [Float]) {
        precondition(values.count == nMels * nFrames, "values.count \(values.count) != \(nMels) x \(nFrames)")
        self.nMels = nMels
        self.nFrames = nFrames
        self.values = values
    }

    /// The value of mel band `mel` at frame `frame`.
    public subscript(mel: Int, frame: Int) -> Float {
        values[mel * nFrames + frame]
    }

    /// The `[nMels, frameCount]` window starting at frame `offset`, as Whisper feeds its encoder.
    ///
    /// Frames past the end of the spectrogram are filled with 0.0, matching openai/whisper's
    /// `pad_or_trim(mel_segment, N_FRAMES)` applied to the already log-scaled mel.
    /// - Parameters:
    ///   - offset: first frame, `>= 0`.
    ///   - frameCount: window width; Whisper uses 3000 (30 s).
    public func window(atFrame offset: Int, frameCount: Int = WhisperAudio.nFrames) -> LogMelSpectrogram {
        precondition(offset >= 0 && frameCount >= 0, "offset and frameCount must be non-negative")
        var out = [Float](repeating: 0, count: nMels * frameCount)
        let available = max(0, min(frameCount, nFrames - offset))
        if available > 0 {
            values.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    for m in 0..<nMels {
                        let s = src.baseAddress! + m * nFrames + offset
                        let d = dst.baseAddress! + m * frameCount
                        d.update(from: s, count: available)
                    }
                }
            }
        }
        return LogMelSpectrogram(nMels: nMels, nFrames: frameCount, values: out)
    }
}

/// A mel filterbank matrix `[nMels, nFFT/2 + 1]`, row-major, as librosa.filters.mel builds it with its
/// defaults: Slaney mel scale (`htk=False`), `fmin = 0`, `fmax = sampleRate / 2`, `norm = "slaney"`.
public struct MelFilterbank: Equatable, Sendable {
    /// Number of mel bands (rows).
    public let nMels: Int
    /// Number of FFT bins (columns), `nFFT / 2 + 1`.
    public let nBins: Int
    /// Row-major weights, `weights[mel * nBins + bin]`.
    public let weights: [Float]

    /// Builds the Slaney-normalised filterbank.
    /// - Parameters:
    ///   - nMels: number of triangular filters (Whisper: 80, or 128 for large-v3).
    ///   - sampleRate: sample rate in Hz.
    ///   - nFFT: FFT length; the bank covers its `nFFT / 2 + 1` bins.
    ///   - fMin: lowest filter edge in Hz.
    ///   - fMax: highest filter edge in Hz; nil means `sampleRate / 2`.
    /// - Throws: `AudioError.invalidArgument` for non-positive sizes or an empty frequency range.
    public init(nMels: Int, sampleRate: Int = WhisperAudio.sampleRate, nFFT: Int = WhisperAudio.nFFT, fMin: Double = 0, fMax: Double? = nil) throws {
        let top = fMax ?? Double(sampleRate) / 2
        guard nMels > 0, sampleRate > 0, nFFT > 1, fMin >= 0, top > fMin else {
            throw AudioError.invalidArgument("mel filterbank needs positive sizes and fMin < fMax (nMels \(nMels), sampleRate \(sampleRate), nFFT \(nFFT), \(fMin)-\(top) Hz)")
        }
        self.nMels = nMels
        nBins = nFFT / 2 + 1
        // Bin centre frequencies (np.fft.rfftfreq) and nMels + 2 points evenly spaced in mel.
        let fftFreqs = (0..<nBins).map { Double($0) * Double(sampleRate) / Double(nFFT) }
        let melLo = MelFilterbank.hzToMel(fMin), melHi = MelFilterbank.hzToMel(top)
        let melPoints = (0..<(nMels + 2)).map { melLo + (melHi - melLo) * Double($0) / Double(nMels + 1) }
        let hzPoints = melPoints.map(MelFilterbank.melToHz)
        var w = [Float](repeating: 0, count: nMels * nBins)
        for m in 0..<nMels {
            let lower = hzPoints[m], centre = hzPoints[m + 1], upper = hzPoints[m + 2]
            let enorm = 2.0 / (upper - lower)  // Slaney: each filter has unit area in Hz
            for b in 0..<nBins {
                let rising = (fftFreqs[b] - lower) / (centre - lower)
                let falling = (upper - fftFreqs[b]) / (upper - centre)
                let v = max(0, min(rising, falling))
                w[m * nBins + b] = Float(v * enorm)
            }
        }
        weights = w
    }

    /// Hz → mel on the Slaney scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above.
    public static func hzToMel(_ hz: Double) -> Double {
        let fSp = 200.0 / 3, minLogHz = 1000.0, minLogMel = minLogHz / fSp, logStep = log(6.4) / 27
        return hz >= minLogHz ? minLogMel + log(hz / minLogHz) / logStep : hz / fSp
    }

    /// Mel → Hz on the Slaney scale, the inverse of `hzToMel`.
    public static func melToHz(_ mel: Double) -> Double {
        let fSp = 200.0 / 3, minLogHz = 1000.0, minLogMel = minLogHz / fSp, logStep = log(6.4) / 27
        return mel >= minLogMel ? minLogHz * exp(logStep * (mel - minLogMel)) : fSp * mel
    }
}

/// Computes Whisper log-mel spectrograms. Immutable after creation; safe to share between threads.
public final class LogMelFrontEnd: @unchecked Sendable {
    /// The mel filterbank in use, `[nMels, 201]`.
    public let filterbank: MelFilterbank
    /// Number of mel bands produced.
    public var nMels: Int { filterbank.nMels }

    /// Row-major bases for k = 0...100 (101 columns), by parity of n (see the header comment):
    /// `cosEven` [101, 101] rows n = 0, 2, ..., 200; `cosOdd` [100, 101] rows n = 1, 3, ..., 199;
    /// `sinEven` [99, 101] rows n = 2, 4, ..., 198; `sinOdd` [100, 101] rows n = 1, 3, ..., 199.
    /// Each entry is w[n] · cos or sin (2πkn/400).
    private let cosEven: [Float], cosOdd: [Float], sinEven: [Float], sinOdd: [Float]
    /// Frames per sgemm block; bounds the scratch memory for long inputs.
    private let blockFrames = 1024
    /// Bins computed directly (k = 0...100); the rest come from the k ↔ 200 − k symmetry.
    private static let quarter = WhisperAudio.nFFT / 4 + 1

    /// Creates a front end with Whisper's parameters and `nMels` Slaney mel bands (80, or 128 for large-v3).
    /// - Throws: `AudioError.invalidArgument` if `nMels` is not positive.
    public init(nMels: Int = 80) throws {
        filterbank = try MelFilterbank(nMels: nMels)
        let nFFT = WhisperAudio.nFFT, q = LogMelFrontEnd.quarter
        // Periodic Hann (torch.hann_window(400)): 0.5 − 0.5 cos(2πn/400).
        func hann(_ n: Int) -> Double { 0.5 - 0.5 * cos(2 * Double.pi * Double(n) / Double(nFFT)) }
        func basis(_ rows: [Int], _ trig: (Double) -> Double) -> [Float] {
            var b = [Float](repeating: 0, count: rows.count * q)
            for (r, n) in rows.enumerated() {
                for k in 0..<q {
                    // Reduce k·n modulo nFFT first so the angle stays small and exact.
                    let angle = 2 * Double.pi * Double((k * n) % nFFT) / Double(nFFT)
                    b[r * q + k] = Float(hann(n) * trig(angle))
                }
            }
            return b
        }
        cosEven = basis(Array(stride(from: 0, through: 200, by: 2)), cos)
        cosOdd = basis(Array(stride(from: 1, through: 199, by: 2)), cos)
        sinEven = basis(Array(stride(from: 2, through: 198, by: 2)), sin)
        sinOdd = basis(Array(stride(from: 1, through: 199, by: 2)), sin)
    }

    /// The log-mel spectrogram of 16 kHz mono `samples` followed by `paddingSamples` zeros.
    ///
    /// - Parameters:
    ///   - samples: audio at 16 kHz, nominally in [-1, 1].
    ///   - paddingSamples: zeros appended before the STFT (Whisper's `transcribe` appends 480 000, i.e. 30 s).
    /// - Returns: shape `[nMels, nFrames]` with `nFrames = (samples.count + paddingSamples) / 160`.
    ///
    /// torch.stft's reflect padding requires more than 200 samples; for shorter inputs this function keeps
    /// reflecting back and forth (a 1-sample input is repeated), so it returns a result where torch raises.
    public func compute(samples: [Float], paddingSamples: Int = 0) -> LogMelSpectrogram {
        precondition(paddingSamples >= 0, "paddingSamples must be non-negative")
        let nFFT = WhisperAudio.nFFT, hop = WhisperAudio.hopLength, half = nFFT / 2, bins = WhisperAudio.nBins
        let total = samples.count + paddingSamples
        let nFrames = total / hop
        let nMels = filterbank.nMels
        guard nFrames > 0 else { return LogMelSpectrogram(nMels: nMels, nFrames: 0, values: []) }

        // padded[i] = signal[reflect(i − 200)], signal = samples ++ zeros(paddingSamples).
        let paddedCount = total + nFFT
        var padded = [Float](repeating: 0, count: paddedCount)
        samples.withUnsafeBufferPointer { src in
            padded.withUnsafeMutableBufferPointer { dst in
                _ = UnsafeMutableBufferPointer(rebasing: dst[half..<(half + samples.count)]).initialize(from: src)
                func signal(_ j: Int) -> Float { j < samples.count ? src[j] : 0 }
                func reflect(_ j: Int) -> Int {
                    if total == 1 { return 0 }
                    let period = 2 * (total - 1)
                    var r = j % period
                    if r < 0 { r += period }
                    return r < total ? r : period - r
                }
                for i in 0..<half {
                    dst[i] = signal(reflect(i - half))
                    dst[half + total + i] = signal(reflect(total + i))
                }
            }
        }

        var mel = [Float](repeating: 0, count: nMels * nFrames)
        let block = min(blockFrames, nFrames)
        let q = LogMelFrontEnd.quarter  // 101
        // Per block: folded frames split by parity, [b, 101] / [b, 100] / [b, 99] / [b, 100],
        // their four products [b, 101] each, and the power spectrum [b, 201].
        var eEven = [Float](repeating: 0, count: block * 101), eOdd = [Float](repeating: 0, count: block * 100)
        var oEven = [Float](repeating: 0, count: block * 99), oOdd = [Float](repeating: 0, count: block * 100)
        var products = [Float](repeating: 0, count: 4 * block * q)
        var power = [Float](repeating: 0, count: block * bins)

        padded.withUnsafeBufferPointer { p in
        eEven.withUnsafeMutableBufferPointer { ee in
        eOdd.withUnsafeMutableBufferPointer { eo in
        oEven.withUnsafeMutableBufferPointer { oe in
        oOdd.withUnsafeMutableBufferPointer { oo in
        products.withUnsafeMutableBufferPointer { prod in
        power.withUnsafeMutableBufferPointer { pw in
        cosEven.withUnsafeBufferPointer { ce in
        cosOdd.withUnsafeBufferPointer { co in
        sinEven.withUnsafeBufferPointer { se in
        sinOdd.withUnsafeBufferPointer { so in
        filterbank.weights.withUnsafeBufferPointer { fb in
        mel.withUnsafeMutableBufferPointer { out in
            var f0 = 0
            while f0 < nFrames {
                let b = min(block, nFrames - f0)
                // Fold each frame around its centre and split by parity of n.
                for t in 0..<b {
                    let x = p.baseAddress! + (f0 + t) * hop
                    let eeRow = ee.baseAddress! + t * 101, eoRow = eo.baseAddress! + t * 100
                    let oeRow = oe.baseAddress! + t * 99, ooRow = oo.baseAddress! + t * 100
                    eeRow[0] = x[0]
                    eeRow[100] = x[half]
                    for j in 1..<100 {
                        let a = x[2 * j], z = x[nFFT - 2 * j]
                        eeRow[j] = a + z
                        oeRow[j - 1] = a - z
                    }
                    for j in 0..<100 {
                        let a = x[2 * j + 1], z = x[nFFT - 2 * j - 1]
                        eoRow[j] = a + z
                        ooRow[j] = a - z
                    }
                }
                let bb = Int32(b), nq = Int32(q)
                let aE = prod.baseAddress!, aO = aE + b * q, bE = aO + b * q, bO = bE + b * q
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bb, nq, 101, 1, ee.baseAddress, 101, ce.baseAddress, nq, 0, aE, nq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bb, nq, 100, 1, eo.baseAddress, 100, co.baseAddress, nq, 0, aO, nq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bb, nq, 99, 1, oe.baseAddress, 99, se.baseAddress, nq, 0, bE, nq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bb, nq, 100, 1, oo.baseAddress, 100, so.baseAddress, nq, 0, bO, nq)
                for t in 0..<b {
                    let r = t * q, row = pw.baseAddress! + t * bins
                    for k in 0..<q {
                        let ap = aE[r + k] + aO[r + k], am = aE[r + k] - aO[r + k]
                        let bp = bE[r + k] + bO[r + k], bm = bE[r + k] - bO[r + k]
                        row[k] = ap * ap + bp * bp
                        // k = 100 is its own mirror; there the odd-cos and even-sin parts vanish.
                        if k < q - 1 { row[nFFT / 2 - k] = am * am + bm * bm }
                    }
                }
                // mel[:, f0 ..< f0+b] = filters [nMels, 201] · powerᵀ, power [b, 201].
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(nMels), bb, Int32(bins), 1,
                            fb.baseAddress, Int32(bins), pw.baseAddress, Int32(bins), 0, out.baseAddress! + f0, Int32(nFrames))
                f0 += b
            }

            // log10(max(x, 1e-10)), clamp to globalMax − 8, then (x + 4) / 4.
            var globalMax = -Float.infinity
            for i in 0..<out.count {
                let v = fastLog10(max(out[i], 1e-10))
                out[i] = v
                if v > globalMax { globalMax = v }
            }
            let floor = globalMax - 8
            for i in 0..<out.count {
                out[i] = (max(out[i], floor) + 4) / 4
            }
        }}}}}}}}}}}}}
        return LogMelSpectrogram(nMels: nMels, nFrames: nFrames, values: mel)
    }
}

/// log10 of a positive, normal, finite Float, accurate to about 1 ulp of the result's magnitude (absolute
/// error < 1e-6 for results in Whisper's range), and branch-free so the log-mel loop can vectorise.
/// glibc's log10f is a scalar library call that took more than half of the front end's time.
///
/// x = 2^e · m with m in [√½, √2); ln m = 2 artanh(f) = 2 (f + f³/3 + f⁵/5 + f⁷/7 + f⁹/9 + ...), f = (m − 1)/(m + 1),
/// |f| ≤ 0.172, so the series to f⁹ is exact to float precision.
@inline(__always)
func fastLog10(_ x: Float) -> Float {
    let bits = x.bitPattern
    var e = Int32(bitPattern: (bits >> 23) & 0xFF) - 127
    var m = Float(bitPattern: (bits & 0x007F_FFFF) | 0x3F80_0000)  // [1, 2)
    let big: Bool = m > 1.41421356
    m = big ? m * 0.5 : m
    e = big ? e + 1 : e
    let f = (m - 1) / (m + 1)
    let f2 = f * f
    let series = f * (2 + f2 * (2.0 / 3 + f2 * (2.0 / 5 + f2 * (2.0 / 7 + f2 * (2.0 / 9)))))
    let ln = Float(e) * 0.693147180559945 + series
    return ln * 0.434294481903252
}
