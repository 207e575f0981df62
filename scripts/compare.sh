#!/usr/bin/env bash
# The encoder / loss / pooling / ensemble comparison, cross-validated by recording.
#
#   scripts/compare.sh [RUNS_DIR]          (default runs/compare; re-running resumes)
#
# Stages, each run once per fold (FOLDS class-balanced folds of the recordings of DATA):
#   1. encoders: every encoder with InfoNCE and max + mean pooling;
#   2. losses:   every loss with the best encoder of stage 1;
#   3. poolings: every pooling with the best encoder of stage 1;
#   4. ensemble: the best three configurations of stages 1-3, combined per fold;
# then every run is exported to a bundle that the SQLite extension must load and embed a
# clip with, and `audiotext-train report` writes the table and plots to REPORT.
#
# Settings (environment): DATA, FOLDS (2), EPOCHS (8), WIDTH (8), BATCH (16), ENCODERS,
# LOSSES, POOLINGS, REPORT (docs/comparison/results.md), TRAIN_FLAGS (extra `fit` flags,
# default `--validate-every 4`). The defaults are the published comparison (docs/comparison),
# sized for 2 CPU cores; raise EPOCHS and WIDTH where there is a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data/esc50-dev}
RUNS=${1:-runs/compare}
FOLDS=${FOLDS:-2}
EPOCHS=${EPOCHS:-8}
WIDTH=${WIDTH:-8}
BATCH=${BATCH:-16}
ENCODERS=${ENCODERS:-"cnn6 cnn10 cnn14 resnet38 crnn tcn spec2vec wavegram-logmel"}
LOSSES=${LOSSES:-"infonce ntxent triplet-sum triplet-max triplet-weighted vicreg cosine infonce+0.1*vicreg"}
POOLINGS=${POOLINGS:-"mean max mean-max lstm-last lstm-mean netvlad netrvlad"}
REPORT=${REPORT:-docs/comparison/results.md}
TRAIN_FLAGS=${TRAIN_FLAGS-"--validate-every 4"}  # unset: the default; empty: no flags
TRAINER=dist/audiotext-train

[ -x "$TRAINER" ] && [ -f dist/audiotext0.so ] || { echo "run scripts/build.sh --trainer first" >&2; exit 1; }
[ -d "$DATA" ] || { echo "no dataset at $DATA (set DATA)" >&2; exit 1; }

# reuse GROUP NAME SOURCE: the configuration GROUP/NAME is the same as SOURCE (a run folder
# relative to RUNS), so link it instead of training it twice.
reuse() {
  mkdir -p "$RUNS/$1"
  [ -e "$RUNS/$1/$2" ] || ln -s "../$3" "$RUNS/$1/$2"
}

# epochs_done RUN: completed epochs of a run folder.
epochs_done() {
  if [ -f "$1/metrics.jsonl" ]; then wc -l <"$1/metrics.jsonl"; else echo 0; fi
}

# timed RUN CMD...: runs CMD (a `fit` of RUN) and appends "cpu_seconds wall_seconds
# epochs_before epochs_after" to RUN/cpu.txt. The report's cost per epoch is CPU time (user +
# system): on a shared host wall time also counts the time other guests held the cores.
timed() {
  local run=$1 before t user sys real
  shift
  before=$(epochs_done "$run")
  t=$( { TIMEFORMAT='%U %S %R'; time "$@" >&3 2>&4; } 2>&1)
  read -r user sys real <<<"$t"
  echo "$(python3 -c "print(round($user + $sys, 2))") $real $before $(epochs_done "$run")" >>"$run/cpu.txt"
}
exec 3>&1 4>&2

# train GROUP NAME FIT_FLAGS...: one run per fold, skipped when already complete.
train() {
  local group=$1 name=$2
  shift 2
  for ((k = 0; k < FOLDS; k++)); do
    local out=$RUNS/$group/$name/fold$k
    [ -f "$out/complete" ] && continue
    echo "== $group/$name fold $k"
    # A run cut off (the machine went away) goes on from its last epoch.
    if [ -f "$out/checkpoints/last.json" ]; then
      timed "$out" "$TRAINER" fit --resume "$out" --epochs "$EPOCHS"
      touch "$out/complete"
      continue
    fi
    rm -rf "$out"
    # shellcheck disable=SC2086
    timed "$out" "$TRAINER" fit --data "$DATA" --folds "$FOLDS" --fold "$k" --epochs "$EPOCHS" \
      --width "$WIDTH" --batch-size "$BATCH" --out "$out" $TRAIN_FLAGS "$@"
    touch "$out/complete"
  done
}

