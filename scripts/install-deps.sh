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
# The Datasette plugin's browser test (tests/python/plugin/test_datasette.py): Debian's chromium,
# headless, and its matching chromedriver (no browser download).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# Real recorded everyday sounds with descriptive file names for the demo (scripts/demo.sh),
# none of them from ESC-50, on which the default model trains. Without recommends (scratch's
# squeak-vm would pull in zenity and WebKit); about 42 MB to download in all:
#   scratch                    25.7 MB (+1.9 MB: squeak-vm, xterm): Scratch 1.4's sound library,
#                              animals, household effects, human sounds (CC BY-SA 3.0, MIT)
#   tuxpaint-plugins-default    1.2 MB: rain (CC BY 3.0), thunder claps (CC BY-SA 4.0) and
#                              tornado wind (public domain) of Tux Paint's magic tools
#   gnome-shell-pomodoro-data   6.1 MB: a ticking clock, a ticking timer, woodland birds (GPL-3+)
#   minetest-data               3.6 MB (+3.4 MB of fonts): fire, breaking glass, doors, a
#                              stream (CC BY-SA 3.0; doors CC BY 3.0; tnt CC0)
sounds=()
[ -d /usr/share/scratch/Media/Sounds ] || sounds+=(scratch)
[ -d /usr/share/tuxpaint/sounds/magic ] || sounds+=(tuxpaint-plugins-default)
[ -d /usr/share/gnome-pomodoro/sounds ] || sounds+=(gnome-shell-pomodoro-data)
[ -d /usr/share/games/minetest/games/minetest_game/mods ] || sounds+=(minetest-data)
if [ $((${#need[@]} + ${#sounds[@]})) -gt 0 ]; then
  echo "installing: ${need[*]} ${sounds[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
  [ ${#sounds[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${sounds[@]}"
fi
