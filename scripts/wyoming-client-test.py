#!/usr/bin/env python3
"""Drive a myqasr Wyoming server with the reference `wyoming` Python package.

Usage: wyoming-client-test.py unix:///path/to/wyoming.sock [FILE.wav | --stream]   (or tcp://host:port)

Sends describe, then a transcribe request in several chunks: one second of
48 kHz stereo 16-bit sine, or the 16-bit PCM of FILE.wav at its own rate and
channel count. With --stream: three seconds of sine, of which the client sends
the first half, then waits for the server's transcript-start and first
transcript-chunk (partial transcripts while the audio streams in) before it
sends the rest. Checks the answers with the package's own event classes, prints
one JSON object with what it saw, and exits non-zero on any protocol violation.
Used by ServingTests (WyomingPythonClientTests) and DaemonTests
(WyomingPackageTests: the real daemon transcribing a real WAV).
"""

import asyncio
import json
import math
import struct
import sys
import wave

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.error import Error
from wyoming.info import Describe, Info


def sine_pcm(rate: int, channels: int, seconds: float, freq: float = 440.0) -> bytes:
    frames = []
    for i in range(int(rate * seconds)):
        value = int(0.5 * 32767 * math.sin(2 * math.pi * freq * i / rate))
        frames.append(struct.pack("<" + "h" * channels, *([value] * channels)))
    return b"".join(frames)


def wav_pcm(path: str) -> tuple:
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV is sent by this client")
        return w.getframerate(), 2, w.getnchannels(), w.readframes(w.getnframes())


async def read_answer(client, report: dict, order: list, chunks: list, until) -> None:
    """Reads events into `report`, `order` and `chunks` until `until(event)` is true."""
    while True:
        event = await client.read_event()
        if event is None:
            raise SystemExit(f"connection closed after {order}")
        order.append(event.type)
        if Error.is_type(event.type):
            raise SystemExit(f"server error: {Error.from_event(event)}")
        if TranscriptStart.is_type(event.type):
            report["start_language"] = TranscriptStart.from_event(event).language
        elif TranscriptChunk.is_type(event.type):
            chunks.append(TranscriptChunk.from_event(event).text)
        elif Transcript.is_type(event.type):
            transcript = Transcript.from_event(event)
            report["text"] = transcript.text
            report["language"] = transcript.language
        if until(event):
            return


async def main(uri: str, wav: str = None) -> dict:
    report: dict = {}
    stream = wav == "--stream"
    if stream:
        wav = None
    async with AsyncClient.from_uri(uri, connect_timeout=10, read_timeout=30) as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
        if event is None or not Info.is_type(event.type):
            raise SystemExit(f"expected info, got {event}")
        info = Info.from_event(event)
        program = info.asr[0]
        report["program"] = program.name
        report["model"] = program.models[0].name
        report["languages"] = program.models[0].languages
        report["streaming"] = program.supports_transcript_streaming

        if wav:
            rate, width, channels, audio = wav_pcm(wav)
        else:
            rate, width, channels = 48000, 2, 2
            audio = sine_pcm(rate, channels, 3.0 if stream else 1.0)
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        step = 4096 * width * channels
        order = []
        chunks = []
        half = len(audio) // 2 // step * step if stream else None
        for offset in range(0, len(audio), step):
            if offset == half:
                # Partial transcripts while streaming: a start, then a chunk, before the audio has ended.
                await read_answer(client, report, order, chunks, lambda e: TranscriptChunk.is_type(e.type))
                report["before_stop"] = list(order)
            chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=audio[offset : offset + step])
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        await read_answer(client, report, order, chunks, lambda e: TranscriptStop.is_type(e.type))
        report["order"] = order
        report["chunks"] = chunks
    return report


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
