#!/usr/bin/env bash
# The main job: build everything, then in the sqlite3 shell (1) embed captions and search them
# with vec0, (2) index folders of real sounds and find them by description (exact scan, then
# audiotext_index), (3) find when each of several sounds happens in a long recording.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh

echo
echo "== sqlite3 < sql/demo.sql   (text embedding + vec0 KNN)"
sqlite3 -bail :memory: < sql/demo.sql

# Real recorded everyday sounds that the default model never trained on (it trains on ESC-50),
# from Debian packages installed by scripts/install-deps.sh (licences there), linked into one
# folder under names that say what they are, so each hit can be judged by its name. A source
# missing from this machine is skipped with a note.
everyday=.cache/demo-sounds/everyday
rm -rf "$everyday"
mkdir -p "$everyday"
scratch=/usr/share/scratch/Media/Sounds
tuxpaint=/usr/share/tuxpaint/sounds/magic
pomodoro=/usr/share/gnome-pomodoro/sounds
minetest=/usr/share/games/minetest/games/minetest_game/mods
# source [name in the demo folder; default: the source's own]
while read -r source name; do
  [ -n "$source" ] || continue
  if [ -f "$source" ]; then
    ln -s "$source" "$everyday/${name:-$(basename "$source")}"
  else
    echo "note: $source is missing (scripts/install-deps.sh installs it); the demo goes on without it"
  fi
done <<EOF
$scratch/Animal/Dog1.wav
$scratch/Animal/Dog2.wav
$scratch/Animal/Rooster.wav
$scratch/Animal/Meow.wav
$scratch/Animal/Kitten.wav
$scratch/Animal/Bird.wav
$scratch/Animal/Crickets.wav
$scratch/Animal/Duck.wav
$scratch/Animal/Horse.wav
$scratch/Animal/Owl.wav
$scratch/Effects/BellToll.wav
$scratch/Effects/CarPassing.wav
$scratch/Effects/MotorcyclePassing.wav
$scratch/Effects/DoorClose.mp3
$scratch/Effects/DoorCreak.wav
$scratch/Effects/Typing.mp3 KeyboardTyping.mp3
$scratch/Effects/WaterRunning.mp3
$scratch/Effects/Bubbles.wav
$scratch/Effects/SewingMachine.mp3
$scratch/Human/BabyCry.mp3
$scratch/Human/Cough-female.wav
$scratch/Human/Cough-male.wav
$scratch/Human/Sneeze-female.wav
$scratch/Human/Sneeze-male.wav
$scratch/Human/Laugh-female.wav
$scratch/Human/Laugh-male2.wav
$scratch/Human/Footsteps-1.wav
$scratch/Human/PartyNoise.wav
$scratch/Human/Slurp.mp3
$tuxpaint/rain.ogg rain-on-cement.ogg
$tuxpaint/lightning.ogg thunder-claps.ogg
$tuxpaint/tornado_release.ogg tornado-wind.ogg
$pomodoro/clock.ogg clock-ticking.ogg
$pomodoro/timer.ogg kitchen-timer-ticking.ogg
$pomodoro/birds.ogg woodland-birds.ogg
$minetest/fire/sounds/fire_fire.1.ogg fire-crackling-1.ogg
$minetest/fire/sounds/fire_large.ogg fire-crackling-large.ogg
$minetest/default/sounds/default_break_glass.1.ogg glass-breaking-1.ogg
$minetest/default/sounds/default_break_glass.2.ogg glass-breaking-2.ogg
$minetest/doors/sounds/doors_door_open.ogg door-open.ogg
$minetest/doors/sounds/doors_door_close.ogg door-close.ogg
$minetest/env_sounds/sounds/env_sounds_water.1.ogg stream-water.ogg
$minetest/default/sounds/default_water_footstep.1.ogg footsteps-in-water.ogg
$minetest/default/sounds/default_grass_footstep.1.ogg footsteps-on-grass.ogg
$minetest/tnt/sounds/tnt_explode.ogg explosion.ogg
$scratch/Human/Scream-female.wav
$scratch/Human/Footsteps-2.mp3
$scratch/Vocals/Singer1.wav
$scratch/Vocals/Join-us.mp3
$scratch/Instruments/GuitarStrum.wav
$scratch/Instruments/Trumpet1.wav
$scratch/Percussion/Gong.wav
$scratch/Percussion/CymbalCrash.wav
$minetest/default/sounds/default_gravel_footstep.1.ogg footsteps-on-gravel.ogg
$minetest/default/sounds/default_wood_footstep.1.ogg footsteps-on-wood.ogg
$minetest/default/sounds/default_dig_choppy.1.ogg chopping-wood.ogg
$minetest/default/sounds/default_dig_metal.ogg hitting-metal.ogg
EOF
# Two music loops (their folder's name has a space, which the list above cannot hold).
for loop in DrumSet1 Medieval1; do
  if [ -f "$scratch/Music Loops/$loop.mp3" ]; then ln -s "$scratch/Music Loops/$loop.mp3" "$everyday/$loop.mp3"; fi
