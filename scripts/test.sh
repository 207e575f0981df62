#!/usr/bin/env bash
# Runs every test: unit tests, the extension in three hosts (Rust app with its own SQLite, the
# sqlite3 shell, Debian's Python), parity against the independent reference, failure paths.
# Works on a fresh machine: builds and installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build.sh --trainer
scripts/python-env.sh

echo "== unit tests (cargo test, every crate of the workspace)"
cargo test --release --locked --workspace

echo "== the extension's crate depends on no training framework"
lean=$(cargo tree --locked -p sqlite-audiotext --edges normal --prefix none --format '{p}' | cut -d' ' -f1 | sort -u)
for crate in burn indicatif plotters csv zip audiotext-train; do
  if grep -qx "$crate" <<<"$lean"; then
    echo "error: $crate is among the dependencies of sqlite-audiotext" >&2
    exit 1
  fi
done
echo "ok: none of burn, indicatif, plotters, csv, zip, audiotext-train under sqlite-audiotext"

echo "== each crate's modules call downward only (no import cycles)"
python3 scripts/check_module_graph.py

echo "== fault-injection build (a panic inside a function must become an SQL error)"
cargo build --release --locked -p sqlite-audiotext --features fault-injection
mkdir -p target/fault-injection
cp target/release/libsqlite_audiotext.so target/fault-injection/audiotext0.so

echo "== host: Rust application with rusqlite's bundled SQLite"
# Its own target folder: there the extension's crate is built without `loadable` (linked into
# the app, tests/register.rs), and cargo names that library's files as in the workspace's
# builds, so one folder for both would let one build's files stand for the other's.
cargo test --release --locked --target-dir target/host --manifest-path tests/host-rusqlite/Cargo.toml

echo "== host: sqlite3 shell"
tests/shell/test.sh

echo "== the Python package (dist/wheels/; test_package, test_datasette and test_ray install it in fresh venvs)"
scripts/build-wheel.sh

echo "== host: Debian's Python sqlite3 (pytest)"
.venv/bin/python -m pytest tests/python -v -p no:cacheprovider
