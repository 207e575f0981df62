#!/usr/bin/env bash
# Builds the Python package: dist/wheels/sqlite_audiotext-<version>-py3-none-linux_x86_64.whl,
# holding dist/audiotext0.so and the default model (models/default), no ONNX Runtime (the
# `onnxruntime` package, a dependency, provides it). Builds them first if needed
# (scripts/build.sh). The build backend (setuptools, pinned in python/pyproject.toml) comes
# from PyPI through pip.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -f dist/audiotext0.so ] && [ -f models/default/audio.onnx ] && [ -f models/default/text.onnx ] || scripts/build.sh
scripts/python-env.sh

staging=target/wheel
rm -rf "$staging"
mkdir -p "$staging" dist/wheels
cp -r python/. "$staging/"
install -m 755 dist/audiotext0.so "$staging/sqlite_audiotext/audiotext0.so"
mkdir -p "$staging/sqlite_audiotext/models/default"
for file in manifest.json text.onnx audio.onnx tokenizer.json; do
  install -m 644 "models/default/$file" "$staging/sqlite_audiotext/models/default/$file"
done
rm -f dist/wheels/sqlite_audiotext-*.whl
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist/wheels "$staging"
ls -l dist/wheels/sqlite_audiotext-*.whl