done
folders=()
[ -n "$(ls -A "$everyday")" ] && folders+=("$(cd "$everyday" && pwd)")

# The ESC-50 dev clips when ../shared/data is there (the default model's training data), linked
# under their class names: dog-1-100032-A.flac for 1-100032-A-0.flac.
esc50=../shared/data/esc50-dev
if [ -f "$esc50/labels.csv" ]; then
  esc50_named=.cache/demo-sounds/esc50-dev
  rm -rf "$esc50_named"
  mkdir -p "$esc50_named"
  esc50_audio="$(cd "$esc50/audio" && pwd)"
  tail -n +2 "$esc50/labels.csv" | tr -d '\r' | while IFS=, read -r file class _; do
    stem="${file%.*}"
    ln -s "$esc50_audio/$file" "$esc50_named/$class-${stem%-*}.${file##*.}"
  done
  folders+=("$(cd "$esc50_named" && pwd)")
fi

for folder in "${folders[@]}"; do
  echo
  echo "== sqlite3 < sql/audio-demo.sql   (@sounds = $folder)"
  sqlite3 -bail -cmd ".parameter set @sounds \"'$folder'\"" :memory: < sql/audio-demo.sql
done
if [ -n "$(ls -A "$everyday")" ]; then
  echo
  echo "== sqlite3 < sql/open-world-demo.sql   (queries beyond ESC-50's classes; @sounds = $everyday)"
  sqlite3 -bail -cmd ".parameter set @sounds \"'$(cd "$everyday" && pwd)'\"" :memory: < sql/open-world-demo.sql
fi

# A long recording for sql/moments-demo.sql: eight of the everyday sounds one after another,
# 8 to 20 s of quiet brown noise between them (about two and a half minutes in all), and a cue
# sheet of where each sound is, to judge the answers by.
moments=.cache/demo-sounds/moments
rm -rf "$moments"
mkdir -p "$moments/pieces"
echo "sound,start,end" > "$moments/cues.csv"
pieces=()
at=0
gaps=(12 9 15 8 18 11 20 14 10)
index=0
# sound source [sox effects]
while read -r sound source effects; do
  if [ ! -f "$source" ]; then
    echo "note: $source is missing (scripts/install-deps.sh installs it); the moments demo goes on without it"
    continue
  fi
  gap=${gaps[$index]}
  index=$((index + 1))
  sox -n -r 16000 -c 1 -b 16 "$moments/pieces/$index-gap.wav" synth "$gap" brownnoise vol 0.004
  # shellcheck disable=SC2086  # the effects are separate words
  sox -V1 -G "$source" -r 16000 -c 1 -b 16 "$moments/pieces/$index-$sound.wav" $effects
  length=$(soxi -D "$moments/pieces/$index-$sound.wav")
  start=$(awk -v at="$at" -v gap="$gap" 'BEGIN { printf "%.6f", at + gap }')
  at=$(awk -v start="$start" -v seconds="$length" 'BEGIN { printf "%.6f", start + seconds }')
  printf '%s,%.3f,%.3f\n' "$sound" "$start" "$at" >> "$moments/cues.csv"
  pieces+=("$moments/pieces/$index-gap.wav" "$moments/pieces/$index-$sound.wav")
done <<EOF
dog $scratch/Animal/Dog2.wav pad 0 0.6 repeat 3
rooster $scratch/Animal/Rooster.wav
bell $scratch/Effects/BellToll.wav
typing $scratch/Effects/Typing.mp3
baby $scratch/Human/BabyCry.mp3
thunder $tuxpaint/lightning.ogg
clock $pomodoro/clock.ogg trim 0 8
fire $minetest/fire/sounds/fire_large.ogg
EOF
if [ "${#pieces[@]}" -gt 0 ]; then
  sox -n -r 16000 -c 1 -b 16 "$moments/pieces/end-gap.wav" synth "${gaps[$index]}" brownnoise vol 0.004
  sox -V1 "${pieces[@]}" "$moments/pieces/end-gap.wav" "$moments/long.wav"
  echo
  echo "== sqlite3 < sql/moments-demo.sql   (@recording = $moments/long.wav)"
  sqlite3 -bail -cmd ".parameter set @recording \"'$(cd "$moments" && pwd)/long.wav'\"" :memory: < sql/moments-demo.sql
fi
