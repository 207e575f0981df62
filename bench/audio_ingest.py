"""Audio ingestion benchmark: one mode per run, so each can be timed as a whole process and
modes can be paired against each other.

  ours       audio_embed_files over a folder in SQLite (decode, resample, log-mel, encoder)
  onnx-only  the same audio.onnx in onnxruntime on precomputed log-mel (the encoder's floor)
  python     what a Python user would write: librosa load + resample + melspectrogram +
             power_to_db, then onnxruntime on the same audio.onnx, file by file
  logmel     librosa's log-mel alone (decode + resample excluded: arrays preloaded)
  info       parameters and GMACs per 10 s of audio of the bundle's audio.onnx
  table      the default (int8) against models/default-fp32, each through `ours` and
             `onnx-only`, every one in its own process, interleaved --repeats times (default 3):
             one markdown table of median seconds, clips/s, audio-seconds/s and peak memory

Run with the test venv:  .venv/bin/python bench/audio_ingest.py MODE [FOLDER] [BUNDLE]
Each mode prints one line: mode, files, seconds of work (excluding interpreter start-up and
model loading), files per second, peak resident memory of the process.
  .venv/bin/python bench/audio_ingest.py table [FOLDER] [--repeats N]
"""

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The manifest's windows and log-mel in librosa's terms, as the tests reproduce audio_embed
# (tests/python/audio/test_manifest_reproduction.py, which imports the helpers and conftest).
TESTS = ROOT / "tests" / "python"
sys.path[:0] = [str(TESTS / "audio"), str(TESTS / "helpers"), str(TESTS)]
ARGS = [a for a in sys.argv if not a.startswith("--")]
FOLDER = Path(ARGS[2]) if len(ARGS) > 2 else ROOT.parent / "shared" / "data" / "esc50-dev" / "audio"
BUNDLE = Path(ARGS[3]) if len(ARGS) > 3 else ROOT / "models" / "default"
MANIFEST = json.loads((BUNDLE / "manifest.json").read_text())
AUDIO = MANIFEST["audio"]
FILES = sorted(p for p in FOLDER.rglob("*") if p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3", ".m4a"})
BATCH = 32


def report(mode, seconds):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child of a big parent
    # would report the parent's peak.
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    print(f"{mode}: {len(FILES)} files in {seconds:.2f} s, {len(FILES) / seconds:.1f} files/s, peak {peak_mb:.0f} MB")


def librosa_log_mel(y):
    """Every window's log-mel of `y`, frames first, as the extension cuts and computes them."""
    from test_manifest_reproduction import window_logmels

    return [x for _, _, x in window_logmels(y, AUDIO)]


def session():
    import onnxruntime

    return onnxruntime.InferenceSession(str(BUNDLE / AUDIO["onnx"]), providers=["CPUExecutionProvider"])


def run_ours():
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(str(ROOT / "dist" / "audiotext0"))
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('b', ?)", (str(BUNDLE),))
    conn.execute("SELECT audio_embed('b', ?)", (str(FILES[0]),)).fetchone()  # load the model
    started = time.perf_counter()
    rows = conn.execute("SELECT count(embedding), count(error) FROM audio_embed_files(?, 'b')", (str(FOLDER),)).fetchone()
    seconds = time.perf_counter() - started
    assert rows == (len(FILES), 0), rows
    report("ours (audio_embed_files)", seconds)


def run_onnx_only():
    import librosa

    features = [w for f in FILES for w in librosa_log_mel(librosa.load(f, sr=AUDIO["sample_rate"])[0])]
    sess = session()
    started = time.perf_counter()
    # Same batching as the extension: windows of equal length together, 32 at a time.
    by_length = {}
    for x in features:
        by_length.setdefault(len(x), []).append(x)
    for group in by_length.values():
        for i in range(0, len(group), BATCH):
            batch = np.stack(group[i : i + BATCH])[:, None]
            sess.run([AUDIO["output"]], {AUDIO["input"]["name"]: batch})
    report("onnx-only (audio.onnx on precomputed log-mel)", time.perf_counter() - started)


def run_python():
    import librosa

    sess = session()
    started = time.perf_counter()
    for f in FILES:
        y, _ = librosa.load(f, sr=AUDIO["sample_rate"])
        embeddings = [sess.run([AUDIO["output"]], {AUDIO["input"]["name"]: x[None, None]})[0][0] for x in librosa_log_mel(y)]
        np.mean(embeddings, axis=0)
    report("python (librosa + onnxruntime)", time.perf_counter() - started)


def run_logmel():
    import librosa

    signals = [librosa.load(f, sr=AUDIO["sample_rate"])[0] for f in FILES]
    started = time.perf_counter()
    for y in signals:
        librosa_log_mel(y)
    report("logmel (librosa melspectrogram + dB, preloaded audio)", time.perf_counter() - started)


def run_info():
    """Parameters from the initializers; MACs of Conv, Gemm and MatMul from the real shapes of
    one 10 s run (the graph pads dynamically, which static shape inference cannot follow)."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    model = onnx.load(str(BUNDLE / AUDIO["onnx"]))
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    # Zero points and scales of an int8 graph are not parameters.
    params = sum(int(np.prod(shape)) for name, shape in weights.items() if not name.endswith(("_scale", "_zero_point")))
    # In an int8 graph a Conv's weight is a DequantizeLinear of the stored int8 tensor.
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    counted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    known = {o.name for o in model.graph.output}
    wanted = sorted({name for n in counted for name in list(n.input[:1]) + [n.output[0]]} - set(weights) - known)
    for name in wanted:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    frames = 1 + int(10 * AUDIO["sample_rate"]) // AUDIO["hop_length"]
    x = np.zeros((1, 1, frames, AUDIO["n_mels"]), np.float32)
    names = [o.name for o in sess.get_outputs()]
    shapes = dict(zip(names, (v.shape for v in sess.run(names, {AUDIO["input"]["name"]: x}))))
    macs = 0
    for node in counted:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(weights[node.input[1]][1:]))  # [out, in/groups, kh, kw]
        else:
            inner = (shapes.get(node.input[0]) or weights[node.input[0]])[-1]
            macs += int(np.prod(out)) * int(inner)
    print(f"info: {params / 1e6:.3f} M parameters, {macs / 1e9:.3f} GMACs per 10 s of audio ({frames} frames), "
          f"audio.onnx {(BUNDLE / AUDIO['onnx']).stat().st_size / 1e6:.2f} MB")


def run_table():
    import librosa

    repeats = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--repeats=")), 3))
    audio_seconds = sum(librosa.get_duration(path=f) for f in FILES)
    bundles = {"default (int8)": ROOT / "models" / "default", "default-fp32": ROOT / "models" / "default-fp32"}
    runs = {(b, m): [] for b in bundles for m in ("ours", "onnx-only")}
    for _ in range(repeats):
        for (b, m), results in runs.items():
            line = subprocess.run([sys.executable, __file__, m, str(FOLDER), str(bundles[b])], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
            seconds = float(line.split(" files in ")[1].split(" s,")[0])
            peak = float(line.rsplit("peak ", 1)[1].split(" MB")[0])
            results.append((seconds, peak))
    print(f"{len(FILES)} files, {audio_seconds:.0f} s of audio, from {FOLDER}; median of {repeats} interleaved runs, "
          f"each its own process, {len(os.sched_getaffinity(0))} cores\n")
    print("| bundle | path | seconds | clips/s | audio s/s | peak MB | int8 speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (b, m), results in runs.items():
        seconds = statistics.median(r[0] for r in results)
        peak = max(r[1] for r in results)
        fp32 = statistics.median(r[0] for r in runs[("default-fp32", m)])
        speedup = f"{fp32 / seconds:.2f}x" if b != "default-fp32" else ""
        print(f"| {b} | {m} | {seconds:.2f} | {len(FILES) / seconds:.1f} | {audio_seconds / seconds:.0f} | {peak:.0f} | {speedup} |")


if __name__ == "__main__":
    modes = {"ours": run_ours, "onnx-only": run_onnx_only, "python": run_python, "logmel": run_logmel, "info": run_info,
             "table": run_table}
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in modes:
        sys.exit(__doc__)
    modes[mode]()
