#!/usr/bin/env bash
# The open-world cross-validation (docs/comparison/open-world.md): `audiotext-train fit-head` on
# ESC-50 and the corpus together (scripts/build-corpus.sh writes .cache/corpus/train-set and train-set-plain),
# 5 folds by recording. Every fold's gallery holds its held-out ESC-50 recordings and its
# held-out corpus clips; queries are ESC-50's held-out phrasings (data/esc50-validation-queries.csv)
# and the corpus concepts' (data/corpus/validation-*.csv), none of which trains.
#
#   scripts/compare-open-world.sh [RUNS_DIR] [STAGE...]
#
# Stages (default: all, in this order); finished folds are kept, so a re-run resumes:
#   esc50      the old default's recipe on the same folds: ESC-50 alone with its five captions
#              (.cache/corpus/train-set-plain), 512 wide, 40 epochs; scored on the same galleries
#   base       ESC-50 (+ data/esc50-training-phrasings.csv) and the corpus, every clip once an epoch
#   chosen     the default's recipe: base + contrastive keys by class (a corpus dog is not an ESC-50
#              dog's negative) + a 2048-wide hidden layer
#   vehicles   chosen trained without the four vehicle and machine sources (openttd-opensfx,
#              flightgear-data-base, torcs-data, supertuxkart-data) on the same folds and
#              galleries: what those sources add
#   ensemble   chosen with three heads trained from three seeds and joined into one
#              (--ensemble 3: a 6144-wide head whose output is the three heads' mean), and one
#              head trained 6144 wide, to tell the join from the width
#   centre     ensemble-3 with its queries centred (--text-centre 0.5: each query's embedding
#              minus half the training captions' mean, normalised again); training is unchanged
#   background chosen + foreground-on-background mixes (speech, music, rain, crowds under events)
#   holdout    chosen + background mixes on fold 0 with five concepts never trained: what do queries
#              for them return? (fit-head writes holdout.tsv)
#   ablations  one change at a time against the chosen recipe, fold 0 only (FOLD_LIST=0)
# Then `summary` prints the table (mean and standard error over folds).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/open-world}
shift || true
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(chosen esc50 base background holdout ablations summary)
data=${DATA:-.cache/corpus/train-set}
folds=${FOLDS:-5}
epochs=${EPOCHS:-40}
trainer=dist/audiotext-train
[ -x "$trainer" ] || { echo "run scripts/build.sh --trainer first" >&2; exit 1; }
[ -f "$data/labels.csv" ] || { echo "$data is missing: run scripts/build-corpus.sh first" >&2; exit 1; }
queries=(--queries data/esc50-validation-queries.csv --queries "$data/queries.csv")
# The default's front-end (docs/comparison/pretrained.md).
front_end=(--input-gain-db -20 --lowpass-hz 8000)
# Held-out concepts for the holdout stage: absent from training entirely.
holdout=${HOLDOUT:-camel_grunt,sword_clash,speech_french,drum_loop,church_bells}

# fit NAME FLAGS...: every fold of one recipe (FOLD_LIST overrides which; DATA_FOR overrides the data).
fit() {
  local name=$1; shift
  for k in ${FOLD_LIST:-$(seq 0 $((folds - 1)))}; do
    local out="$runs/$name/fold$k"
    if [ -f "$out/head.safetensors" ]; then continue; fi
    rm -rf "$out"
    mkdir -p "$runs/$name"
    echo "== $name fold $k: $*"
    /usr/bin/time -f "%e %U %S" -o "$runs/$name/.cpu$k" \
      "$trainer" fit-head --data "${DATA_FOR:-$data}" --folds "$folds" --fold "$k" "${queries[@]}" \
      --epochs "$epochs" --validate-every "$epochs" --out "$out" "${front_end[@]}" "$@" \
      | grep -E "^(data|backbone|skipped|mixes|background|done|held-out)"
    mkdir -p "$out" && mv "$runs/$name/.cpu$k" "$out/time.txt"
  done
}

# The default's recipe (models/default/run/config.json records it).
chosen=(--class-keys --fc-dim 2048)
# Every source but the four vehicle and machine packages added last (the `vehicles` stage).
before_vehicles=esc50,0ad-data,hedgewars-data,lincity-ng-data,minetest-mod-sounds,sonic-pi-samples,tuxpaint-stamps-default,ufoai-sound,warzone2100-data,wesnoth-1.16-data,widelands-data
background=(--background-mixes 3000 --background-prob 0.2)
for stage in "${stages[@]}"; do
  mkdir -p "$runs"
  case $stage in
    esc50) DATA_FOR=.cache/corpus/train-set-plain fit esc50-only --train-sources esc50 ;;
    base) fit base ;;
    chosen) fit chosen "${chosen[@]}" ;;
    vehicles) fit without-vehicle-sources "${chosen[@]}" --train-sources "$before_vehicles" ;;
    ensemble)
      fit ensemble-3 "${chosen[@]}" --ensemble 3
      fit one-head-6144-wide --class-keys --fc-dim 6144 ;;
    centre) fit ensemble-3-text-centre "${chosen[@]}" --ensemble 3 --text-centre 0.5 ;;
    background) fit with-background-mixes "${chosen[@]}" "${background[@]}" ;;
    holdout) FOLD_LIST=0 fit holdout "${chosen[@]}" "${background[@]}" --holdout-classes "$holdout" ;;
    ablations)
      FOLD_LIST=0 fit ablation-1024-wide --class-keys --fc-dim 1024
      FOLD_LIST=0 fit ablation-caption-keys --fc-dim 2048
      FOLD_LIST=0 fit ablation-source-balance "${chosen[@]}" --source-balance 0.5
      FOLD_LIST=0 fit ablation-two-captions "${chosen[@]}" --captions-per-step 2
      # The head's own settings around the chosen ones (issue 21's last session).
      FOLD_LIST=0 fit ablation-dropout-0.5 "${chosen[@]}" --head-dropout 0.5
      FOLD_LIST=0 fit ablation-lr-2e-3 "${chosen[@]}" --lr 0.002
      FOLD_LIST=0 fit ablation-weight-decay-0.1 "${chosen[@]}" --weight-decay 0.1
      FOLD_LIST=0 fit ablation-fixed-temperature-0.03 "${chosen[@]}" --temperature 0.03 --fixed-temperature ;;
    taps)
      # aiSFX's earlier blocks pooled beside its last (a second backbone graph and cache each).
      FOLD_LIST=${FOLD_LIST:-0} fit tapped-2 "${chosen[@]}" --tapped-blocks 2
      FOLD_LIST=${FOLD_LIST:-0} fit tapped-3 "${chosen[@]}" --tapped-blocks 3 ;;
    summary) python3 scripts/open_world_summary.py "$runs" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
