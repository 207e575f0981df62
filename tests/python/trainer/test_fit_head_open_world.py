"""fit-head on several sources at once (issue 21): a file that cannot be decoded is skipped and
named rather than the end of the run; `--train-sources`, `--holdout-classes`,
`--source-balance`, `--background-mixes` and `--captions-per-step`; the open-world metrics
(a reference source scored alone and among the other sources' clips) and the held-out-concept
report. The aiSFX backbone runs for real on the tones, noise bursts and clicks of
test_fit_head."""

import csv
import json

import numpy as np
import pytest

import make_audio as ma
from test_fit_head import CAPTIONS, CHECKPOINT, CLIPS, QUERIES, fit_head, sound
from trainer_cli import TRAINER

# Besides test_fit_head's 12 clips (the reference source, "esc50"): two more sources, one of
# them holding a background kind (rain-like noise) that mixes go under the others.
EXTRA = {
    "hum-0": ("hum", 44100, "s16", 3.0, 0, "pkg-a", "event"),
    "hum-1": ("hum", 32000, "s16", 2.0, 1, "pkg-a", "event"),
    "hum-2": ("hum", 44100, "f32", 2.5, 2, "pkg-a", "event"),
    "hum-3": ("hum", 22050, "s16", 3.0, 3, "pkg-a", "event"),
    "rain-0": ("rain", 44100, "s16", 4.0, 0, "pkg-b", "background"),
    "rain-1": ("rain", 32000, "s16", 3.0, 1, "pkg-b", "background"),
    "rain-2": ("rain", 44100, "f32", 3.5, 2, "pkg-b", "background"),
    "rain-3": ("rain", 16000, "s16", 3.0, 3, "pkg-b", "background"),
}
EXTRA_CAPTIONS = {
    "hum": ("a low electrical hum", "a deep droning buzz"),
    "rain": ("steady rain falling", "rain pattering outside"),
}
EXTRA_QUERIES = [("hum", "mains hum"), ("hum", "a transformer buzzing"), ("rain", "a rain shower")]


