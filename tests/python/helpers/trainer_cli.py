"""Running `dist/audiotext-train` from tests, and the tiny generated dataset they train on."""

import subprocess

import numpy as np

import make_audio as ma
from conftest import DIST

TRAINER = DIST / "audiotext-train"
RATE = 32000
TONES = [(300, "a low hum"), (900, "a whistle"), (2700, "a high beep"), (5000, "a shrill squeal")]


def trainer(*args, check=True, timeout=300):
    """Runs the trainer; with `check`, a non-zero exit fails the test with its output."""
    result = subprocess.run([str(TRAINER), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"audiotext-train {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def write_tone_dataset(root, seconds=1.5):
    """A generic-layout dataset (`captions.csv` + `audio/`) of 8 tones, two captions each."""
    (root / "audio").mkdir(parents=True)
    rows = ["file_name,caption_1,caption_2"]
    for i, (freq, caption) in enumerate(TONES * 2):
        name = f"tone-{i}.wav"
        ma.write_wav(root / "audio" / name, ma.sine(freq, RATE, seconds).astype(np.float32), RATE, "f32")
        rows.append(f"{name},{caption},{caption} that lasts")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root
