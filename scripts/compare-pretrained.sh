#!/usr/bin/env bash
# The cross-validated comparison of recipes on the pretrained aiSFX backbone (docs/comparison/
# pretrained.md): `audiotext-train fit-head` on ../shared/data/esc50-16k, 5 folds by recording,
# validated with the held-out phrasings of data/esc50-validation-queries.csv.
#
#   scripts/compare-pretrained.sh [RUNS_DIR] [STAGE...]
#
# Stages (default: all, in order); finished runs are kept, so a re-run resumes:
#   gain      input gain after per-window peak normalisation: 0, -10, -20 dB
#   band      band-limited training data, full-band validation: the 32 kHz esc50-dev copies of
#             each fold's validation clips, with and without an 8 kHz low-pass in the front-end
#   base      the later stages' baseline: the chosen gain (and LOWPASS) alone
#   head      head width and dropout
#   specaug   one SpecAugment copy of each training clip
#   mix       clip mixing with joined captions
#   text      all-MiniLM-L6-v2 against all-mpnet-base-v2 (needs models/mpnet, see below)
# Then `summary` prints the table (mean and standard error over folds).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/pretrained}
shift || true
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(gain band base head specaug mix text summary)
data=${DATA:-../shared/data/esc50-16k}
full_band=${FULL_BAND:-../shared/data/esc50-dev}
queries=data/esc50-validation-queries.csv
folds=${FOLDS:-5}
epochs=${EPOCHS:-40}
gain=${GAIN:--20}
# The later stages' front-end: the chosen gain, and LOWPASS=8000 once the band stage says so.
base=(--input-gain-db "$gain")
suffix="gain$gain"
if [ -n "${LOWPASS:-}" ]; then base+=(--lowpass-hz "$LOWPASS"); suffix+="-lowpass$LOWPASS"; fi
trainer=dist/audiotext-train
[ -x "$trainer" ] || { echo "run scripts/build.sh --trainer first" >&2; exit 1; }
[ -d "$data" ] || { echo "$data is missing: this comparison needs ../shared/data" >&2; exit 1; }

# fit NAME FLAGS...: every fold of one recipe.
fit() {
  local name=$1; shift
  for ((k = 0; k < folds; k++)); do
    local out="$runs/$name/fold$k"
    if [ -f "$out/head.safetensors" ]; then continue; fi
    rm -rf "$out"
    mkdir -p "$runs/$name"
    echo "== $name fold $k: $*"
    /usr/bin/time -f "%U %S" -o "$runs/$name/.cpu$k" \
      "$trainer" fit-head --data "$data" --folds "$folds" --fold "$k" --queries "$queries" \
      --epochs "$epochs" --validate-every 10 --out "$out" "$@" | grep -E "^(data|backbone|mixes|done)"
    mkdir -p "$out" && mv "$runs/$name/.cpu$k" "$out/cpu.txt"
  done
}

for stage in "${stages[@]}"; do
  mkdir -p "$runs"
  case $stage in
    gain)
      for g in 0 -10 -20; do fit "gain$g" --input-gain-db "$g"; done ;;
    band)
      fit "fullband-gain$gain" --input-gain-db "$gain" --validate-on "$full_band"
      fit "fullband-lowpass-gain$gain" --input-gain-db "$gain" --lowpass-hz 8000 --validate-on "$full_band" ;;
    base)
      fit "$suffix" "${base[@]}" ;;
    head)
      fit "head1024-$suffix" "${base[@]}" --fc-dim 1024
      fit "dropout0.5-$suffix" "${base[@]}" --head-dropout 0.5 ;;
    specaug)
      fit "specaug1-$suffix" "${base[@]}" --specaug-copies 1 ;;
    mix)
      fit "mix0.3-$suffix" "${base[@]}" --mix-prob 0.3 --mix-per-clip 1 ;;
    text)
      if [ -f models/mpnet/text.onnx ]; then
        fit "mpnet-$suffix" "${base[@]}" --text-bundle models/mpnet
      else
        echo "text: models/mpnet is missing (dist/audiotext-train export-text --from .cache/pretrained/all-mpnet-base-v2 --out models/mpnet); skipped"
      fi ;;
    summary)
      python3 - "$runs" <<'EOF'
import json, math, os, sys
root = sys.argv[1]
keys = [("class_p1", "class P@1"), ("class_map10", "class mAP@10"), ("t2a_r1", "R@1"),
        ("t2a_r5", "R@5"), ("t2a_r10", "R@10"), ("t2a_map10", "mAP@10")]
print("| recipe | folds | " + " | ".join(k[1] for k in keys) + " | CPU s/fold |")
print("|---" * (len(keys) + 3) + "|")
for name in sorted(os.listdir(root)):
    rows, cpu = [], []
    for fold in sorted(os.listdir(os.path.join(root, name))):
        path = os.path.join(root, name, fold, "metrics.jsonl")
        if not os.path.isfile(os.path.join(root, name, fold, "head.safetensors")):
            continue
        rows.append(json.loads(open(path).read().strip().splitlines()[-1]))
        t = os.path.join(root, name, fold, "cpu.txt")
        if os.path.isfile(t):
            cpu.append(sum(map(float, open(t).read().split())))
    if not rows:
        continue
    cells = []
    for k, _ in keys:
        v = [r[k] for r in rows if r.get(k) is not None]
        m = sum(v) / len(v)
        se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else 0.0
        cells.append(f"{m:.3f} ± {se:.3f}")
    c = f"{sum(cpu) / len(cpu):.0f}" if cpu else ""
    print(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {c} |")
EOF
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