def extra_sound(kind, rate, seconds, variant):
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    if kind == "hum":
        f = [50.0, 60.0, 100.0, 120.0][variant]
        return 0.3 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(6 * np.pi * f * t)
    return 0.3 * ma.white_noise(rate, seconds, 0.5, seed=40 + variant)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if not TRAINER.exists() or not CHECKPOINT.exists():
        pytest.fail(f"{TRAINER} or {CHECKPOINT} is missing: run scripts/build.sh")
    root = tmp_path_factory.mktemp("fit-head-open")
    data = root / "data"
    (data / "audio").mkdir(parents=True)
    captions = [["file_name", "caption_1", "caption_2"]]
    labels = [["file_name", "class", "recording", "source", "kind"]]
    for name, (kind, rate, fmt, seconds, variant) in CLIPS.items():
        ma.write_wav(data / "audio" / f"{name}.wav", sound(kind, rate, seconds, variant).astype(np.float32), rate, fmt)
        captions.append([f"{name}.wav", *CAPTIONS[kind]])
        labels.append([f"{name}.wav", kind, "", "esc50", "event"])
    for name, (kind, rate, fmt, seconds, variant, source, role) in EXTRA.items():
        samples = extra_sound(kind, rate, seconds, variant).astype(np.float32)
        ma.write_wav(data / "audio" / f"{name}.wav", samples, rate, fmt)
        captions.append([f"{name}.wav", *EXTRA_CAPTIONS[kind]])
        labels.append([f"{name}.wav", kind, "", source, role])
    # A file that no decoder reads, among the training data.
    (data / "audio" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    captions.append(["broken.wav", "a dog barks", "a dog"])
    labels.append(["broken.wav", "tone", "", "pkg-a", "event"])
    for name, table in (("captions.csv", captions), ("labels.csv", labels)):
        with open(data / name, "w", newline="") as f:
            csv.writer(f).writerows(table)
    queries = root / "queries.csv"
    with open(queries, "w", newline="") as f:
        csv.writer(f).writerows([["class", "query"], *QUERIES, *EXTRA_QUERIES])
    return {"root": root, "data": data, "queries": queries, "cache": root / "cache"}


def last_metrics(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def open_run(work):
    out = work["root"] / "open"
    result = fit_head(work["data"], work["cache"], out, "--folds", 2, "--fold", 0, "--queries", work["queries"],
                      "--epochs", 3, "--validate-every", 3, "--source-balance", 0.5, "--background-mixes", 40,
                      "--background-prob", 0.5, "--captions-per-step", 2, "--holdout-classes", "hum",
                      "--max-bad-share", 0.1)
    return out, result


def test_an_undecodable_file_is_skipped_named_and_counted(open_run):
    _, result = open_run
    assert "broken.wav" in result.stderr, result.stderr
    assert "skipped: 1 of" in result.stdout, result.stdout
    assert "1 files skipped (they cannot be decoded)" in result.stdout


def test_too_many_undecodable_files_fail_the_run_naming_the_first(work):
    result = fit_head(work["data"], work["cache"], work["root"] / "strict", "--epochs", 1,
                      "--max-bad-share", 0.0, check=False)
    assert result.returncode != 0
    assert "--max-bad-share" in result.stderr and "broken.wav" in result.stderr, result.stderr


def test_open_world_metrics_score_the_reference_alone_and_among_distractors(open_run):
    run, result = open_run
    o = last_metrics(run)["open_world"]
    for key in ("reference_alone_p1", "reference_alone_map10", "reference_with_distractors_p1",
                "reference_with_distractors_map10", "others_caption_r1", "others_caption_r10",
                "others_caption_map10", "others_p1", "others_map10"):
        assert 0.0 <= o[key] <= 1.0, (key, o)
    assert 0 < o["reference_clips"] < o["gallery_clips"]
    # A distractor can only push the reference's relevant clips down.
    assert o["reference_with_distractors_map10"] <= o["reference_alone_map10"] + 1e-9
    assert "background mixes:" in result.stdout, result.stdout


def test_the_run_records_its_sampling_and_never_trains_held_out_classes(open_run, work):
    run, _ = open_run
    config = json.loads((run / "config.json").read_text())
    sampling = config["head"]["sampling"]
    assert sampling["holdout_classes"] == ["hum"] and sampling["captions_per_step"] == 2
    assert sampling["source_balance"] == 0.5 and sampling["background_mixes"] > 0
    labels = {r["file_name"]: r for r in csv.DictReader(open(work["data"] / "labels.csv"))}
    validating = set(config["data"]["validation_files"])
    trainable = [f for f, r in labels.items() if f not in validating and f != "broken.wav" and r["class"] != "hum"]
    assert config["data"]["train_clips"] == len(trainable)
    report = (run / "holdout.tsv").read_text().splitlines()
    assert report[0].startswith("class\tquery")
    assert {line.split("\t")[0] for line in report[1:]} == {"hum"}
    assert {line.split("\t")[1] for line in report[1:]} == {q for c, q in EXTRA_QUERIES if c == "hum"}


def test_train_sources_restrict_training_and_keep_the_gallery(work, open_run):
    out = work["root"] / "reference-only"
    fit_head(work["data"], work["cache"], out, "--folds", 2, "--fold", 0, "--queries", work["queries"],
             "--epochs", 2, "--validate-every", 2, "--train-sources", "esc50", "--max-bad-share", 0.1)
    config = json.loads((out / "config.json").read_text())
    validating = set(config["data"]["validation_files"])
    reference = [n for n in CLIPS if f"{n}.wav" not in validating]
    assert config["data"]["train_clips"] == len(reference)
    # Same fold, same gallery as the run on every source.
    assert validating == set(json.loads((open_run[0] / "config.json").read_text())["data"]["validation_files"])
    assert last_metrics(out)["open_world"]["gallery_clips"] == last_metrics(open_run[0])["open_world"]["gallery_clips"]
    bad = fit_head(work["data"], work["cache"], work["root"] / "unknown-source", "--epochs", 1,
                   "--train-sources", "nowhere", check=False)
    assert bad.returncode != 0 and "--train-sources nowhere" in bad.stderr
