#!/usr/bin/env bash
# The main job: build everything, then in the sqlite3 shell (1) embed captions and search them
# with vec0, (2) index folders of real sounds and find them by description.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh

echo
echo "== sqlite3 < sql/demo.sql   (text embedding + vec0 KNN)"
sqlite3 -bail :memory: < sql/demo.sql

# Real sounds: Debian's freedesktop sound theme (installed by scripts/install-deps.sh), and the
# ESC-50 dev clips when ../shared/data is there.
folders=(/usr/share/sounds/freedesktop/stereo)
[ -d ../shared/data/esc50-dev/audio ] && folders+=("$(cd ../shared/data/esc50-dev/audio && pwd)")
for folder in "${folders[@]}"; do
  echo
  echo "== sqlite3 < sql/audio-demo.sql   (@sounds = $folder)"
  sqlite3 -bail -cmd ".parameter set @sounds \"'$folder'\"" :memory: < sql/audio-demo.sql
done
