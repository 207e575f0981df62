#!/usr/bin/env bash
# The open-world training corpus (issue 21; docs/comparison/open-world.md): real recorded sounds
# from Debian packages (fetched with apt-get download into .cache/corpus/debs, never committed)
# and ../shared/data/minetest-mod-sounds, captioned from the committed tables in data/corpus/,
# written to .cache/corpus/open-world; then .cache/corpus/train-set, the folder the default
# trains on (ESC-50's esc50-16k linked, with data/esc50-training-phrasings.csv, and the corpus).
# About 2.3 GB to download; 10 minutes on 2 cores. Arguments go to scripts/build_corpus.py.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ffmpeg >/dev/null && command -v dpkg-deb >/dev/null || scripts/install-deps.sh
exec /usr/bin/python3 scripts/build_corpus.py --train-set .cache/corpus/train-set --plain-train-set .cache/corpus/train-set-plain "$@"
