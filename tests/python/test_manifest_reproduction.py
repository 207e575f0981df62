"""The manifest's audio section is enough to reproduce audio_embed independently: librosa
decodes, resamples and computes the log-mel from the manifest's keys (librosa's own argument
names, one channel per window length with `multiscale_win_lengths`), onnxruntime runs
audio.onnx (with the window's samples on a `waveform` input when the manifest names one),
windows are pooled as `windowing` says. test_encoder_bundles.py reproduces every encoder's
bundle (multiscale and waveform ones included) with `reproduce`. Resamplers and decoders differ
(librosa uses soxr and libsndfile/audioread), so the bar is cosine >= 0.99."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

librosa = pytest.importorskip("librosa", reason="librosa is in tests/python/requirements.txt")
ort = pytest.importorskip("onnxruntime")

import make_audio as ma
from conftest import DEFAULT_BUNDLE, open_connection
# The log-mel parity test's statements of the window contract and of librosa's log-mel.
from test_logmel import librosa_logmel, window_bounds

COSINE_BAR = 0.99
# Upsampling (a 16 kHz file to the model's 32 kHz) leaves the band above the source's Nyquist
# empty; soxr and our FFT resampler leak different near-floor energy into it, and the dB log
# magnifies differences near the floor. Measured 0.985 there; 0.99+ everywhere else.
UPSAMPLED_COSINE_BAR = 0.98


def bundle_dir():
    return Path(os.environ.get("AUDIOTEXT_TEST_AUDIO_BUNDLE", DEFAULT_BUNDLE))


def reproduce(path, manifest, bundle):
    a = manifest["audio"]
    sr, hop = a["sample_rate"], a["hop_length"]
    y, _ = librosa.load(path, sr=sr, mono=True)
    session = ort.InferenceSession(str(bundle / a["onnx"]), providers=["CPUExecutionProvider"])
    silence = 10 * np.log10(a["log_floor"]) if a["log"] == "db" else np.log(a["log_floor"])
    min_frames = (a.get("encoder") or {}).get("min_frames", 1)
    # Multiscale mel: one input channel per window length, `win_length` first.
    channels = 1 + len(a.get("multiscale_win_lengths", []))
    layout, waveform_input = a["input"]["layout"], a["input"].get("waveform")
    embeddings = []
    for start, end in window_bounds(len(y), sr, a["windowing"]):
        x = librosa_logmel(y[start:end], a).astype(np.float32)
        frames = len(x)
        x = x.reshape(frames, channels, a["n_mels"])
        # The waveform input: the window's samples for frames * hop, read on past the window's
        # end and zero-filled past the file's.
        wave = np.zeros(max(frames, min_frames) * hop, np.float32)
        take = y[start : start + frames * hop]
        wave[: len(take)] = take
        if frames < min_frames:
            x = np.concatenate([x, np.full((min_frames - frames, *x.shape[1:]), silence, np.float32)])
        if layout == "batch,frames,channels,mels":
            feeds = {a["input"]["name"]: x[None]}
        else:
            assert layout == "batch,1,frames,mels" and x.shape[1] == 1, (layout, x.shape)
            feeds = {a["input"]["name"]: x[None, :, 0][:, None]}
        if waveform_input:
            feeds[waveform_input] = wave[None]
        (out,) = session.run([a["output"]], feeds)
        embeddings.append(out[0])
    pooled = np.mean(embeddings, axis=0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def setup():
    bundle = bundle_dir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "audio" in manifest, f"{bundle} has no audio encoder"
    conn = open_connection()
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('m', ?)", (str(bundle),))
    return conn, manifest, bundle


def ours(conn, path):
    return np.frombuffer(conn.execute("SELECT audio_embed('m', ?)", (str(path),)).fetchone()[0], "<f4")


def test_reproduced_from_the_manifest_on_synthetic_files(setup, tmp_path):
    conn, manifest, bundle = setup
    rate = 44100  # not the model's rate: both sides resample
    t = np.arange(int(rate * 23.0)) / rate  # three 10 s windows, the last 3 s long
    signal = (0.3 * np.sin(2 * np.pi * 600 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
              + ma.white_noise(rate, 23.0, 0.05)).astype(np.float32)
    files = {"long-44k.wav": (signal, rate), "short-16k.wav": (signal[: int(rate * 2)][::3].copy(), rate // 3)}
    for name, (samples, sr) in files.items():
        ma.write_wav(tmp_path / name, samples, sr, "s16")
        similarity = float(np.dot(ours(conn, tmp_path / name), reproduce(tmp_path / name, manifest, bundle)))
        bar = UPSAMPLED_COSINE_BAR if sr < manifest["audio"]["sample_rate"] else COSINE_BAR
        assert similarity >= bar, (name, similarity)


def test_reproduced_from_the_manifest_on_real_clips(setup, shared_data):
    conn, manifest, bundle = setup
    clips = sorted((shared_data / "esc50-dev" / "audio").glob("*.flac"))[::40]
    similarities = [float(np.dot(ours(conn, c), reproduce(c, manifest, bundle))) for c in clips]
    assert min(similarities) >= COSINE_BAR, dict(zip([c.name for c in clips], similarities))
