"""`audiotext-train eval --bundle ... --queries ... --labels ...`: class-level text-to-audio
retrieval of `class,query` lines over the evaluated clips (every clip of the query's class is
relevant), as the default model is judged. Runs on generated tones labelled by pitch; the
numbers must lie in [0, 1], match the JSON report, and match P@1, P@10 and mAP@10 computed here
from the extension's own embeddings."""

import json
import re

import numpy as np
import pytest

from conftest import DEFAULT_BUNDLE, open_connection
from trainer_cli import TONES, trainer, write_tone_dataset

CLASSES = ["beep", "hum", "squeal", "whistle"]
CLASS_OF_TONE = {300: "hum", 900: "whistle", 2700: "beep", 5000: "squeal"}
QUERIES = [
    ("hum", "a low electrical hum"),
    ("hum", "a deep drone"),
    ("whistle", "someone whistling"),
    ("beep", "a high pitched beep"),
    ("beep", "an alarm clock beeping"),
    ("squeal", "a shrill squeal"),
]
PRINTED = re.compile(r"^class queries .*: P@1 (\S+)  P@10 (\S+)  mAP@10 (\S+)$", re.M)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-queries")
    data = write_tone_dataset(root / "data")
    names = [f"tone-{i}.wav" for i in range(2 * len(TONES))]
    # Kept outside the data folder, so --labels is what finds them.
    labels = root / "tone-labels.csv"
    labels.write_text(
        "file_name,class\n" + "".join(f"{n},{CLASS_OF_TONE[TONES[i % len(TONES)][0]]}\n" for i, n in enumerate(names))
    )
    queries = root / "queries.csv"
    queries.write_text("class,query\n" + "".join(f'{c},"{q}"\n' for c, q in QUERIES))
    return {"root": root, "data": data, "labels": labels, "queries": queries, "names": names}


def evaluate(labelled, *extra, check=True):
    return trainer(
        "eval", "--bundle", DEFAULT_BUNDLE, "--data", labelled["data"], "--no-cache", *extra, check=check
    )


def class_retrieval(sim, query_class, clip_class):
    """P@1, P@10 and mAP@10 (AP@10 over min(relevant, 10)), ties by clip index."""
    p1 = p10 = map10 = 0.0
    for scores, cls in zip(sim, query_class):
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
        hits = [clip_class[c] == cls for c in order[:10]]
        p1 += hits[0]
        p10 += sum(hits) / min(10, len(scores))
        ap = sum(sum(hits[: k + 1]) / (k + 1) for k in range(len(hits)) if hits[k])
        map10 += ap / min(clip_class.count(cls), 10)
    n = len(query_class)
    return p1 / n, p10 / n, map10 / n


def test_prints_and_reports_class_retrieval_of_the_queries(labelled):
    report_path = labelled["root"] / "report.json"
    result = evaluate(labelled, "--queries", labelled["queries"], "--labels", labelled["labels"], "--json", report_path)
    printed = PRINTED.search(result.stdout)
    assert printed, result.stdout
    values = [float(v) for v in printed.groups()]
    assert all(0.0 <= v <= 1.0 for v in values), values
    assert f"{len(QUERIES)} queries of {len(CLASSES)} classes" in result.stdout

    report = json.loads(report_path.read_text())["class_queries"]
    assert report["queries"] == len(QUERIES)
    assert report["classes"] == len(CLASSES)
    assert report["unlabelled_clips"] == 0
    assert report["labels_file"] == str(labelled["labels"])
    for key, shown in zip(["p1", "p10", "map10"], values):
        assert 0.0 <= report[key] <= 1.0
        assert abs(report[key] - shown) <= 5e-5, (key, report[key], shown)

    # The same metrics from the extension's embeddings of the same clips and queries.
    conn = open_connection()
    audio = np.stack(
        [
            np.frombuffer(conn.execute("SELECT audio_embed(?)", (str(labelled["data"] / "audio" / n),)).fetchone()[0], "<f4")
            for n in labelled["names"]
        ]
    )
    text = np.stack([np.frombuffer(conn.execute("SELECT text_embed(?)", (q,)).fetchone()[0], "<f4") for _, q in QUERIES])
    conn.close()
    clip_class = [CLASS_OF_TONE[TONES[i % len(TONES)][0]] for i in range(len(labelled["names"]))]
    want = class_retrieval(text @ audio.T, [c for c, _ in QUERIES], clip_class)
    assert np.allclose([report["p1"], report["p10"], report["map10"]], want, atol=1e-9), (report, want)


def test_the_data_folders_labels_csv_is_the_default(labelled):
    (labelled["data"] / "labels.csv").write_text(labelled["labels"].read_text())
    try:
        result = evaluate(labelled, "--queries", labelled["queries"])
    finally:
        (labelled["data"] / "labels.csv").unlink()
    assert PRINTED.search(result.stdout), result.stdout
    assert str(labelled["data"] / "labels.csv") in result.stdout


def test_an_unknown_class_fails_naming_the_class_and_line(labelled, tmp_path):
    queries = tmp_path / "bad.csv"
    queries.write_text("class,query\nhum,a hum\nunicorn,a unicorn neighing\n")
    result = evaluate(labelled, "--queries", queries, "--labels", labelled["labels"], check=False)
    assert result.returncode != 0
    assert '"unicorn"' in result.stderr and "line 3" in result.stderr and str(queries) in result.stderr, result.stderr


def test_queries_without_labels_ask_for_them(labelled):
    result = evaluate(labelled, "--queries", labelled["queries"], check=False)
    assert result.returncode != 0
    assert "--labels" in result.stderr, result.stderr
