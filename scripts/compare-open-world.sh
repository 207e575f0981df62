#!/usr/bin/env bash
# The open-world cross-validation (docs/comparison/open-world.md): `audiotext-train fit-head` on
# ESC-50 and the corpus together (scripts/build-corpus.sh writes .cache/corpus/train-set),
# 5 folds by recording. Every fold's gallery holds its held-out ESC-50 recordings and its
# held-out corpus clips; queries are ESC-50's held-out phrasings (data/esc50-validation-queries.csv)
# and the corpus concepts' (data/corpus/validation-*.csv), none of which trains.
#
#   scripts/compare-open-world.sh [RUNS_DIR] [STAGE...]
#
# Stages (default: all, in order); finished folds are kept, so a re-run resumes:
#   esc50      the old default's recipe: trained on ESC-50 alone, scored on the same galleries
#   base       ESC-50 + corpus, every clip once an epoch
#   balance    sources weighted by clip count^0.5, so the many game clips do not drown ESC-50
#   background + foreground-on-background mixes (speech, music, crowds, traffic, rain under
#              events) with joined captions
#   captions   + two captions averaged into each target
#   wide       + a 1024-wide hidden layer
#   holdout    fold 0 with a few concepts never trained: what do queries for them return?
# Then `summary` prints the table (mean and standard error over folds).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/open-world}
shift || true
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(esc50 base balance background captions wide holdout summary)
data=${DATA:-.cache/corpus/train-set}
folds=${FOLDS:-5}
epochs=${EPOCHS:-40}
trainer=dist/audiotext-train
[ -x "$trainer" ] || { echo "run scripts/build.sh first" >&2; exit 1; }
[ -f "$data/labels.csv" ] || { echo "$data is missing: run scripts/build-corpus.sh first" >&2; exit 1; }
queries=(--queries data/esc50-validation-queries.csv --queries "$data/queries.csv")
# The default's front-end (docs/comparison/pretrained.md).
front_end=(--input-gain-db -20 --lowpass-hz 8000)
# Held-out concepts for the holdout stage: absent from training entirely.
holdout=${HOLDOUT:-camel_grunt,sword_clash,speech_french,church_bells,drum_loop,sawmill}

# fit NAME FLAGS...: every fold of one recipe (FOLD_LIST overrides which).
fit() {
  local name=$1; shift
  for k in ${FOLD_LIST:-$(seq 0 $((folds - 1)))}; do
    local out="$runs/$name/fold$k"
    if [ -f "$out/head.safetensors" ]; then continue; fi
    rm -rf "$out"
    mkdir -p "$runs/$name"
    echo "== $name fold $k: $*"
    /usr/bin/time -f "%e %U %S" -o "$runs/$name/.cpu$k" \
      "$trainer" fit-head --data "$data" --folds "$folds" --fold "$k" "${queries[@]}" \
      --epochs "$epochs" --validate-every "$epochs" --out "$out" "${front_end[@]}" "$@" \
      | grep -E "^(data|backbone|skipped|mixes|background|done|epoch $epochs/)"
    mkdir -p "$out" && mv "$runs/$name/.cpu$k" "$out/time.txt"
  done
}

balance=(--source-balance 0.5)
background=(--background-mixes 4000 --background-prob 0.25)
for stage in "${stages[@]}"; do
  mkdir -p "$runs"
  case $stage in
    esc50) fit esc50-only --train-sources esc50 ;;
    base) fit base ;;
    balance) fit balance "${balance[@]}" ;;
    background) fit background "${balance[@]}" "${background[@]}" ;;
    captions) fit captions "${balance[@]}" "${background[@]}" --captions-per-step 2 ;;
    wide) fit wide "${balance[@]}" "${background[@]}" --fc-dim 1024 ;;
    # fit-head writes holdout.tsv: each held-out concept's queries and the classes they find.
    holdout) FOLD_LIST=0 fit holdout "${balance[@]}" "${background[@]}" --holdout-classes "$holdout" ;;
    summary) python3 scripts/open_world_summary.py "$runs" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
