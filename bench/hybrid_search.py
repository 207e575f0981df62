"""Hybrid search (issue 23): words (FTS5 over file paths) and sound (audiotext_index) fused by
reciprocal rank in one SQL statement, against each alone, on a labelled gallery the model never
trained on.

    .venv/bin/python bench/hybrid_search.py --run runs/sweep/chosen --bundle runs/hybrid/fold0-bundle

The gallery is the held-out fold of a fit-head run (its config.json lists the validation files):
about 380 ESC-50 clips, whose file names carry no words, and about 880 corpus clips, whose source
paths do (`usr/share/games/0ad/.../fauna/animal/camel_10.ogg`: its folder and name, `animal
camel_10`, are the words indexed); the bundle is that run's export,
so no gallery clip trained it. The queries are the held-out phrasings (data/
esc50-validation-queries.csv and the corpus's queries.csv), none of which trains; a clip is
relevant when its class is the query's. Note what favours the words: the corpus's classes were
assigned from these very paths by the committed rules (data/corpus/rules), so a query that
shares a word with its class's paths is an easy catch for FTS5; an ESC-50 clip it can never find.

Reports P@1 and mAP@10 (AP@10 over min(relevant, 10), as docs/comparison/open-world.md) for
sound alone, words alone and the fused ranking, per query group.
"""

import argparse
import csv
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# The fusion, as README.md's "Hybrid search" gives it: each list's top 50, weight / (60 + rank).
HYBRID = """
WITH by_sound AS (
  SELECT rowid AS id, row_number() OVER (ORDER BY distance) AS rank
    FROM clip_index WHERE embedding MATCH text_embed(:model, :q) AND k = 50
), by_words AS (
  SELECT rowid AS id, row_number() OVER (ORDER BY rank) AS rank
    FROM clip_words WHERE clip_words MATCH audiotext_fts_query(:q) ORDER BY rank LIMIT 50
)
SELECT id, sum(weight / (60 + rank)) AS score
  FROM (SELECT *, 1.0 AS weight FROM by_sound UNION ALL SELECT *, :words_weight FROM by_words)
 GROUP BY id ORDER BY score DESC, id LIMIT 10
"""
# Words re-rank the sound list only: a file the sound list does not hold is never brought in.
RERANK = HYBRID.replace(
    "FROM clip_words WHERE clip_words MATCH audiotext_fts_query(:q) ORDER BY rank LIMIT 50",
    "FROM clip_words WHERE clip_words MATCH audiotext_fts_query(:q) AND rowid IN (SELECT id FROM by_sound) ORDER BY rank LIMIT 50",
)
SOUND = "SELECT rowid FROM clip_index WHERE embedding MATCH text_embed(:model, :q) AND k = 10"
WORDS = "SELECT rowid FROM clip_words WHERE clip_words MATCH audiotext_fts_query(:q) ORDER BY rank LIMIT 10"


def file_words(source_file):
    """`.../fauna/animal/camel_10.ogg` -> `animal camel_10`: the folder and the name."""
    parts = source_file.replace("!", "/").split("/")
    return " ".join([parts[-2] if len(parts) > 1 else "", Path(parts[-1]).stem]).strip()


def average_precision(ranked, relevant):
    hits, total = 0, 0.0
    for i, clip in enumerate(ranked[:10]):
        if clip in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), 10) if relevant else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a fit-head run folder (its config.json names the held-out files)")
    p.add_argument("--bundle", type=Path, required=True, help="that run's exported bundle")
    p.add_argument("--data", type=Path, default=ROOT / ".cache" / "corpus" / "train-set")
    p.add_argument("--words-weight", type=float, default=0.25, help="the word list's weight in the fusion (the sound list's is 1; default %(default)s, the best of 1, 0.5 and 0.25 here)")
    args = p.parse_args()
    held_out = set(json.loads((args.run / "config.json").read_text())["data"]["validation_files"])
    labels = {r["file_name"]: r for r in csv.DictReader(open(args.data / "labels.csv"))}
    # What a library's files say about themselves: the file's name and its folder's (the rest of
    # a package path, usr/share/games/..., says nothing about the sound).
    words = {r["file_name"]: file_words(r["source_file"]) for r in csv.DictReader(open(args.data / "attribution-corpus.csv"))}
    gallery = sorted(held_out)
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(str(ROOT / "dist" / "audiotext0"))
    conn.execute("INSERT INTO temp.audiotext_models(name, path) VALUES ('fold', ?)", (str(args.bundle),))
    listing = json.dumps([str(args.data / "audio" / f) for f in gallery])
    rows = conn.execute("SELECT path, embedding FROM audio_embed_files(?, 'fold') WHERE error IS NULL", (listing,)).fetchall()
    by_name = {Path(path).name: embedding for path, embedding in rows}
    dim = len(next(iter(by_name.values()))) // 4
    conn.execute(f"CREATE VIRTUAL TABLE clip_index USING audiotext_index(embedding float[{dim}])")
    conn.execute("CREATE VIRTUAL TABLE clip_words USING fts5(words)")
    ids = {}
    for i, name in enumerate(gallery, start=1):
        ids[i] = name
        conn.execute("INSERT INTO clip_index(rowid, embedding) VALUES (?, ?)", (i, by_name[name]))
        conn.execute("INSERT INTO clip_words(rowid, words) VALUES (?, ?)", (i, words.get(name, "")))
    classes = {}
    for i, name in ids.items():
        classes.setdefault(labels[name]["class"], set()).add(i)
    queries = [("ESC-50", r["class"], r["query"]) for r in csv.DictReader(open(ROOT / "data" / "esc50-validation-queries.csv"))]
    queries += [("corpus", r["class"], r["query"]) for r in csv.DictReader(open(args.data / "queries.csv"))]
    results = {}
    for group, cls, q in queries:
        relevant = classes.get(cls, set())
        if not relevant:
            continue
        for method, sql in (("sound", SOUND), ("words", WORDS), ("hybrid", HYBRID), ("rerank", RERANK)):
            ranked = [r[0] for r in conn.execute(sql, {"model": "fold", "q": q, "words_weight": args.words_weight})]
            p1 = float(bool(ranked) and ranked[0] in relevant)
            ap = average_precision(ranked, relevant)
            for key in ((group, method), ("all", method)):
                results.setdefault(key, []).append((p1, ap))
    n_esc = sum(1 for n in gallery if labels[n]["source"] == "esc50")
    print(f"gallery: {len(gallery)} held-out clips of {args.run} ({n_esc} ESC-50, {len(gallery) - n_esc} corpus); "
          f"queries: {len(results[('all', 'sound')])} held-out phrasings with relevant clips in the gallery")
    print(f"\n| queries | sound alone P@1 / mAP@10 | words alone (FTS5 bm25) | hybrid: fused (words weight {args.words_weight}) | hybrid: words re-rank the sound list |")
    print("|---|---|---|---|---|")
    for group in ("ESC-50", "corpus", "all"):
        cells = []
        for method in ("sound", "words", "hybrid", "rerank"):
            scores = np.array(results[(group, method)])
            cells.append(f"{scores[:, 0].mean():.3f} / {scores[:, 1].mean():.3f}")
        print(f"| {group} ({len(results[(group, 'sound')])}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
