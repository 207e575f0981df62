"""The default's audio graph is the float32 twin (models/default-fp32) quantized to int8 by
scripts/quantize_audio.py: checked on real recorded sounds from Debian packages
(scripts/install-deps.sh), through the extension."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import DEFAULT_BUNDLE, ROOT, open_connection

TWIN = ROOT / "models" / "default-fp32"
QUANTIZE = [sys.executable, str(ROOT / "scripts" / "quantize_audio.py")]
SCRATCH = Path("/usr/share/scratch/Media/Sounds")
# Real recordings of several kinds (CC BY-SA scratch sounds, tuxpaint and pomodoro sounds).
RECORDINGS = [
    SCRATCH / "Animal" / "Rooster.wav",
    SCRATCH / "Animal" / "Dog1.wav",
    SCRATCH / "Animal" / "Meow.wav",
    SCRATCH / "Effects" / "BellToll.wav",
    SCRATCH / "Human" / "BabyCry.mp3",
    SCRATCH / "Percussion" / "DrumBuzz.wav",
    Path("/usr/share/tuxpaint/sounds/magic/lightning.ogg"),
    Path("/usr/share/tuxpaint/sounds/magic/rain.ogg"),
    Path("/usr/share/gnome-pomodoro/sounds/clock.ogg"),
]


@pytest.fixture(scope="module")
def recordings():
    missing = [str(p) for p in RECORDINGS if not p.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install-deps.sh")
    return RECORDINGS


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def embeddings(bundle, paths):
    conn = open_connection()
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('b', ?)", (str(bundle),))
    rows = conn.execute("SELECT path, embedding, error FROM audio_embed_files(?, 'b')", (json.dumps([str(p) for p in paths]),)).fetchall()
    conn.close()
    assert all(error is None for _, _, error in rows), rows
    return np.stack([np.frombuffer(e, "<f4") for _, e, _ in rows])


def test_the_default_is_its_float32_twin_quantized():
    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    twin = json.loads((TWIN / "manifest.json").read_text())
    quantization = manifest["audio"]["quantization"]
    assert "quantization" not in twin["audio"]
    assert quantization["float32_twin_sha256"] == twin["files"]["audio.onnx"] == sha256(TWIN / "audio.onnx")
    assert manifest["files"]["audio.onnx"] == sha256(DEFAULT_BUNDLE / "audio.onnx")
    # The same model otherwise: text encoder, front-end, windows.
    assert {k: v for k, v in manifest["audio"].items() if k != "quantization"} == twin["audio"]
    assert manifest["text"] == twin["text"] and manifest["files"]["text.onnx"] == twin["files"]["text.onnx"]
    graph = onnx.load(str(DEFAULT_BUNDLE / "audio.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Conv") == 8 and ops.count("QuantizeLinear") >= 8 and ops.count("DequantizeLinear") >= 16, ops
    int8 = sorted(t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("weight_quantized"))
    assert len(int8) == 8, int8  # the eight convolutions' weights; the head's MatMuls stay float32
    assert not any(n.op_type == "MatMul" and any(i.endswith("_quantized") for i in n.input) for n in graph.node)
    # The convolutions' float32 weights shrink to a quarter; the float32 head is the same bytes.
    conv_values = sum(int(np.prod(t.dims)) for t in graph.initializer if t.name in set(int8))
    saved = (TWIN / "audio.onnx").stat().st_size - (DEFAULT_BUNDLE / "audio.onnx").stat().st_size
    assert conv_values > 4_000_000 and saved > 0.95 * 3 * conv_values, (saved, conv_values)


def test_int8_embeddings_match_float32_on_real_sounds(recordings):
    q, f = embeddings(DEFAULT_BUNDLE, recordings), embeddings(TWIN, recordings)
    cosines = np.sum(q * f, axis=1)
    assert cosines.min() > 0.97 and cosines.mean() > 0.99, cosines
    # And what a user sees: each recording's best description is the same for both.
    conn = open_connection()
    words = ["a rooster crowing", "a dog barking", "a cat meowing", "a church bell", "a baby crying",
             "a drum roll", "thunder", "rain falling", "a clock ticking"]
    texts = np.stack([np.frombuffer(conn.execute("SELECT text_embed('default', ?)", (w,)).fetchone()[0], "<f4") for w in words])
    conn.close()
    assert ((q @ texts.T).argmax(1) == (f @ texts.T).argmax(1)).mean() >= 8 / 9


def test_applying_the_committed_ranges_gives_the_committed_bytes(tmp_path):
    out = tmp_path / "int8"
    subprocess.run([*QUANTIZE, "apply", "--fp32", str(TWIN), "--settings", str(DEFAULT_BUNDLE / "quantization.json"), "--out", str(out)],
                   check=True, capture_output=True)
    assert sha256(out / "audio.onnx") == json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["files"]["audio.onnx"]


def test_calibrate_then_apply_on_a_dataset_we_make(recordings, tmp_path):
    """The maintainer's step: ranges from real clips of a dataset folder (labels.csv with a
    concept per clip), one clip per concept; the bundle it writes loads and embeds like the
    float32 one; a graph that is not the one calibrated on is refused."""
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    with open(data / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "class", "concept"])
        for path in recordings:
            (data / "audio" / path.name).symlink_to(path)
            w.writerow([path.name, path.stem.lower(), path.stem.lower()])
    settings = tmp_path / "quantization.json"
    done = subprocess.run([*QUANTIZE, "calibrate", "--bundle", str(TWIN), "--data", str(data), "--out", str(settings),
                           "--calibrate-method", "Percentile", "--percentile", "99.99"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads(settings.read_text())
    assert written["calibration"]["clips"] == len(recordings) and written["calibration"]["windows"] > 0
    assert written["calibration"]["fp32_sha256"] == sha256(TWIN / "audio.onnx") and written["ranges"]
    bundle = tmp_path / "bundle"
    subprocess.run([*QUANTIZE, "apply", "--fp32", str(TWIN), "--settings", str(settings), "--out", str(bundle)], check=True, capture_output=True)
    cosines = np.sum(embeddings(bundle, recordings) * embeddings(TWIN, recordings), axis=1)
    assert cosines.mean() > 0.98, cosines
    # Ranges calibrated on one graph are refused for another.
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text((TWIN / "manifest.json").read_text())
    (other / "audio.onnx").write_bytes((DEFAULT_BUNDLE / "audio.onnx").read_bytes())
    refused = subprocess.run([*QUANTIZE, "apply", "--fp32", str(other), "--settings", str(settings), "--out", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "not the float32 graph these ranges were calibrated on" in refused.stderr, refused.stderr
