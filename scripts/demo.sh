#!/usr/bin/env bash
# The main job: build everything, then run the demo in the sqlite3 shell.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
echo
echo "== sqlite3 < sql/demo.sql"
sqlite3 -bail :memory: < sql/demo.sql
