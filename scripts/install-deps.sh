#!/usr/bin/env bash
# System packages the project needs, installed only when missing (idempotent).
set -euo pipefail
need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v unzip >/dev/null || need+=(unzip)
command -v cc >/dev/null || need+=(gcc)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# Tests make audio files in every supported format: sox (wav, flac, ogg, mp3), ffmpeg (aac/m4a).
command -v sox >/dev/null || need+=(sox libsox-fmt-all)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
# Real sounds for the demo when ../shared/data is absent.
[ -d /usr/share/sounds/freedesktop/stereo ] || need+=(sound-theme-freedesktop)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
