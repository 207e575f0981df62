"""How far the text side alone gets on the open-world queries (docs/comparison/open-world.md).

Each held-out phrasing (ESC-50's and the corpus concepts') ranks the training set's classes by
the MiniLM cosine to their training captions: the best single caption, or the captions' mean.
An audio head whose every clip landed exactly on its class's caption centroid would score the
centroid figure, so the gap between it and the cross-validated P@1 is the audio side's.

    .venv/bin/python scripts/open_world_text_bound.py [train-set folder]
"""
import collections
import csv
import sqlite3
import sys

import numpy as np

conn = sqlite3.connect(":memory:")
conn.enable_load_extension(True)
conn.load_extension("dist/audiotext0")
d = (sys.argv[1] if len(sys.argv) > 1 else ".cache/corpus/train-set").rstrip("/") + "/"
labels = {r["file_name"]: r["class"] for r in csv.DictReader(open(d+"labels.csv"))}
caps = collections.defaultdict(set)
for r in csv.reader(open(d+"captions.csv")):
    if r[0] == "file_name": continue
    for c in r[1:]:
        if c: caps[labels[r[0]]].add(c)
qs = [(r["class"], r["query"], "corpus") for r in csv.DictReader(open(d+"queries.csv"))] + \
     [(r["class"], r["query"], "esc50") for r in csv.DictReader(open("data/esc50-validation-queries.csv"))]
cache = {}
def emb(t):
    if t not in cache: cache[t] = np.frombuffer(conn.execute("SELECT text_embed(?)", (t,)).fetchone()[0], "<f4")
    return cache[t]
classes = sorted(caps)
C = {c: np.stack([emb(t) for t in sorted(caps[c])]) for c in classes}
cent = np.stack([C[c].mean(0) / np.linalg.norm(C[c].mean(0)) for c in classes])
res = collections.defaultdict(lambda: [0, 0, 0])
for cls, q, src in qs:
    e = emb(q)
    by_max = np.array([ (C[c] @ e).max() for c in classes ])
    by_cent = cent @ e
    res[src][0] += classes[int(by_max.argmax())] == cls
    res[src][1] += classes[int(by_cent.argmax())] == cls
    res[src][2] += 1
for src, (a, b, n) in res.items(): print(src, "n", n, "P@1 nearest caption", round(a/n, 3), "P@1 centroid", round(b/n, 3))
print("classes", len(classes))
