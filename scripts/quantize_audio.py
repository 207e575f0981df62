"""Static int8 quantization of a bundle's audio.onnx (issue 24), in two steps so that set-up
needs no audio:

  calibrate  run the float32 graph over log-mel windows of real training clips and write the
             activation ranges, with every setting of the quantization, to one JSON file
             (committed as models/default/quantization.json; needs the training data)
  apply      write the QDQ graph from a float32 audio.onnx and that file alone (set-up runs
             this: the same inputs and onnxruntime version give the same bytes)

  .venv/bin/python scripts/quantize_audio.py calibrate --bundle models/default-fp32 \
      --data .cache/corpus/train-set --out models/default/quantization.json
  .venv/bin/python scripts/quantize_audio.py apply --fp32 models/default-fp32 \
      --settings models/default/quantization.json --out models/default

`apply` writes audio.onnx into --out and, when --out holds no manifest yet, copies the
float32 bundle's with the new sha256 and a `quantization` section.

Windows are cut and their log-mels computed as the extension does (tests/python's librosa
reproduction, which the suite checks against audio_embed). The clips are one per concept of
the dataset's labels.csv (the first by file name), so every kind of sound sets the ranges;
--exclude-validation-of RUN leaves out a cross-validation fold's validation clips.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# conftest and tests/python/audio/test_manifest_reproduction.py (which imports the helpers), and
# the package, whose first use quantizes the same way.
TESTS = ROOT / "tests" / "python"
sys.path[:0] = [str(TESTS / "audio"), str(TESTS / "helpers"), str(TESTS), str(ROOT / "python")]

from sqlite_audiotext.models import quantize, sha256  # noqa: E402

# The recipe; every field lands in the settings file, and `apply` reads them from there.
DEFAULTS = {
    "format": "QDQ",
    # x86's int8 kernels take unsigned activations and signed weights.
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    # The convolutions are all but 0.1% of the MACs; the head's two MatMuls stay float32.
    "op_types_to_quantize": ["Conv"],
    "nodes_to_exclude": [],
    # Ranges from the 0.01% and 99.99% points of each tensor: on the open-world
    # cross-validation it kept class mAP@10 within 0.001 of float32, MinMax lost 0.006
    # (docs/comparison/quantized.md).
    "calibrate_method": "Percentile",
    "extra_options": {"CalibPercentile": 99.99},
    "windows_per_clip": 4,
}


def calibration_clips(data, exclude):
    """One clip per concept: the first file name of each concept, in name order."""
    import csv

    with open(data / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["file_name"])
    chosen = {}
    for row in rows:
        if row["file_name"] not in exclude:
            chosen.setdefault(row["concept"], row["file_name"])
    return [data / "audio" / name for _, name in sorted(chosen.items())]


def log_mel_windows(paths, audio, per_clip):
    """Up to `per_clip` windows of each clip, spread over it, shaped as the graph's input."""
    import librosa
    from conftest import window_bounds
    from test_manifest_reproduction import librosa_logmel

    for path in paths:
        y, _ = librosa.load(path, sr=audio["sample_rate"], mono=True)
        bounds = list(window_bounds(len(y), audio["sample_rate"], audio["windowing"]))
        picks = np.unique(np.linspace(0, len(bounds) - 1, min(per_clip, len(bounds))).round().astype(int))
        for i in picks:  # only the picked windows' log-mels are computed
            start, end = bounds[i]
            yield librosa_logmel(y[start:end], audio).astype(np.float32)[None, None]


