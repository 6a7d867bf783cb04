"""Reference transcriptions with faster-whisper (CTranslate2), for comparison with myqasr.

Run through scripts/faster-whisper-ref, which provides the virtual environment.
Writes one JSON document (to --output or stdout):

  {"engine": "faster-whisper", "engine_version": ..., "model": ..., "compute_type": ...,
   "beam_size": ..., "threads": ..., "load_seconds": ...,
   "results": [{"file", "utt_id", "text", "language", "seconds_audio", "seconds_wall",
                "reference"?}],
   "total_audio_s", "total_wall_s", "rtf", "peak_rss_mb", "rss_after_load_mb", "repeat"}

Timing: the model load is measured on its own ("load_seconds"); "seconds_wall" covers decoding
the audio file and transcribing it (transcribing only, with --preload: the file is decoded to
16 kHz samples first, as myqasr's own timing starts from samples in memory). With --repeat N every
file is transcribed N times and the fastest run is kept (its text is the one reported).
"""

import argparse
import csv
import json
import os
import resource
import sys
import time


def rss_mb(kind: str) -> float:
    """Resident set size of this process in MiB: "peak" (VmHWM) or "current" (VmRSS)."""
    key = "VmHWM:" if kind == "peak" else "VmRSS:"
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def read_manifest(path, voices, conditions, splits):
    """Rows of a corpus manifest (TSV with a header), file paths resolved against its folder."""
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            sys.exit(f"faster-whisper-ref: {path}: empty manifest")
        for needed in ("file", "text", "utt_id"):
            if needed not in header:
                sys.exit(f"faster-whisper-ref: {path}: header has no '{needed}' column")
        col = {name: i for i, name in enumerate(header)}
        for lineno, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < len(header):
                sys.exit(f"faster-whisper-ref: {path}:{lineno}: {len(row)} columns, expected {len(header)}")
            get = lambda name: row[col[name]] if name in col else ""
            if voices and get("voice") not in voices:
                continue
            if conditions and get("condition") not in conditions:
                continue
            if splits and get("split") not in splits:
                continue
            rows.append({
                "file": os.path.join(base, get("file")),
                "utt_id": get("utt_id"),
                "reference": get("text"),
            })
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="faster-whisper-ref", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="audio files to transcribe")
    p.add_argument("--manifest", action="append", default=[],
                   help="corpus manifest.tsv to transcribe (repeatable)")
    p.add_argument("--voice", action="append", default=[], help="manifest filter (repeatable)")
    p.add_argument("--condition", action="append", default=[], help="manifest filter (repeatable)")
    p.add_argument("--split", action="append", default=[], help="manifest filter (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="transcribe at most N inputs")
    p.add_argument("--model", required=True, help="CTranslate2 Whisper model directory")
    p.add_argument("--model-name", default=None, help="name reported in the JSON (default: folder name)")
    p.add_argument("--compute-type", default="float32", choices=["float32", "int8", "int8_float32", "float16", "int16"])
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--language", default=None, help="e.g. en (default: the model's own / detected)")
    p.add_argument("--without-timestamps", action="store_true", help="decode without timestamp tokens")
    p.add_argument("--no-condition-on-previous-text", action="store_true",
                   help="do not prompt each 30 s window with the previous text")
    p.add_argument("--repeat", type=int, default=1, help="transcribe each input N times, keep the fastest")
    p.add_argument("--preload", action="store_true",
                   help="decode each file to samples before the clock starts (time the transcription alone)")
    p.add_argument("--output", "-o", default="-", help="JSON output path (default: stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)

    inputs = [{"file": os.path.abspath(f), "utt_id": os.path.splitext(os.path.basename(f))[0]} for f in a.files]
    for m in a.manifest:
        inputs += read_manifest(m, set(a.voice), set(a.condition), set(a.split))
    if a.limit > 0:
        inputs = inputs[: a.limit]
    if not inputs:
        sys.exit("faster-whisper-ref: nothing to transcribe (give audio files or --manifest)")
    for item in inputs:
        if not os.path.isfile(item["file"]):
            sys.exit(f"faster-whisper-ref: no such audio file: {item['file']}")
    if not os.path.isfile(os.path.join(a.model, "model.bin")):
        sys.exit(f"faster-whisper-ref: {a.model} is not a CTranslate2 model directory (no model.bin)")
    if a.repeat < 1 or a.beam_size < 1 or a.threads < 1:
        sys.exit("faster-whisper-ref: --repeat, --beam-size and --threads must be at least 1")

    import faster_whisper
    from faster_whisper import WhisperModel, decode_audio

    log = (lambda *_: None) if a.quiet else (lambda *m: print("faster-whisper-ref:", *m, file=sys.stderr))

    t0 = time.perf_counter()
    model = WhisperModel(a.model, device="cpu", compute_type=a.compute_type,
                         cpu_threads=a.threads, num_workers=1)
    load_seconds = time.perf_counter() - t0
    rss_after_load = rss_mb("current")
    log(f"loaded {a.model} ({a.compute_type}) in {load_seconds:.2f} s")

    results = []
    for item in inputs:
        best = None
        audio = decode_audio(item["file"]) if a.preload else item["file"]
        for _ in range(a.repeat):
            t = time.perf_counter()
            segments, info = model.transcribe(
                audio,
                language=a.language,
                beam_size=a.beam_size,
                without_timestamps=a.without_timestamps,
                condition_on_previous_text=not a.no_condition_on_previous_text,
                vad_filter=False,
            )
            text = "".join(s.text for s in segments).strip()  # the generator does the decoding
            wall = time.perf_counter() - t
            if best is None or wall < best["seconds_wall"]:
                best = {
                    "file": item["file"],
                    "utt_id": item["utt_id"],
                    "text": text,
                    "language": info.language,
                    "seconds_audio": round(float(info.duration), 4),
                    "seconds_wall": wall,
                }
                if "reference" in item:
                    best["reference"] = item["reference"]
        best["seconds_wall"] = round(best["seconds_wall"], 4)
        log(f"{os.path.basename(item['file'])}: {best['seconds_audio']:.2f} s audio in {best['seconds_wall']:.3f} s: {best['text']}")
        results.append(best)

    total_audio = sum(r["seconds_audio"] for r in results)
    total_wall = sum(r["seconds_wall"] for r in results)
    doc = {
        "engine": "faster-whisper",
        "engine_version": getattr(faster_whisper, "__version__", "unknown"),
        "model": a.model_name or os.path.basename(os.path.normpath(a.model)),
        "model_path": os.path.abspath(a.model),
        "compute_type": a.compute_type,
        "beam_size": a.beam_size,
        "threads": a.threads,
        "without_timestamps": a.without_timestamps,
        "condition_on_previous_text": not a.no_condition_on_previous_text,
        "repeat": a.repeat,
        "load_seconds": round(load_seconds, 4),
        "results": results,
        "total_audio_s": round(total_audio, 4),
        "total_wall_s": round(total_wall, 4),
        "rtf": round(total_wall / total_audio, 5) if total_audio > 0 else None,
        "rss_after_load_mb": round(rss_after_load, 1),
        "peak_rss_mb": round(rss_mb("peak"), 1),
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if a.output == "-":
        sys.stdout.write(text)
    else:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
        log(f"wrote {a.output}")


if __name__ == "__main__":
    main()
