#!/usr/bin/env bash
# Does int8 lose anything? The open-world cross-validation (scripts/compare-open-world.sh's
# `chosen` runs, the default's recipe) scored through ONNX Runtime twice per fold: each fold's
# float32 audio.onnx, and the same graph quantized by scripts/quantize_audio.py with ranges
# calibrated on that fold's training clips only (its validation clips never set a range).
#
#   scripts/compare-quantized.sh [OPEN_WORLD_RUNS] [OUT]
#
# Variants: the calibration methods and settings measured against each other; `percentile`
# is the default's (models/default/quantization.json). Finished evaluations are kept, so a
# re-run resumes. Prints the table of docs/comparison/quantized.md.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/open-world}/chosen
out=${2:-runs/quantized}
data=${DATA:-.cache/corpus/train-set}
folds=${FOLDS:-5}
trainer=dist/audiotext-train
python=.venv/bin/python
[ -x "$trainer" ] || { echo "run scripts/build.sh --trainer first" >&2; exit 1; }
[ -f "$runs/fold0/head.safetensors" ] || { echo "$runs is missing: run scripts/compare-open-world.sh $(dirname "$runs") chosen first" >&2; exit 1; }
mkdir -p "$out"

# The class queries of both sets in one file (eval takes one): ESC-50's held-out phrasings and
# the corpus concepts'.
queries=$out/queries.csv
$python - "$queries" data/esc50-validation-queries.csv "$data/queries.csv" <<'EOF'
import csv, sys
rows = [(r["class"], r["query"]) for f in sys.argv[2:] for r in csv.DictReader(open(f, newline=""))]
with open(sys.argv[1], "w", newline="") as f:
    csv.writer(f).writerows([("class", "query"), *rows])
EOF

declare -A variants=(
  [minmax]="--calibrate-method MinMax"
  [percentile]="--calibrate-method Percentile --percentile 99.99"
  [percentile-reduce-range]="--calibrate-method Percentile --percentile 99.99 --reduce-range"
)

evaluate() {  # bundle json run
  [ -f "$2" ] && return
  "$trainer" eval --bundle "$1" --validation-of "$3" --data "$data" --queries "$queries" --no-cache --json "$2.tmp" \
    | grep -E "^class queries" && mv "$2.tmp" "$2"
}

for k in $(seq 0 $((folds - 1))); do
  run=$runs/fold$k
  fp32=$out/fold$k/fp32
  if [ ! -f "$fp32/manifest.json" ]; then
    rm -rf "$fp32"
    "$trainer" export --run "$run" --out "$fp32" --text-bundle models/default --checkpoint last >/dev/null
  fi
  echo "== fold $k float32"
  evaluate "$fp32" "$out/fold$k/fp32.json" "$run"
  for name in "${!variants[@]}"; do
    bundle=$out/fold$k/$name
    if [ ! -f "$bundle/manifest.json" ]; then
      rm -rf "$bundle"
      # shellcheck disable=SC2086
      $python scripts/quantize_audio.py calibrate --bundle "$fp32" --data "$data" --exclude-validation-of "$run" \
        --out "$out/fold$k/$name.quantization.json" ${variants[$name]} 2>&1 | grep -E "^calibrating"
      $python scripts/quantize_audio.py apply --fp32 "$fp32" --settings "$out/fold$k/$name.quantization.json" --out "$bundle" 2>/dev/null >/dev/null
    fi
    echo "== fold $k $name"
    evaluate "$bundle" "$out/fold$k/$name.json" "$run"
  done
  # Item 2: the default's graph with windows that do not overlap (hop = window): half the
  # windows, so half the encoder's work, for whole-clip embeddings.
  for base in fp32 percentile; do
    bundle=$out/fold$k/$base-no-overlap
    if [ ! -f "$bundle/manifest.json" ]; then
      rm -rf "$bundle" && mkdir -p "$bundle"
      for f in "$out/fold$k/$base"/*; do ln -f "$f" "$bundle/"; done
      rm "$bundle/manifest.json"
      $python - "$out/fold$k/$base/manifest.json" "$bundle/manifest.json" <<'EOF2'
import json, sys
m = json.load(open(sys.argv[1]))
m["audio"]["windowing"]["hop_seconds"] = m["audio"]["windowing"]["clip_seconds"]
json.dump(m, open(sys.argv[2], "w"), indent=2)
EOF2
    fi
    echo "== fold $k $base, windows without overlap"
    evaluate "$bundle" "$out/fold$k/$base-no-overlap.json" "$run"
  done
done

$python - "$out" "$folds" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
out, folds = Path(sys.argv[1]), int(sys.argv[2])
def metrics(name, k):
    j = json.loads((out / f"fold{k}" / f"{name}.json").read_text())
    return {"class P@1": j["class_queries"]["p1"], "class mAP@10": j["class_queries"]["map10"],
            "caption mAP@10": j["text_to_audio"]["map10"], "caption R@1": j["text_to_audio"]["r1"]}
names = ["fp32", "percentile", "minmax", "percentile-reduce-range", "fp32-no-overlap", "percentile-no-overlap"]
labels = list(metrics("fp32", 0))
print(f"| graph ({folds} folds, mean ± s.e.) | " + " | ".join(labels) + " | class P@1 / mAP@10 change, per fold |")
print("|---|" + "---:|" * (len(labels) + 1))
table = {name: {label: np.array([metrics(name, k)[label] for k in range(folds)]) for label in labels} for name in names}
for name in names:
    cells = [f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(folds):.3f}" for v in table[name].values()]
    changes = ""
    if name != "fp32":
        ref = "fp32"  # every change against the float32 graph with the model's own windows
        dp = table[name]["class P@1"] - table[ref]["class P@1"]
        dm = table[name]["class mAP@10"] - table[ref]["class mAP@10"]
        changes = f"{dp.mean():+.4f} / {dm.mean():+.4f} ({', '.join(f'{a:+.3f}/{b:+.3f}' for a, b in zip(dp, dm))})"
    print(f"| {name} | " + " | ".join(cells) + f" | {changes} |")
EOF