def calibrate(args):
    from onnxruntime.quantization import CalibrationDataReader

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    audio = manifest["audio"]
    exclude = set()
    if args.exclude_validation_of:
        config = json.loads((args.exclude_validation_of / "config.json").read_text())
        exclude = set(config["data"]["validation_files"])
    settings = dict(DEFAULTS)
    for key in ("calibrate_method", "activation_type", "weight_type"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    if args.reduce_range:
        settings["reduce_range"] = True
    if args.exclude_nodes:
        settings["nodes_to_exclude"] = args.exclude_nodes.split(",")
    if args.percentile:
        settings["extra_options"] = {"CalibPercentile": args.percentile}
    if settings["calibrate_method"] != "Percentile":
        settings.pop("extra_options")
    clips = calibration_clips(args.data, exclude)
    windows = list(log_mel_windows(clips, audio, settings["windows_per_clip"]))
    if settings["calibrate_method"] != "MinMax":
        # The histogram calibrators stack each tensor over the windows: one length only.
        lengths = [len(x[0, 0]) for x in windows]
        full = max(set(lengths), key=lengths.count)
        windows = [x for x, n in zip(windows, lengths) if n == full]
    print(f"calibrating on {len(windows)} windows of {len(clips)} clips ({settings['calibrate_method']})")

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.items = iter(windows)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {audio["input"]["name"]: x}

    settings["calibration"] = {
        "data": str(args.data),
        "clips": len(clips),
        "windows": len(windows),
        "excluded_validation_of": str(args.exclude_validation_of) if args.exclude_validation_of else None,
        "fp32_sha256": sha256(args.bundle / audio["onnx"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        settings = quantize(args.bundle / audio["onnx"], settings, Path(tmp) / "audio.onnx", Windows())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


def apply(args):
    settings = json.loads(args.settings.read_text())
    manifest = json.loads((args.fp32 / "manifest.json").read_text())
    fp32_onnx = args.fp32 / manifest["audio"]["onnx"]
    want = settings["calibration"]["fp32_sha256"]
    if sha256(fp32_onnx) != want:
        sys.exit(f"error: {fp32_onnx} is not the float32 graph these ranges were calibrated on (sha256 {want}): "
                 "rebuild it, or calibrate again (scripts/quantize_audio.py calibrate)")
    import onnxruntime

    if onnxruntime.__version__ != settings["onnxruntime"]:
        print(f"note: onnxruntime {onnxruntime.__version__}, calibrated with {settings['onnxruntime']}: "
              "the bytes may differ from the committed manifest's", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    out_onnx = args.out / manifest["audio"]["onnx"]
    with tempfile.TemporaryDirectory() as tmp:
        quantize(fp32_onnx, settings, Path(tmp) / "audio.onnx")
        shutil.move(Path(tmp) / "audio.onnx", out_onnx)
    if not (args.out / "manifest.json").exists():
        manifest["files"][manifest["audio"]["onnx"]] = sha256(out_onnx)
        manifest["name"] = manifest["name"].replace("(audio, float32)", "(audio, int8)", 1)
        manifest["audio"]["quantization"] = {
            key: settings[key] for key in DEFAULTS if key in settings and key != "windows_per_clip"
        } | {"calibration": settings["calibration"], "onnxruntime": settings["onnxruntime"], "float32_twin_sha256": want}
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for name in manifest["files"]:
            if name != manifest["audio"]["onnx"] and not (args.out / name).exists():
                shutil.copyfile(args.fp32 / name, args.out / name)
    print(f"{out_onnx}: sha256 {sha256(out_onnx)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--bundle", type=Path, required=True, help="the float32 bundle")
    c.add_argument("--data", type=Path, required=True, help="dataset folder (labels.csv with a concept column, audio/)")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--exclude-validation-of", type=Path, help="a run folder: leave out its validation clips")
    c.add_argument("--calibrate-method", choices=["MinMax", "Percentile", "Entropy", "Distribution"])
    c.add_argument("--percentile", type=float)
    c.add_argument("--activation-type", choices=["QUInt8", "QInt8"])
    c.add_argument("--weight-type", choices=["QUInt8", "QInt8"])
    c.add_argument("--reduce-range", action="store_true")
    c.add_argument("--exclude-nodes", help="comma-separated node names kept in float32")
    a = sub.add_parser("apply")
    a.add_argument("--fp32", type=Path, required=True, help="the float32 bundle")
    a.add_argument("--settings", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    {"calibrate": calibrate, "apply": apply}[args.command](args)


if __name__ == "__main__":
    main()
