"""The manifest's audio section is enough to reproduce audio_embed independently: librosa
decodes, resamples and computes the log-mel from the manifest's keys (librosa's own argument
names, one channel per window length with `multiscale_win_lengths`), onnxruntime runs
audio.onnx (with the window's samples on a `waveform` input when the manifest names one),
windows are pooled as `windowing` says. test_encoder_bundles.py reproduces every encoder's
bundle (multiscale and waveform ones included) with `reproduce`. Resamplers and decoders differ
(librosa uses soxr and libsndfile/audioread), so the bar is cosine >= 0.99.

The optional front-end keys (aiSFX's and ours) are read from the manifest too, by
test_logmel's librosa_logmel: `peak_normalize: window` divides each window's samples by their
peak |x| (per window, not per file), `input_gain_db` multiplies them by 10^(gain/20),
`lowpass_hz` zeroes the power bins above the cut-off, `mel_norm: l1` is librosa's norm=1,
`log: log10_1p` is log10(1 + log_multiplier * mel), and `log_divisor` divides the log; short
windows are padded with the log-mel of silence (`silence_value`). No trained aiSFX bundle
exists yet, so test_reproduced_from_an_aisfx_manifest makes one with a small linear encoder
(mean over frames, fixed projection) to hold the extension and `reproduce` to the same
features end to end."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

librosa = pytest.importorskip("librosa", reason="librosa is in tests/python/requirements.txt")
ort = pytest.importorskip("onnxruntime")

import hashlib

import make_audio as ma
from conftest import DEFAULT_BUNDLE, ROOT, open_connection, window_bounds
# The log-mel parity test's statement of librosa's log-mel.
from test_logmel import AISFX_FRONT_END, LOG10_1P_ABS_TOL, librosa_logmel

COSINE_BAR = 0.99
# Upsampling (a 16 kHz file to the model's 32 kHz) leaves the band above the source's Nyquist
# empty; soxr and our FFT resampler leak different near-floor energy into it, and the dB log
# magnifies differences near the floor. Measured 0.985 there; 0.99+ everywhere else.
UPSAMPLED_COSINE_BAR = 0.98


def bundle_dir():
    return Path(os.environ.get("AUDIOTEXT_TEST_AUDIO_BUNDLE", DEFAULT_BUNDLE))


def silence_value(a):
    """The log-mel value of silence (a mel value of 0): the log of the floor for db and ln, 0
    for log10_1p, divided by log_divisor."""
    value = {"db": lambda f: 10 * np.log10(f), "ln": np.log,
             "log10_1p": lambda f: 0.0}[a["log"]](np.float32(a["log_floor"]))
    return value / np.float32(a["log_divisor"]) if a.get("log_divisor") is not None else value


def window_logmels(y, a):
    """The log-mel of each window of `y` (mono, at the model's rate), each computed on that
    window alone (so peak normalisation is per window): [(start, end, frames x values)]."""
    return [(start, end, librosa_logmel(y[start:end], a).astype(np.float32))
            for start, end in window_bounds(len(y), a["sample_rate"], a["windowing"])]


def reproduce(path, manifest, bundle):
    a = manifest["audio"]
    sr, hop = a["sample_rate"], a["hop_length"]
    y, _ = librosa.load(path, sr=sr, mono=True)
    session = ort.InferenceSession(str(bundle / a["onnx"]), providers=["CPUExecutionProvider"])
    silence = silence_value(a)
    min_frames = (a.get("encoder") or {}).get("min_frames", 1)
    # Multiscale mel: one input channel per window length, `win_length` first.
    channels = 1 + len(a.get("multiscale_win_lengths", []))
    layout, waveform_input = a["input"]["layout"], a["input"].get("waveform")
    embeddings = []
    for start, end, x in window_logmels(y, a):
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
        elif layout == "batch,frames,mels":
            assert x.shape[1] == 1, (layout, x.shape)
            feeds = {a["input"]["name"]: x[None, :, 0]}
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
    # The 14.7 kHz file keeps only content below 5 kHz: librosa's resampler (soxr) and ours
    # (rubato) have different anti-aliasing filters near Nyquist, which is no part of the
    # manifest, and the aiSFX log (log10(1 + 10^4 x)) shows their difference in the noise there.
    short = signal[: int(rate * 2)]
    spectrum = np.fft.rfft(short)
    spectrum[np.fft.rfftfreq(len(short), 1 / rate) > 5000] = 0
    short = np.fft.irfft(spectrum, len(short)).astype(np.float32)
    files = {"long-44k.wav": (signal, rate), "short-16k.wav": (short[::3].copy(), rate // 3)}
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


# ---- an aiSFX front-end ----------------------------------------------------------------------

AISFX_DIM = 32


def write_linear_aisfx_bundle(folder, front_end):
    """A bundle with an aiSFX front-end and a small linear encoder: log-mel [batch, frames, 96]
    -> mean over frames -> minus 0.3 -> fixed random projection to 32 -> L2 normalisation. The
    embedding then follows every band of the log-mel, so features that differ show."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    weight = rng.standard_normal((96, AISFX_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["logmel", "frames_axis"], ["pooled"], keepdims=0),
        helper.make_node("Sub", ["pooled", "centre"], ["centred"]),
        helper.make_node("MatMul", ["centred", "weight"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes, "linear_aisfx",
        [helper.make_tensor_value_info("logmel", TensorProto.FLOAT, ["batch", "frames", 96])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", AISFX_DIM])],
        [numpy_helper.from_array(np.array([1], np.int64), "frames_axis"),
         numpy_helper.from_array(np.float32(0.3), "centre"),
         numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audio.onnx").write_bytes(model.SerializeToString())
    audio = {"onnx": "audio.onnx", **front_end,
             "windowing": {"clip_seconds": 101376 / 44100, "hop_seconds": 51200 / 44100,
                           "min_seconds": 1.0, "pooling": "mean"},
             "input": {"name": "logmel", "layout": "batch,frames,mels"}, "output": "embedding"}
    manifest = {"format_version": 1, "name": "linear-aisfx-test", "embedding_dim": AISFX_DIM,
                "audio": audio,
                "files": {"audio.onnx": hashlib.sha256((folder / "audio.onnx").read_bytes()).hexdigest()}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def test_reproduced_from_an_aisfx_manifest(tmp_path):
    """audio_embed with an aiSFX front-end (per-window peak normalisation, l1 filters,
    log10_1p, divisor; then gain and low-pass) equals `reproduce` from the manifest alone. The
    file is at the model's rate and float32, so both sides get the same samples and the bar
    can be tight; the same bar refuses a manifest that leaves out one step."""
    rate = 44100
    long_quiet = (0.03 * ma.realish(rate, 4.0, seed=3)).astype(np.float32)  # 4 blocks, peak 0.021
    short = (ma.realish(rate, 1.5, seed=4) / 1.4).astype(np.float32)  # one 65-frame block, peak 0.5
    conn = open_connection()
    variants = {"plain": {}, "gain_lowpass": {"input_gain_db": -20.0, "lowpass_hz": 8000.0}}
    for name, extra in variants.items():
        bundle = tmp_path / name
        manifest = write_linear_aisfx_bundle(bundle, {**AISFX_FRONT_END, **extra})
        conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES (?, ?)", (name, str(bundle)))
        for label, samples in (("long_quiet", long_quiet), ("short", short)):
            path = tmp_path / f"{name}-{label}.wav"
            ma.write_wav(path, samples, rate, "f32")
            ours = np.frombuffer(conn.execute("SELECT audio_embed(?, ?)", (name, str(path))).fetchone()[0], "<f4")
            theirs = reproduce(path, manifest, bundle)
            similarity = float(np.dot(ours, theirs))
            assert similarity >= 1 - 1e-6, (name, label, similarity)
            # Leaving out any step the manifest states moves the embedding past that bar.
            for key in ("peak_normalize", *extra):
                partial = json.loads(json.dumps(manifest))
                del partial["audio"][key]
                off = float(np.dot(ours, reproduce(path, partial, bundle)))
                assert off < 1 - 1e-4, (name, label, key, off)


def test_reproduced_logmel_of_aisfx_windows_is_ours():
    """`window_logmels` (what reproduce() feeds the encoder) against our streamed log-mel of
    each aiSFX block of a 23.5 s file, dumped by cargo test --test logmel_parity: the same
    windows, and values within test_logmel's log10_1p bound."""
    dumps = ROOT / "target" / "logmel-parity"
    if not (dumps / "cases.json").exists():
        pytest.skip(f"{dumps} is absent: run cargo test --test logmel_parity first")
    doc = json.loads((dumps / "cases.json").read_text())
    checked = 0
    for case in doc["cases"]:
        cfg = doc["configs"][case["config"]]
        if case["kind"] != "windowed" or cfg["log"] != "log10_1p":
            continue
        a = {**cfg, "windowing": case["windowing"]}
        got = window_logmels(np.load(dumps / case["samples"]), a)
        assert [[s, e] for s, e, _ in got] == case["bounds"]
        for (_, _, x), file in zip(got, case["windows"]):
            ours = np.load(dumps / file)
            assert ours.shape == x.shape == (100 if len(x) == 100 else len(x), 96)
            assert np.abs(ours - x).max() <= LOG10_1P_ABS_TOL, (case["name"], file)
            checked += 1
    assert checked >= 20, checked