# ranked GROUP: per configuration "name mean_map10 standard_error cpu_seconds_per_epoch", best
# mean first (last-epoch text-to-audio mAP@10 over folds; cost from the folds' cpu.txt).
ranked() {
  python3 - "$RUNS/$1" <<'EOF'
import json, math, pathlib, sys
rows = []
group = pathlib.Path(sys.argv[1])
for config in sorted(group.iterdir()) if group.is_dir() else []:
    scores, cpu, epochs = [], 0.0, 0
    for fold in sorted(config.glob("fold*")):
        if not (fold / "complete").is_file():
            continue
        lines = (fold / "metrics.jsonl").read_text().splitlines()
        scores.append(json.loads(lines[-1])["t2a_map10"])
        if (fold / "cpu.txt").is_file():
            for line in (fold / "cpu.txt").read_text().splitlines():
                if line.strip():
                    seconds, _, before, after = line.split()
                    cpu, epochs = cpu + float(seconds), epochs + int(after) - int(before)
    if scores:
        n = len(scores)
        mean = sum(scores) / n
        se = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n) if n > 1 else 0.0
        rows.append((mean, se, cpu / epochs if epochs else float("inf"), config.name))
for mean, se, cost, name in sorted(rows, reverse=True):
    print(name, f"{mean:.4f}", f"{se:.4f}", f"{cost:.1f}")
EOF
}

# one_se_choice GROUP: the cheapest configuration within one standard error of the best mean.
one_se_choice() {
  ranked "$1" | awk 'NR == 1 { floor = $2 - $3 } $2 >= floor { print $4, $1 }' | sort -g | head -1 | cut -d' ' -f2
}

for e in $ENCODERS; do train encoders "$e" --encoder "$e"; done
# Stages 2-3 use the encoder picked by the one-standard-error rule: the cheapest (CPU seconds
# per epoch) of the encoders whose mean mAP@10 is within one standard error (over folds) of the
# best mean. On a few hundred clips the folds disagree by about as much as close encoders do,
# and the losses and poolings are then compared on an encoder that is not needlessly slow.
# BEST_ENCODER may be set to keep stages 2-3 on an earlier choice when encoders are added later.
BEST_ENCODER=${BEST_ENCODER:-$(one_se_choice encoders)}
echo "encoders (mean mAP@10, standard error, CPU s/epoch):"
ranked encoders | sed 's/^/  /'
echo "encoder for stages 2-3 (one-standard-error rule): $BEST_ENCODER"
# Stage 1 already trained the best encoder with InfoNCE and mean-max pooling (fit's defaults).
for l in $LOSSES; do
  if [ "$l" = infonce ]; then reuse losses "$l" "encoders/$BEST_ENCODER"; continue; fi
  train losses "$l" --encoder "$BEST_ENCODER" --loss "$l"
done
for p in $POOLINGS; do
  if [ "$p" = mean-max ]; then reuse poolings "$p" "encoders/$BEST_ENCODER"; continue; fi
  train poolings "$p" --encoder "$BEST_ENCODER" --pooling "$p"
done

# Every run becomes a bundle; the extension must load it and embed a clip.
clip=$(find "$DATA/audio" -type f | sort | head -1)
for fold_dir in "$RUNS"/{encoders,losses,poolings}/*/fold*; do
  [ -f "$fold_dir/complete" ] || continue  # also skips unmatched globs
  if [ ! -f "$fold_dir/bundle/audio.onnx" ]; then
    "$TRAINER" export --run "$fold_dir" --checkpoint last --out "$fold_dir/bundle" --name "$(basename "$(dirname "$fold_dir")")-$(basename "$fold_dir")" >/dev/null
  fi
  dims=$(sqlite3 :memory: ".load dist/audiotext0" \
    "INSERT INTO temp.audiotext_models(name, path) VALUES ('run', '$fold_dir/bundle');" \
    "SELECT vec_length(audio_embed('run', '$clip'));")
  [ "$dims" -gt 0 ] || { echo "the extension could not embed with $fold_dir/bundle" >&2; exit 1; }
done

# Ensemble of the three best configurations overall, per fold (a linked configuration counts once).
mapfile -t TOP < <(for g in encoders losses poolings; do ranked $g | sed "s|^|$g/|"; done |
  while read -r config score _; do echo "$config $score $(readlink -f "$RUNS/$config")"; done |
  sort -k2 -r -g | awk '!seen[$3]++' | head -3 | cut -d' ' -f1)
name=$(printf '%s+' "${TOP[@]##*/}")
name=${name%+}
for ((k = 0; k < FOLDS; k++)); do
  out=$RUNS/ensembles/$name/fold$k
  [ -f "$out/eval.json" ] && continue
  mkdir -p "$out"
  members=()
  for m in "${TOP[@]}"; do members+=(--member "$RUNS/$m/fold$k/bundle"); done
  rm -rf "$out/bundle"
  "$TRAINER" ensemble "${members[@]}" --out "$out/bundle" --name "ensemble-$name-fold$k"
  "$TRAINER" eval --bundle "$out/bundle" --validation-of "$RUNS/${TOP[0]}/fold$k" \
    --data "$DATA" --subset val --json "$out/eval.json"
  printf '{"description": "ensemble of %s, each trained on this fold; embeddings concatenated and scaled by 1/sqrt(%d)"}\n' \
    "${TOP[*]}" "${#TOP[@]}" >"$out/members.json"
done

"$TRAINER" report --runs "$RUNS" --out "$REPORT"
