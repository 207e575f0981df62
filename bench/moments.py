"""Finding the moment: how well text queries find a clip inside long recordings, with
timestamps, against the same model's precision on the isolated clips (issue 14).

    .venv/bin/python bench/moments.py [--folds 0,1,2,3,4] [--recordings 8] [--seed 0]

For each cross-validation fold of esc50-16k (../shared/data; its 1,892 clips in five folds,
the clips of one recording always in one fold):
1. A head is trained on the other four folds with the default model's recipe (frozen aiSFX
   backbone, `fit-head --input-gain-db -20 --lowpass-hz 8000 --epochs 40`) and exported as a
   bundle with the default text encoder; so no clip of this fold was seen in training. Cached
   under .cache/moments/ (a first run pays one backbone pass over the clips, about 2 minutes,
   then about a minute per fold).
2. Long recordings are built from the fold's clips: each 1 to 10 minutes long (uniform), made of
   clips of different classes placed one after another with stretches of 5 to 40 s between
   them, which hold quiet background noise (brown noise 45 to 60 dB below the clips' peak).
   Written as 16 kHz WAV under .cache/moments/recordings/.
3. Every recording is cut into the model's windows with `audio_segment_files` (window 2.30 s,
   hop 1.16 s) into one SQLite table.
4. Queries: the held-out class phrasings of data/esc50-validation-queries.csv (4 per class,
   none of them a training caption). For each clip placed in a recording and each query of its
   class, the recording's windows are ranked by `audio_text_score`:
   - hit@1: the best window overlaps the clip's span;
   - event recall@5: windows scoring within 0.05 of the recording's best for this query are
     merged where they overlap into events (start, end, best score) by the README's SQL (run
     here as EVENTS_SQL); the clip is found if one of the 5 best events overlaps its span;
   - timestamp error: for hits, |start - true start| and |end - true end| of the best event.
5. Isolated-clip P@1, the same model and queries: for each query, all the fold's clips ranked
   as whole clips (`audio_embed`); a hit when the best is of the query's class.
The gap between isolated P@1 and hit@1 is the cost of searching inside long recordings.
Prints one table, per fold and overall; --markdown FILE writes it too. Results: docs/moments.md.
"""

import argparse
import csv
import json
import shlex
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python" / "helpers"))
import make_audio as ma  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "esc50-16k"
QUERIES = ROOT / "data" / "esc50-validation-queries.csv"
CACHE = ROOT / ".cache" / "moments"
TRAIN = ROOT / "dist" / "audiotext-train"
RATE = 16000
EVENT_MARGIN = 0.05
RECIPE = ["--input-gain-db", "-20", "--lowpass-hz", "8000", "--epochs", "40"]


