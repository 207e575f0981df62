#!/usr/bin/env bash
# Builds everything a user needs into dist/ and the default text bundle into models/default:
#   dist/audiotext0.so        the SQLite extension (.load dist/audiotext0)
#   dist/libonnxruntime.so*   ONNX Runtime from PyPI, found next to the extension
#   dist/audiotext-train      the trainer (feature `trainer`), which also exports the default bundle
#   models/default/           the default bundle: all-MiniLM-L6-v2 exported as its text encoder
#                             (text.onnx, tokenizer.json), and its audio encoder (audio.onnx, int8)
#   models/default-fp32/      the same bundle with the float32 audio encoder, assembled from
#                             aiSFX's pretrained weights (PyPI) and the committed head
#                             (models/default/run); both checked against their committed manifests
# Idempotent: a second run rebuilds only what changed.
# AUDIOTEXT_CUDA=1 takes ONNX Runtime from onnxruntime-gpu instead.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-python-assets.sh

# The extension's crate (crates/sqlite-audiotext) depends on no training framework; the trainer
# (crates/audiotext-train) is a crate of its own beside it.
echo "building the extension (release, crate sqlite-audiotext)"
cargo build --release --locked -p sqlite-audiotext
install -m 755 target/release/libsqlite_audiotext.so dist/audiotext0.so
echo "building the trainer (release, crate audiotext-train)"
cargo build --release --locked -p audiotext-train --bin audiotext-train
install -m 755 target/release/audiotext-train dist/audiotext-train

bundle=models/default
# check_sha256 FILE MANIFEST HINT: FILE must be what MANIFEST's `files` records for its name.
check_sha256() {
  local want got
  want=$(python3 -c 'import json, os, sys; print(json.load(open(sys.argv[1]))["files"][os.path.basename(sys.argv[2])])' "$2" "$1")
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then
    echo "error: $1 has sha256 $got, the committed $2 records $want: $3" >&2
    exit 1
  fi
}
if [ ! -f "$bundle/text.onnx" ] || [ dist/audiotext-train -nt "$bundle/text.onnx" ]; then
  echo "exporting all-MiniLM-L6-v2 to $bundle"
  dist/audiotext-train export-text --from .cache/pretrained/all-MiniLM-L6-v2 --out "$bundle"
fi

# The default audio encoder, float32: the frozen aiSFX backbone from set-up's checkpoint plus the
# head trained on it (committed in $bundle/run). It lands in $twin (models/default-fp32, the
# same model in float32 for those who want it), and must be the audio.onnx whose sha256 the
# twin's committed manifest records, byte for byte.
twin=models/default-fp32
if [ -f "$bundle/run/config.json" ] && { [ ! -f "$twin/audio.onnx" ] ||
  [ "$bundle/run/head.safetensors" -nt "$twin/audio.onnx" ] || [ dist/audiotext-train -nt "$twin/audio.onnx" ]; }; then
  echo "assembling $twin/audio.onnx (aiSFX backbone + the committed head)"
  assembled=.cache/default-audio
  rm -rf "$assembled"
  dist/audiotext-train export --run "$bundle/run" --out "$assembled" --text-bundle "$bundle" --checkpoint last >/dev/null
  check_sha256 "$assembled/audio.onnx" "$twin/manifest.json" \
    "is .cache/pretrained/aisfx/checkpoint.pth the pinned one? (delete .cache/wheels/aisfx and re-run)"
  install -m 644 "$assembled/audio.onnx" "$twin/audio.onnx"
  rm -rf "$assembled"
fi
for file in text.onnx tokenizer.json; do
  [ "$twin/$file" -ef "$bundle/$file" ] || ln -f "$bundle/$file" "$twin/$file" 2>/dev/null || cp -f "$bundle/$file" "$twin/$file"
done

# The default itself: that graph quantized to int8 (docs/comparison/quantized.md) with the
# committed activation ranges ($bundle/quantization.json, calibrated on the training clips), so
# no audio is needed here; onnxruntime's quantizer comes from the test venv.
if [ ! -f "$bundle/audio.onnx" ] || [ "$twin/audio.onnx" -nt "$bundle/audio.onnx" ] || [ "$bundle/quantization.json" -nt "$bundle/audio.onnx" ]; then
  echo "quantizing $twin/audio.onnx to $bundle/audio.onnx (int8, scripts/quantize_audio.py)"
  scripts/python-env.sh
  quantized=.cache/default-audio-int8
  rm -rf "$quantized"
  .venv/bin/python scripts/quantize_audio.py apply --fp32 "$twin" --settings "$bundle/quantization.json" --out "$quantized" >/dev/null
  check_sha256 "$quantized/audio.onnx" "$bundle/manifest.json" \
    "is .venv's onnxruntime the one tests/python/requirements.txt pins? (delete .venv and re-run)"
  install -m 644 "$quantized/audio.onnx" "$bundle/audio.onnx"
  rm -rf "$quantized"
fi
