"""Test audio: signals (numpy), WAV files (the `wave` module, plus a hand-written header for
32-bit float) and encoded files (sox for flac/ogg/mp3, ffmpeg for m4a/aac).

Used as a library by the Python tests and as a command by the Rust tests:

    python tests/python/helpers/make_audio.py parity DIR   # the log-mel parity inputs, DIR/inputs.json

Debian packages: `sox libsox-fmt-all` (mp3 and ogg/vorbis writers), `ffmpeg` (m4a/aac; sox
cannot write AAC).
"""

import json
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

WAV_FORMATS = ("u8", "s16", "s24", "f32")


def sine(freq_hz, rate, seconds, amplitude=0.5, phase=0.0):
    t = np.arange(int(round(rate * seconds))) / rate
    return amplitude * np.sin(2 * np.pi * freq_hz * t + phase)


def chirp(f0_hz, f1_hz, rate, seconds, amplitude=0.5):
    """A linear sweep from f0 to f1."""
    t = np.arange(int(round(rate * seconds))) / rate
    k = (f1_hz - f0_hz) / seconds
    return amplitude * np.sin(2 * np.pi * (f0_hz * t + 0.5 * k * t * t))


def white_noise(rate, seconds, amplitude=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return amplitude * rng.uniform(-1.0, 1.0, int(round(rate * seconds)))


def silence(rate, seconds):
    return np.zeros(int(round(rate * seconds)))


def realish(rate, seconds, seed=0):
    """A sound-effect-like mixture, peak 0.7: a harmonic tone with vibrato and a swell, decaying
    knocks, a band of hiss above 10 kHz and a burst of low rumble, so that every part of the
    spectrum and a wide range of levels are exercised."""
    rng = np.random.default_rng(seed)
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    phase = 2 * np.pi * 220.0 * t + 3.0 * np.sin(2 * np.pi * 5.0 * t)
    tone = sum(np.sin(k * phase) / k**1.5 for k in range(1, 9)) * np.sin(np.pi * t / seconds) ** 2
    knocks = np.zeros(n)
    for start in rng.uniform(0.0, seconds - 0.2, 6):
        i = int(start * rate)
        m = min(n - i, int(0.2 * rate))
        tt = np.arange(m) / rate
        knocks[i:i + m] += np.exp(-tt * 40.0) * np.sin(2 * np.pi * rng.uniform(80, 600) * tt)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    hiss = np.fft.irfft(spectrum * (freqs > 10_000.0), n) * 0.3
    rumble = np.fft.irfft(spectrum * (freqs < 150.0), n) * 2.0 * (t > seconds / 2)
    x = 0.3 * tone + 0.5 * knocks + hiss + rumble
    return 0.7 * x / np.max(np.abs(x))


def quantize(samples, fmt):
    """The integers (or float32) a WAV of `fmt` stores for float samples in [-1, 1)."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
    if fmt == "u8":
        return (np.clip(np.round(x * 128.0), -128, 127) + 128).astype(np.uint8)
    if fmt == "s16":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    if fmt == "s24":
        return np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype(np.int32)
    if fmt == "f32":
        return x.astype(np.float32)
    raise ValueError(f"unknown WAV format {fmt!r}: use one of {WAV_FORMATS}")


def decoded(samples, fmt):
    """What a decoder returns for `samples` written as `fmt` (int / 2^(bits-1))."""
    q = quantize(samples, fmt)
    if fmt == "u8":
        return (q.astype(np.float64) - 128.0) / 128.0
    if fmt == "s16":
        return q / 32768.0
    if fmt == "s24":
        return q / 8388608.0
    return q.astype(np.float64)


def write_wav(path, samples, rate, fmt="s16"):
    """Writes `samples` ((n,) mono or (n, channels)) as a WAV file of `fmt`."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    channels = x.shape[1]
    q = quantize(x, fmt)
    if fmt == "f32":
        write_float_wav(path, q, rate)
        return
    width = {"u8": 1, "s16": 2, "s24": 3}[fmt]
    if fmt == "s24":
        little = q.astype("<i4").tobytes()
        data = b"".join(little[i : i + 3] for i in range(0, len(little), 4))
    else:
        data = q.astype("<i2" if fmt == "s16" else "u1").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


def write_float_wav(path, samples, rate, bits=32):
    """Writes float samples as they are (no clipping: NaN, infinity and huge values too) as an
    IEEE-float WAV of 32 or 64 bits; the `wave` module only writes integer PCM."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    channels = x.shape[1]
    width = bits // 8
    data = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    fmt_chunk = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * width, channels * width, bits)
    fact = struct.pack("<4sII", b"fact", 4, x.shape[0])
    body = b"WAVE" + struct.pack("<4sI", b"fmt ", len(fmt_chunk)) + fmt_chunk + fact
    body += struct.pack("<4sI", b"data", len(data)) + data
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def have_sox():
    return shutil.which("sox") is not None


def have_ffmpeg():
    return shutil.which("ffmpeg") is not None


def encode(src_wav, dst):
    """Encodes a WAV to the format of `dst`'s extension: flac, ogg, mp3 (sox), m4a/aac (ffmpeg)."""
    ext = Path(dst).suffix.lower()
    if ext in (".m4a", ".aac"):
        if not have_ffmpeg():
            raise RuntimeError("ffmpeg is missing: apt-get install ffmpeg (sox cannot write AAC)")
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src_wav), "-c:a", "aac", str(dst)]
    else:
        if not have_sox():
            raise RuntimeError("sox is missing: apt-get install sox libsox-fmt-all")
        cmd = ["sox", str(src_wav), str(dst)]
    subprocess.run(cmd, check=True)