def run(cmd):
    print("+", shlex.join(str(c) for c in cmd), file=sys.stderr, flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def fold_bundle(fold):
    """The bundle whose head never saw this fold, and the fold's clips."""
    run_dir = CACHE / f"fold{fold}-run"
    bundle = CACHE / f"fold{fold}-bundle"
    if not (run_dir / "head.safetensors").exists():
        run([TRAIN, "fit-head", "--data", DATA, "--folds", 5, "--fold", fold, "--queries", QUERIES, *RECIPE, "--out", run_dir])
    if not (bundle / "manifest.json").exists():
        run([TRAIN, "export", "--run", run_dir, "--out", bundle, "--text-bundle", ROOT / "models" / "default", "--checkpoint", "last"])
    config = json.loads((run_dir / "config.json").read_text())
    return bundle, config["data"]["validation_files"]


def read_clip(name):
    import soundfile  # in the test venv (librosa's dependency)

    samples, rate = soundfile.read(DATA / "audio" / name, dtype="float32", always_2d=True)
    assert rate == RATE, (name, rate)
    return samples.mean(axis=1)


def build_recordings(fold, clips, labels, count, rng):
    """Recordings of this fold's clips: [(path, [(clip, class, start, end)])]."""
    folder = CACHE / "recordings" / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    by_class = defaultdict(list)
    for clip in clips:
        by_class[labels[clip]].append(clip)
    recordings = []
    for index in range(count):
        target = rng.uniform(60, 600)
        classes = list(by_class)
        rng.shuffle(classes)
        pieces, placed, t = [], [], 0.0
        for cls in classes:
            gap = rng.uniform(5, 40)
            clip = by_class[cls][rng.integers(len(by_class[cls]))]
            audio = read_clip(clip)
            if t + gap + len(audio) / RATE > target and placed:
                break
            pieces.append(("gap", gap))
            pieces.append(("clip", audio))
            placed.append((clip, cls, t + gap, t + gap + len(audio) / RATE))
            t += gap + len(audio) / RATE
        pieces.append(("gap", rng.uniform(5, 40)))
        peak = max(float(np.abs(p[1]).max()) for p in pieces if p[0] == "clip") or 1.0
        signal = []
        for kind, value in pieces:
            if kind == "clip":
                signal.append(value)
            else:
                level = peak * 10 ** (-rng.uniform(45, 60) / 20)
                noise = np.cumsum(rng.standard_normal(int(value * RATE))).astype(np.float32)
                noise -= np.linspace(noise[0], noise[-1], len(noise), dtype=np.float32) if len(noise) > 1 else 0
                noise *= level / (np.abs(noise).max() + 1e-12)
                signal.append(noise)
        path = folder / f"recording-{index:02d}.wav"
        ma.write_wav(path, np.concatenate(signal), RATE, "s16")
        recordings.append((path, placed))
    return recordings


# The README's event query, for one recording: the windows within EVENT_MARGIN of the recording's
# best score, merged where they overlap into (start, end, best score), best first.
EVENTS_SQL = f"""
WITH scored AS (
  SELECT path, start, end, audio_text_score('fold', embedding, :query) AS score FROM segments WHERE path = :path
), kept AS (
  SELECT * FROM (SELECT *, max(score) OVER (PARTITION BY path) AS best FROM scored)
   WHERE score >= best - {EVENT_MARGIN}
), numbered AS (
  SELECT *, sum(new_event) OVER (PARTITION BY path ORDER BY start) AS event
    FROM (SELECT *, start > coalesce(lag(end) OVER (PARTITION BY path ORDER BY start), -1) AS new_event FROM kept)
)
SELECT min(start) AS start, max(end) AS end, max(score) AS score
  FROM numbered GROUP BY path, event ORDER BY score DESC LIMIT 5
"""
BEST_WINDOW_SQL = """
SELECT start, end FROM segments WHERE path = :path
 ORDER BY audio_text_score('fold', embedding, :query) DESC LIMIT 1
"""


def overlaps(a_start, a_end, b_start, b_end):
    return a_start < b_end and b_start < a_end


def measure_fold(fold, args, labels, queries, rng):
    bundle, clips = fold_bundle(fold)
    recordings = build_recordings(fold, clips, labels, args.recordings, rng)
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(str(ROOT / "dist" / "audiotext0"))
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('fold', ?)", (str(bundle),))
    started = time.perf_counter()
    conn.execute(
        "CREATE TABLE segments AS SELECT path, start, end, embedding, error FROM audio_segment_files(?, 'fold')",
        (str(recordings[0][0].parent),),
    )
    seconds = time.perf_counter() - started
    errors = conn.execute("SELECT path, error FROM segments WHERE error IS NOT NULL").fetchall()
    assert not errors, errors
    query_vectors = {q: conn.execute("SELECT text_embed('fold', ?)", (q,)).fetchone()[0] for qs in queries.values() for q in qs}
    hits, found5, start_errors, end_errors = [], [], [], []
    for path, placed in recordings:
        for clip, cls, true_start, true_end in placed:
            for query in queries[cls]:
                where = {"query": query_vectors[query], "path": str(path)}
                best_start, best_end = conn.execute(BEST_WINDOW_SQL, where).fetchone()
                hits.append(overlaps(best_start, best_end, true_start, true_end))
                ranked = conn.execute(EVENTS_SQL, where).fetchall()
                found5.append(any(overlaps(s, e, true_start, true_end) for s, e, _ in ranked))
                if overlaps(ranked[0][0], ranked[0][1], true_start, true_end):
                    start_errors.append(abs(ranked[0][0] - true_start))
                    end_errors.append(abs(ranked[0][1] - true_end))
    # Isolated clips: the same model and queries, whole clips ranked.
    clip_vectors = [
        (labels[clip], conn.execute("SELECT audio_embed('fold', ?)", (str(DATA / "audio" / clip),)).fetchone()[0])
        for clip in clips
    ]
    isolated = []
    for cls, qs in queries.items():
        if not any(c == cls for c, _ in clip_vectors):
            continue
        for query in qs:
            scores = [conn.execute("SELECT audio_text_score('fold', ?, ?)", (v, query_vectors[query])).fetchone()[0] for _, v in clip_vectors]
            isolated.append(clip_vectors[int(np.argmax(scores))][0] == cls)
    minutes = sum(placed[-1][3] for _, placed in recordings) / 60
    return {
        "fold": fold,
        "recordings": len(recordings),
        "minutes": minutes,
        "clips": sum(len(p) for _, p in recordings),
        "queries": len(hits),
        "hit1": np.mean(hits),
        "recall5": np.mean(found5),
        "start_error": np.median(start_errors) if start_errors else float("nan"),
        "end_error": np.median(end_errors) if end_errors else float("nan"),
        "isolated_p1": np.mean(isolated),
        "segment_seconds": seconds,
        "raw": (hits, found5, start_errors, end_errors, isolated),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--recordings", type=int, default=8, help="long recordings per fold (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this measurement needs the esc50-16k clips (see README.md)")
    labels = {row["file_name"]: row["class"] for row in csv.DictReader(open(DATA / "labels.csv"))}
    queries = defaultdict(list)
    for row in csv.DictReader(open(QUERIES)):
        queries[row["class"]].append(row["query"])
    rng = np.random.default_rng(args.seed)
    results = [measure_fold(int(f), args, labels, queries, rng) for f in args.folds.split(",")]
    lines = [
        f"command: {shlex.join(sys.orig_argv)}",
        f"window {2.2988:.2f} s, hop {1.1610:.2f} s (the default model's); events: windows within {EVENT_MARGIN} of the best score, merged where they overlap",
        "",
        "| fold | recordings (minutes) | clips | queries | hit@1 | event recall@5 | median start error s | median end error s | isolated-clip P@1 | segmenting s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['fold']} | {r['recordings']} ({r['minutes']:.0f}) | {r['clips']} | {r['queries']} | {r['hit1']:.3f} | {r['recall5']:.3f} | "
            f"{r['start_error']:.2f} | {r['end_error']:.2f} | {r['isolated_p1']:.3f} | {r['segment_seconds']:.0f} |"
        )
    if len(results) > 1:
        hits, found5, se, ee, iso = (sum((r["raw"][i] for r in results), []) for i in range(5))
        lines.append(
            f"| all | {sum(r['recordings'] for r in results)} ({sum(r['minutes'] for r in results):.0f}) | {sum(r['clips'] for r in results)} | {len(hits)} | "
            f"{np.mean(hits):.3f} | {np.mean(found5):.3f} | {np.median(se):.2f} | {np.median(ee):.2f} | {np.mean(iso):.3f} | {sum(r['segment_seconds'] for r in results):.0f} |"
        )
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
