#!/usr/bin/env bash
# Builds everything a user needs into dist/ and the default text bundle into models/default:
#   dist/audiotext0.so        the SQLite extension (.load dist/audiotext0)
#   dist/libonnxruntime.so*   ONNX Runtime from PyPI, found next to the extension
#   dist/audiotext-train      the trainer
#   models/default/           all-MiniLM-L6-v2 exported as a bundle (text.onnx, tokenizer.json)
# Idempotent: a second run rebuilds only what changed.
# AUDIOTEXT_CUDA=1 takes ONNX Runtime from onnxruntime-gpu instead.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-python-assets.sh

echo "building (release)"
cargo build --release --locked --lib --bin audiotext-train
install -m 755 target/release/libaudiotext0.so dist/audiotext0.so
install -m 755 target/release/audiotext-train dist/audiotext-train

bundle=models/default
if [ ! -f "$bundle/text.onnx" ] || [ dist/audiotext-train -nt "$bundle/text.onnx" ]; then
  echo "exporting all-MiniLM-L6-v2 to $bundle"
  dist/audiotext-train export-text --from .cache/pretrained/all-MiniLM-L6-v2 --out "$bundle"
fi
