#!/usr/bin/env bash
# Builds everything a user needs into dist/ and the default text bundle into models/default:
#   dist/audiotext0.so        the SQLite extension (.load dist/audiotext0)
#   dist/libonnxruntime.so*   ONNX Runtime from PyPI, found next to the extension
#   dist/audiotext-train      the trainer (feature `trainer`), which also exports the default bundle
#   models/default/           the default bundle: all-MiniLM-L6-v2 exported as its text encoder
#                             (text.onnx, tokenizer.json), and its audio encoder (audio.onnx)
#                             assembled from aiSFX's pretrained weights (PyPI) and the committed
#                             head (models/default/run), checked against the committed manifest
# Idempotent: a second run rebuilds only what changed.
# AUDIOTEXT_CUDA=1 takes ONNX Runtime from onnxruntime-gpu instead.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-python-assets.sh

# The extension alone first: its build compiles no training framework, and dist/ gets that
# library. The trainer (feature `trainer`) comes second; it rebuilds the library with src/train
# for itself, and that copy stays in target/.
echo "building the extension (release)"
cargo build --release --locked --lib
install -m 755 target/release/libaudiotext0.so dist/audiotext0.so
echo "building the trainer (release, feature trainer)"
cargo build --release --locked --features trainer --bin audiotext-train
install -m 755 target/release/audiotext-train dist/audiotext-train

bundle=models/default
if [ ! -f "$bundle/text.onnx" ] || [ dist/audiotext-train -nt "$bundle/text.onnx" ]; then
  echo "exporting all-MiniLM-L6-v2 to $bundle"
  dist/audiotext-train export-text --from .cache/pretrained/all-MiniLM-L6-v2 --out "$bundle"
fi

# The default audio encoder: the frozen aiSFX backbone from set-up's checkpoint plus the head
# trained on it (committed in $bundle/run); the result must be the audio.onnx whose sha256 the
# committed manifest records, byte for byte.
if [ -f "$bundle/run/config.json" ] && { [ ! -f "$bundle/audio.onnx" ] ||
  [ "$bundle/run/head.safetensors" -nt "$bundle/audio.onnx" ] || [ dist/audiotext-train -nt "$bundle/audio.onnx" ]; }; then
  echo "assembling $bundle/audio.onnx (aiSFX backbone + the committed head)"
  assembled=.cache/default-audio
  rm -rf "$assembled"
  dist/audiotext-train export --run "$bundle/run" --out "$assembled" --text-bundle "$bundle" --checkpoint last >/dev/null
  want=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["files"]["audio.onnx"])' "$bundle/manifest.json")
  got=$(sha256sum "$assembled/audio.onnx" | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then
    echo "error: the assembled audio.onnx has sha256 $got, the committed manifest records $want: is .cache/pretrained/aisfx/checkpoint.pth the pinned one? (delete .cache/wheels/aisfx and re-run)" >&2
    exit 1
  fi
  install -m 644 "$assembled/audio.onnx" "$bundle/audio.onnx"
  rm -rf "$assembled"
fi
