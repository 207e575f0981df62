"""`fit` (the from-scratch trainer) does not lose a run to one bad file: every file is decoded
before the split, and one that cannot be (here a WAV cut inside its data, and bytes that are not
audio) is named with its error, counted in the run's config.json, and left out of both sides;
more than `--max-bad-share` of them fails the run before any training, naming the first."""

import json

import pytest

from conftest import DEFAULT_BUNDLE
from trainer_cli import trainer, write_tone_dataset


@pytest.fixture
def data(tmp_path):
    root = write_tone_dataset(tmp_path / "data")
    whole = (root / "audio" / "tone-0.wav").read_bytes()
    (root / "audio" / "cut.wav").write_bytes(whole[: len(whole) // 2])
    (root / "audio" / "notes.wav").write_bytes(b"these are not samples\n" * 40)
    with open(root / "captions.csv", "a") as f:
        f.write("cut.wav,a low hum cut short,a low hum\nnotes.wav,some notes,notes\n")
    return root


def fit(data, run, *more, check=True):
    return trainer("fit", "--data", data, "--text-bundle", DEFAULT_BUNDLE, "--out", run, "--epochs", 1,
                   "--max-steps", 1, "--width", 2, "--batch-size", 4, "--max-seconds", 2, "--cache",
                   run.parent / "cache", *more, check=check)


def test_bad_files_are_skipped_named_and_counted(data, tmp_path):
    run = tmp_path / "run"
    result = fit(data, run, "--max-bad-share", 0.25)
    assert "skipped: 2 of 10 files cannot be decoded (20.0%)" in result.stdout, result.stdout
    assert "cut.wav" in result.stderr and "is truncated" in result.stderr, result.stderr
    assert "notes.wav" in result.stderr and "not a supported audio file" in result.stderr, result.stderr
    config = json.loads((run / "config.json").read_text())["data"]
    skipped = {s["file"].rsplit("/", 1)[-1]: s["error"] for s in config["skipped_files"]}
    assert set(skipped) == {"cut.wav", "notes.wav"}
    used = config["train_clips"] + len(config["validation_files"])
    assert used == 8 and not {"cut.wav", "notes.wav"} & set(config["validation_files"])


def test_too_many_bad_files_fail_before_training_naming_the_first(data, tmp_path):
    run = tmp_path / "run"
    result = fit(data, run, "--max-bad-share", 0.1, check=False)
    assert result.returncode != 0
    assert "2 of 10 files (20.0%) cannot be decoded, more than --max-bad-share 0.1" in result.stderr, result.stderr
    assert "epoch" not in result.stdout
