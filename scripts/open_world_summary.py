#!/usr/bin/env python3
"""The open-world comparison table (scripts/compare-open-world.sh summary): per recipe, the mean
and standard error over folds of the last epoch's metrics.

    scripts/open_world_summary.py RUNS_DIR [--paired A B]

--paired A B adds the mean and standard error of A's minus B's figure, fold by fold, over the
folds both recipes finished (the folds and galleries are the same, so the pairs cancel the
spread between folds).
"""

import json
import math
import os
import sys

COLUMNS = [
    ("class_p1", "P@1, all queries, all clips"),
    ("class_map10", "mAP@10, all"),
    ("reference_with_distractors_p1", "ESC-50 P@1 with distractors"),
    ("reference_with_distractors_map10", "ESC-50 mAP@10 with distractors"),
    ("reference_alone_p1", "ESC-50 P@1 alone"),
    ("reference_alone_map10", "ESC-50 mAP@10 alone"),
    ("others_p1", "corpus P@1"),
    ("others_map10", "corpus mAP@10"),
    ("others_caption_r1", "corpus captions R@1"),
    ("others_caption_r10", "R@10"),
    ("others_caption_map10", "mAP@10"),
]


def last_epoch(path):
    lines = [line for line in open(path).read().splitlines() if line.strip()]
    row = json.loads(lines[-1])
    row.update(row.pop("open_world", None) or {})
    return row


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.3f}"
    se = math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1) / len(values))
    return f"{m:.3f} ± {se:.3f}"


def folds_of(root, name):
    """{fold: last-epoch metrics} of one recipe's finished folds."""
    folder = os.path.join(root, name)
    return {fold: last_epoch(os.path.join(folder, fold, "metrics.jsonl")) for fold in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, fold, "head.safetensors"))}


def paired(root, a, b):
    runs_a, runs_b = folds_of(root, a), folds_of(root, b)
    common = sorted(set(runs_a) & set(runs_b))
    print(f"\n{a} minus {b}, paired over {len(common)} folds ({', '.join(common)})\n")
    print("| " + " | ".join(c[1] for c in COLUMNS) + " |")
    print("|---" * len(COLUMNS) + "|")
    cells = []
    for key, _ in COLUMNS:
        diffs = [runs_a[f][key] - runs_b[f][key] for f in common
                 if runs_a[f].get(key) is not None and runs_b[f].get(key) is not None]
        cells.append(cell(diffs).replace("-0.000", "0.000"))
    print("| " + " | ".join(cells) + " |")


def main(root):
    print("| recipe | folds | " + " | ".join(c[1] for c in COLUMNS) + " | s/fold |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        runs = folds_of(root, name)
        if not runs:
            continue
        rows = list(runs.values())
        times = [os.path.join(folder, fold, "time.txt") for fold in runs]
        seconds = [float(open(t).read().split()[0]) for t in times if os.path.isfile(t)]
        cells = [cell([r.get(k) for r in rows]) for k, _ in COLUMNS]
        s = f"{sum(seconds) / len(seconds):.0f}" if seconds else ""
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {s} |")
    holdout = os.path.join(root, "holdout", "fold0", "holdout.tsv")
    if os.path.isfile(holdout):
        print("\nHeld-out concepts (never trained), fold 0: what their queries find\n")
        print("| concept | query | top score | classes of the 5 best clips |")
        print("|---|---|---|---|")
        for line in open(holdout).read().splitlines()[1:]:
            print("| " + " | ".join(line.split("\t")) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    pair = None
    if "--paired" in args:
        i = args.index("--paired")
        pair, args = args[i + 1: i + 3], args[:i] + args[i + 3:]
    root = args[0] if args else "runs/open-world"
    main(root)
    if pair:
        paired(root, *pair)