def make_parity_inputs(out_dir):
    """Writes the synthetic inputs of the log-mel parity test and `inputs.json` listing them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = []

    def add(name, samples, rate, fmt="f32"):
        path = out / f"{name}.wav"
        write_wav(path, samples, rate, fmt)
        inputs.append({"name": name, "file": path.name, "rate": rate})
        return path

    r = 32000
    add("sine_1k", sine(1000.0, r, 2.0), r)
    add("sine_low_quiet", sine(60.0, r, 1.0, amplitude=1e-3), r)
    add("chirp", chirp(50.0, 15000.0, r, 3.0), r)
    add("noise", white_noise(r, 2.0), r)
    add("silence", silence(r, 1.0), r)
    tone_noise = sine(440.0, r, 1.0) + white_noise(r, 1.0, amplitude=0.05, seed=1)
    for n in (1, 2, 100, 511, 512, 513, 600, 1023, 1025):
        add(f"short_{n}", tone_noise[:n], r)
    add("sine_8k_s16", sine(440.0, 8000, 2.0) + white_noise(8000, 2.0, 0.05, seed=2), 8000, "s16")
    add("chirp_44k_s24", chirp(100.0, 20000.0, 44100, 2.0), 44100, "s24")
    add("realish_44k", realish(44100, 3.0), 44100)
    stereo = np.stack([chirp(100.0, 20000.0, 48000, 2.0), white_noise(48000, 2.0, seed=3)], axis=1)
    src = add("stereo_48k", stereo, 48000, "s16")
    if have_sox():
        flac = out / "stereo_48k.flac"
        encode(src, flac)
        inputs.append({"name": "stereo_48k_flac", "file": flac.name, "rate": 48000})
    else:
        print("make_audio: sox is missing, no FLAC input (apt-get install sox libsox-fmt-all)")
    # A long input for the windowed comparison: 23.5 s of chirp + noise at 44.1 kHz.
    long = chirp(50.0, 16000.0, 44100, 23.5) + white_noise(44100, 23.5, 0.1, seed=4)
    add("long_44k", long, 44100, "s16")
    (out / "inputs.json").write_text(json.dumps(inputs, indent=1))
    return inputs


def main(argv):
    if len(argv) == 3 and argv[1] == "parity":
        inputs = make_parity_inputs(argv[2])
        print(f"make_audio: {len(inputs)} inputs in {argv[2]}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
